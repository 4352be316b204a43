"""Possible label errors among the labels already given: confident learning on cached embeddings.

Confident learning (Northcutt, Jiang & Chuang, JAIR 2021) needs out-of-sample
predicted probabilities of every labelled image. The embedding-first loop makes
them cheap: a logistic head is fitted on K - 1 folds of the labelled embeddings
and predicts the held-out fold, K times (seconds, not K fine-tunes).

Then, per class j, the threshold t_j is the mean predicted probability of j over
the images labelled j (the classifier's own confidence on that class). An image
labelled i is counted in the confident joint at (i, j) for the class j of highest
probability among those with p_j >= t_j. Images off the diagonal (j != i) are the
suspects; as in the paper's "prune by noise rate" ranking, the suspects are ordered
by their margin p_j - p_i, most suspicious first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atl_desktop.active.heads import fit_scaler, make_head


@dataclass(frozen=True)
class Suspect:
    row: int  # index into the labelled set
    given: int  # class position given
    likely: int  # class position the confident joint puts it in
    margin: float  # p(likely) - p(given), out of fold


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """The fold (0..folds-1) of each row, each class spread over the folds in turn."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fold[rows] = np.arange(len(rows)) % folds
    return fold


def out_of_fold_probs(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, *, folds: int = 5,
                      head: str = "logreg", seed: int = 0, **options) -> np.ndarray:
    """Probabilities (N, C) of each labelled row from a head that never saw it (stratified folds)."""
    labels = np.asarray(labels, dtype=np.int64)
    fold = stratified_folds(labels, folds, seed)
    z = fit_scaler(embeddings)(embeddings)
    probs = np.zeros((len(labels), num_classes))
    for k in range(folds):
        test = fold == k
        if not test.any() or test.all():
            continue
        fitted = make_head(head, num_classes, **options).fit(z[~test], labels[~test])
        probs[test] = fitted.predict_proba(z[test])
    return probs


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j: the mean p_j over the rows labelled j (inf for a class nobody labelled)."""
    c = probs.shape[1]
    out = np.full(c, np.inf)
    for j in range(c):
        rows = labels == j
        if rows.any():
            out[j] = probs[rows, j].mean()
    return out


def confident_classes(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each row, the class of highest probability among those at or above their threshold;
    -1 where no class reaches its threshold (the row is left out of the confident joint)."""
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -np.inf)
    best = masked.argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


def confident_joint(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """C[i, j]: rows labelled i whose confident class is j."""
    labels = np.asarray(labels, dtype=np.int64)
    likely = confident_classes(probs, per_class_thresholds(probs, labels))
    c = probs.shape[1]
    joint = np.zeros((c, c), dtype=np.int64)
    keep = likely >= 0
    np.add.at(joint, (labels[keep], likely[keep]), 1)
    return joint


def find_label_errors(probs: np.ndarray, labels: np.ndarray) -> list[Suspect]:
    """Rows whose confident class differs from their label, most suspicious first."""
    labels = np.asarray(labels, dtype=np.int64)
    likely = confident_classes(probs, per_class_thresholds(probs, labels))
    rows = np.flatnonzero((likely >= 0) & (likely != labels))
    margins = probs[rows, likely[rows]] - probs[rows, labels[rows]]
    order = np.lexsort((rows, -margins))
    return [Suspect(int(rows[k]), int(labels[rows[k]]), int(likely[rows[k]]), float(margins[k])) for k in order]
