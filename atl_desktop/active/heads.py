"""Light classifiers on cached embeddings, refitted after every label.

The embedding-first loop (issue 20) keeps the encoder frozen and trains only a
head on its embeddings: a few hundred labelled rows against a few hundred
dimensions, so a fit takes milliseconds and the window can refit after each
key press.

- `LogisticHead`: multinomial logistic regression with an L2 penalty (the
  "linear probe" of the self-supervised literature, e.g. Chen et al. 2020),
  fitted to convergence by L-BFGS on the standardised embeddings. The loss is
  convex, so the fit does not depend on the starting point or on the order of
  the labels; after one more label the previous fit is a warm start, a few
  iterations from the new optimum.
- `PrototypeHead`: nearest class mean (Snell et al. 2017's prototypes, on
  L2-normalised embeddings), the usual choice with one or two labels a class.

Both take labels as class positions 0..C-1 and return (N, C) probabilities; a
class without labels gets probability 0, so suggestions never name it.
Standardisation statistics come from the whole pool (`fit_scaler`), which
uses no label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atl_desktop.active.coldstart import fit_prototypes, prototype_probs

HEADS = ("logreg", "prototype")


@dataclass(frozen=True)
class Scaler:
    """Per-dimension centring and scaling of embeddings (statistics of the unlabelled pool)."""

    mean: np.ndarray
    scale: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale


def fit_scaler(embeddings: np.ndarray) -> Scaler:
    x = np.asarray(embeddings, dtype=np.float64)
    std = x.std(axis=0)
    return Scaler(x.mean(axis=0), np.where(std > 1e-8, std, 1.0))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LogisticHead:
    """Multinomial logistic regression: minimise mean cross-entropy + (l2 / 2) * ||W||^2.

    The bias is not penalised. Fitted in float64 by L-BFGS with a strong-Wolfe line
    search until the gradient's largest entry is below `tolerance`. With
    `balanced`, each labelled row is weighted by n / (C_seen * n_class), so every
    class seen weighs the same in the loss (imbalanced labelled sets).
    """

    def __init__(self, num_classes: int, *, l2: float = 1e-2, balanced: bool = True,
                 max_iter: int = 200, tolerance: float = 1e-6):
        if num_classes < 1:
            raise ValueError("a head needs at least one class")
        self.num_classes = num_classes
        self.l2 = l2
        self.balanced = balanced
        self.max_iter = max_iter
        self.tolerance = tolerance
        self.weight: np.ndarray | None = None  # (D, C)
        self.bias: np.ndarray | None = None  # (C,)
        self.seen = np.zeros(num_classes, dtype=bool)
        self.evaluations = 0  # loss evaluations of the last fit

    def fit(self, x: np.ndarray, labels: np.ndarray, *, start: LogisticHead | None = None) -> LogisticHead:
        """Fit on (x, labels); `start`, a head fitted before on the same features and classes,
        is where L-BFGS starts (the same optimum, reached in fewer iterations)."""
        import torch

        x = np.asarray(x, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        if len(x) != len(labels) or not len(x):
            raise ValueError("fit needs as many labels as rows, and at least one")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be class positions 0..{self.num_classes - 1}")
        counts = np.bincount(labels, minlength=self.num_classes)
        self.seen = counts > 0
        weights = np.ones(len(labels))
        if self.balanced:
            weights = len(labels) / (self.seen.sum() * counts[labels])
        xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
        wt = torch.from_numpy(weights / weights.sum())
        w0, b0 = self._start(start, x.shape[1])
        w = torch.from_numpy(w0).requires_grad_(True)
        b = torch.from_numpy(b0).requires_grad_(True)
        mask = torch.from_numpy(np.where(self.seen, 0.0, -np.inf))  # unseen classes never win
        optimiser = torch.optim.LBFGS([w, b], max_iter=self.max_iter, tolerance_grad=self.tolerance,
                                      tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

        self.evaluations = 0

        def closure():
            self.evaluations += 1
            optimiser.zero_grad()
            logits = xt @ w + b + mask
            nll = -(torch.log_softmax(logits, dim=1)[torch.arange(len(yt)), yt] * wt).sum()
            loss = nll + 0.5 * self.l2 * (w * w).sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        self.weight, self.bias = w.detach().numpy(), b.detach().numpy()
        return self

    def _start(self, start: LogisticHead | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
        fits = (start is not None and start.weight is not None and start.weight.shape == (dim, self.num_classes)
                and np.isfinite(start.weight).all() and np.isfinite(start.bias).all())
        if not fits:
            return np.zeros((dim, self.num_classes)), np.zeros(self.num_classes)
        # A class seen for the first time starts at zero: its old row was never trained.
        return start.weight * start.seen, np.where(start.seen, start.bias, 0.0)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.weight is None:
            raise ValueError("the head has not been fitted")
        logits = np.asarray(x, dtype=np.float64) @ self.weight + self.bias
        logits[:, ~self.seen] = -np.inf
        return _softmax(logits)


class PrototypeHead:
    """Nearest class mean on L2-normalised embeddings; softmax of cosine / temperature."""

    def __init__(self, num_classes: int, *, temperature: float = 0.1):
        self.num_classes = num_classes
        self.temperature = temperature
        self.prototypes: np.ndarray | None = None

    def fit(self, x: np.ndarray, labels: np.ndarray) -> PrototypeHead:
        self.prototypes = fit_prototypes(x, labels, self.num_classes)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.prototypes is None:
            raise ValueError("the head has not been fitted")
        return prototype_probs(x, self.prototypes, temperature=self.temperature)


def make_head(name: str, num_classes: int, **options):
    if name == "logreg":
        return LogisticHead(num_classes, **options)
    if name == "prototype":
        return PrototypeHead(num_classes, **options)
    raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")


def head_probs(name: str, embeddings: np.ndarray, labelled_rows: np.ndarray, labels: np.ndarray,
               num_classes: int, **options) -> np.ndarray:
    """Probabilities (N, C) of every row of `embeddings`, from a head fitted on the labelled rows.

    Embeddings are standardised with the statistics of all rows first (no label used).
    """
    scaler = fit_scaler(embeddings)
    x = scaler(embeddings)
    head = make_head(name, num_classes, **options).fit(x[labelled_rows], labels)
    return head.predict_proba(x)
