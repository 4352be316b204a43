"""How far to trust the model, and when more labels have stopped paying.

- Calibration (Naeini et al. 2015; Guo et al. 2017): predictions are put in M
  equal-width bins by confidence (the top probability), bin m holding
  confidences in ((m-1)/M, m/M]. The reliability diagram shows each bin's
  accuracy against its mean confidence; the expected calibration error is their
  gap weighted by the share of samples in the bin:
  ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|.
- Temperature scaling (Guo et al., ICML 2017): one scalar T > 0 divides the logits
  before the softmax, p = softmax(z / T), fitted to minimise the negative
  log-likelihood of held-out labels. It leaves every argmax (so accuracy) as it
  is and only moves confidence: T > 1 softens an over-confident model. Given
  probabilities instead of logits, log p serves as the logits (softmax(log p) = p).
- Stabilising predictions (Bloodgood & Vijay-Shanker 2009): the predictions of
  successive models on a fixed unlabelled stop set are compared with Cohen's
  kappa; once the mean kappa over the last few rounds (3 in the paper) reaches
  a threshold (0.99), the model has stopped changing and labelling can stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_BINS = 15
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 1e2  # the search interval for T
MIN_FIT_LABELS = 20  # fewer held-out labels leave T to chance; below it no temperature is fitted
STOP_WINDOW = 3
STOP_KAPPA = 0.99


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float | None  # mean top probability in the bin; None when empty
    accuracy: float | None

    def to_json(self) -> dict:
        return asdict(self)


def _confidence_and_correct(probs: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"need (N, C) probabilities and N labels; got {probs.shape} and {labels.shape}")
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence: m - 1 for a value in ((m-1)/M, m/M]; 0 holds 0 too."""
    return np.clip(np.ceil(np.asarray(confidence) * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_bins(probs: np.ndarray, labels: Sequence[int], n_bins: int = DEFAULT_BINS) -> list[ReliabilityBin]:
    """The reliability diagram of a classifier's (N, C) probabilities against true labels."""
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    confidence, correct = _confidence_and_correct(probs, labels)
    which = bin_index(confidence, n_bins)
    bins = []
    for m in range(n_bins):
        inside = which == m
        count = int(inside.sum())
        bins.append(ReliabilityBin(
            m / n_bins, (m + 1) / n_bins, count,
            float(confidence[inside].mean()) if count else None,
            float(correct[inside].mean()) if count else None,
        ))
    return bins


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], n_bins: int = DEFAULT_BINS) -> float:
    """ECE = sum over bins of |B|/n * |accuracy(B) - mean confidence(B)|; nan with no samples."""
    bins = reliability_bins(probs, labels, n_bins)
    n = sum(b.count for b in bins)
    if n == 0:
        return float("nan")
    return float(sum(b.count / n * abs(b.accuracy - b.confidence) for b in bins if b.count))


def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float:
    """Cohen's kappa between two labelings of the same items: (p_o - p_e) / (1 - p_e).

    p_o is the observed agreement, p_e the agreement expected by chance from each
    labeling's class frequencies. When chance agreement is certain (both give
    one and the same class everywhere) the labelings agree fully: kappa 1.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("two labelings of the same items are needed")
    if not len(a):
        return float("nan")
    n_classes = int(max(a.max(), b.max())) + 1
    observed = float(np.mean(a == b))
    chance = float(np.dot(np.bincount(a, minlength=n_classes), np.bincount(b, minlength=n_classes))) / len(a) ** 2
    if chance >= 1.0:
        return 1.0
    return (observed - chance) / (1.0 - chance)


def stabilised(kappas: Sequence[float | None], window: int = STOP_WINDOW, threshold: float = STOP_KAPPA) -> bool:
    """Stop when the mean of the last `window` kappas (successive rounds) reaches `threshold`."""
    recent = list(kappas)[-window:]
    if len(recent) < window or any(k is None or not np.isfinite(k) for k in recent):
        return False
    return float(np.mean(recent)) >= threshold


def calibration_summary(probs: np.ndarray, labels: Sequence[int], n_bins: int = DEFAULT_BINS) -> dict:
    """ECE and the reliability bins, as JSON for a round's record."""
    bins = reliability_bins(probs, labels, n_bins)
    n = sum(b.count for b in bins)
    ece = float(sum(b.count / n * abs(b.accuracy - b.confidence) for b in bins if b.count)) if n else float("nan")
    return {"ece": ece, "bins": [b.to_json() for b in bins]}


# ---- temperature scaling -------------------------------------------------------------------


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    n: int  # held-out labels it was fitted on
    nll_before: float  # mean negative log-likelihood at T = 1
    nll_after: float
    fitted_on: str = ""  # where the held-out labels came from, in words

    def to_json(self) -> dict:
        return asdict(self)


