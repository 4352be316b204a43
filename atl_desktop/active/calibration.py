"""How far to trust the model, and when more labels have stopped paying.

- Calibration (Naeini et al. 2015; Guo et al. 2017): predictions are put in M
  equal-width bins by confidence (the top probability), bin m holding
  confidences in ((m-1)/M, m/M]. The reliability diagram shows each bin's
  accuracy against its mean confidence; the expected calibration error is their
  gap weighted by the share of samples in the bin:
  ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|.
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
