"""A temperature for the head that makes suggestions, from the labels already given.

The embedding-first loop suggests classes with a light head refitted on every label
(active.heads), so no label is held out from it. Cross-validation supplies held-out
predictions all the same: the out-of-fold probabilities of confident learning
(active.label_errors.out_of_fold_probs, K heads each fitted on K - 1 folds) are
predictions on labels each head never saw, and the temperature fitted on them
(active.calibration) is applied to the head fitted on every label. The head fitted on
all labels differs a little from those fitted on (K - 1)/K of them, so the T carries over
approximately (as in cross-validated calibration, e.g. scikit-learn's CalibratedClassifierCV).

Caveat: the labelled images were chosen by the query strategy, not at random, so the
fit reflects the images the strategy picks (hard ones), not the pool. Audit labels
(a random sample) or a validation split are the unbiased choice once they exist
(rounds.calibration_split).

ECE after scaling is cross-fitted: each fold's probabilities are scaled by a T fitted
on the other folds, so the reported improvement is not measured on the data that chose T.
"""

from __future__ import annotations

import numpy as np

from atl_desktop.active.calibration import (
    MIN_FIT_LABELS,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    temperature_fit,
)
from atl_desktop.active.label_errors import out_of_fold_probs, stratified_folds

FOLDS = 5


def head_temperature(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, *, head: str = "logreg",
                     folds: int = FOLDS, seed: int = 0) -> dict | None:
    """TemperatureFit as JSON, with ece_before / ece_after (cross-fitted) on the out-of-fold
    predictions; None with fewer than MIN_FIT_LABELS labels or one class only."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) < MIN_FIT_LABELS or len(np.unique(labels)) < 2:
        return None
    probs = out_of_fold_probs(embeddings, labels, num_classes, folds=folds, head=head, seed=seed)
    fold = stratified_folds(labels, folds, seed)
    # A class the other folds never saw has probability 0 there: no temperature can score it.
    usable = probs[np.arange(len(labels)), labels] > 0
    probs, labels, fold = probs[usable], labels[usable], fold[usable]
    if len(labels) < MIN_FIT_LABELS:
        return None
    fit = temperature_fit(probs, labels, fitted_on=f"out-of-fold predictions of the {head} head on "
                                                   f"{len(labels)} labels ({folds}-fold)")
    scaled = np.empty_like(probs)
    for k in np.unique(fold):
        inside = fold == k
        t = fit_temperature(probs[~inside], labels[~inside], from_probs=True) if (~inside).any() else 1.0
        scaled[inside] = apply_temperature(probs[inside], t)
    return {**fit.to_json(), "ece_before": expected_calibration_error(probs, labels),
            "ece_after": expected_calibration_error(scaled, labels)}