def probs_to_logits(probs: np.ndarray) -> np.ndarray:
    """log p: logits whose softmax is p (a class at probability 0 stays at 0)."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(probs, dtype=np.float64))


def softmax_t(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(z / T) row by row; -inf logits give probability 0."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities rescaled by a temperature: softmax(log p / T); T = 1 returns them as they are."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0 or not len(probs):
        return probs
    return softmax_t(probs_to_logits(probs), temperature)


def _nll_and_derivatives(logits: np.ndarray, labels: np.ndarray, beta: float) -> tuple[float, float, float]:
    """f(beta) = mean_i [logsumexp(beta z_i) - beta z_i,y_i] and its first two derivatives:
    f' = mean(E_p[z] - z_y), f'' = mean(Var_p[z]) >= 0, with p = softmax(beta z). Classes at
    -inf (probability 0) take no part."""
    finite = np.isfinite(logits)
    z = np.where(finite, logits, 0.0)
    scaled = np.where(finite, beta * z, -np.inf)
    top = scaled.max(axis=1, keepdims=True)
    e = np.exp(scaled - top)
    total = e.sum(axis=1, keepdims=True)
    p = e / total
    rows = np.arange(len(labels))
    nll = np.log(total[:, 0]) + top[:, 0] - beta * z[rows, labels]
    mean_z = (p * z).sum(axis=1)
    var_z = (p * z * z).sum(axis=1) - mean_z**2
    return float(nll.mean()), float((mean_z - z[rows, labels]).mean()), float(np.maximum(var_z, 0).mean())


def fit_temperature(logits: np.ndarray, labels, *, from_probs: bool = False, tolerance: float = 1e-12,
                    max_iter: int = 100) -> float:
    """The T minimising the mean NLL of softmax(logits / T) against `labels`.

    Solved for beta = 1 / T, where the NLL is convex (a log-sum-exp of functions linear in
    beta, minus a linear term): its derivative rises monotonically, so the root of f'(beta)
    is bracketed in [1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE] and found by Newton steps,
    falling back to bisection whenever a step would leave the bracket (a safeguarded
    Newton, quadratic near the optimum). When f' keeps one sign over the bracket (every
    prediction right, say: the NLL falls as T -> 0), the end of the bracket is returned.
    `from_probs`: `logits` are probabilities, whose logarithms are used.
    """
    z = probs_to_logits(logits) if from_probs else np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or not len(y):
        raise ValueError(f"need (N, C) logits and N >= 1 labels; got {z.shape} and {y.shape}")
    if not np.isfinite(z[np.arange(len(y)), y]).all():
        raise ValueError("a true class has probability 0: no temperature gives it any likelihood")
    lo, hi = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE
    if _nll_and_derivatives(z, y, lo)[1] >= 0:
        return MAX_TEMPERATURE
    if _nll_and_derivatives(z, y, hi)[1] <= 0:
        return MIN_TEMPERATURE
    beta = 1.0
    for _ in range(max_iter):
        _, slope, curvature = _nll_and_derivatives(z, y, beta)
        if slope == 0:
            break
        if slope > 0:
            hi = beta
        else:
            lo = beta
        step = beta - slope / curvature if curvature > 0 else np.nan
        previous, beta = beta, (step if lo < step < hi else 0.5 * (lo + hi))
        if abs(beta - previous) <= tolerance * previous:
            break
    return float(1.0 / beta)


def mean_nll(probs: np.ndarray, labels) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None)).mean())


def temperature_fit(probs: np.ndarray, labels, fitted_on: str = "") -> TemperatureFit:
    """`fit_temperature` on held-out probabilities, with the NLL before and after."""
    t = fit_temperature(probs, labels, from_probs=True)
    return TemperatureFit(t, int(len(labels)), mean_nll(probs, labels),
                          mean_nll(apply_temperature(probs, t), labels), fitted_on)


def scaled_calibration(probs: np.ndarray, labels: Sequence[int], fit: TemperatureFit,
                       n_bins: int = DEFAULT_BINS) -> dict:
    """ECE and reliability bins after temperature scaling, for a record beside the unscaled ones."""
    return {**calibration_summary(apply_temperature(probs, fit.temperature), labels, n_bins),
            "temperature": fit.temperature, "fitted_on": fit.fitted_on, "n_fit": fit.n}


def ece_change_words(before: float, after: float, temperature: float) -> str:
    """'ECE 0.12 → 0.04 (T = 1.8)': the one line the window, `atl evaluate` and the report show."""
    return f"ECE {before:.2f} → {after:.2f} (T = {temperature:.2g})"
