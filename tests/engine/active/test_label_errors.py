"""Confident learning, checked on a probability table worked out by hand."""

import numpy as np
import pytest

from atl_desktop.active.label_errors import (
    confident_classes,
    confident_joint,
    find_label_errors,
    out_of_fold_probs,
    per_class_thresholds,
)

# Out-of-fold probabilities of six labelled images, two classes.
PROBS = np.array([[.9, .1], [.8, .2], [.3, .7], [.9, .1], [.2, .8], [.86, .14]])
LABELS = np.array([0, 0, 1, 1, 1, 1])


def test_thresholds_joint_and_suspects_by_hand():
    # t0 = (.9 + .8) / 2 = .85; t1 = (.7 + .1 + .8 + .14) / 4 = .435
    assert per_class_thresholds(PROBS, LABELS) == pytest.approx([0.85, 0.435])
    # row 1: .8 < .85 and .2 < .435, so it is left out; rows 3 and 5 reach class 0's threshold
    assert confident_classes(PROBS, np.array([0.85, 0.435])).tolist() == [0, -1, 1, 0, 1, 0]
    assert confident_joint(PROBS, LABELS).tolist() == [[1, 0], [2, 2]]
    suspects = find_label_errors(PROBS, LABELS)
    assert [(s.row, s.given, s.likely) for s in suspects] == [(3, 1, 0), (5, 1, 0)]
    assert [s.margin for s in suspects] == pytest.approx([0.8, 0.72])


def test_out_of_fold_probabilities_find_flipped_labels():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (40, 5)) + 4 * np.eye(5)[0],
                        rng.normal(0, 1, (40, 5)) - 4 * np.eye(5)[0]])
    y = np.repeat([0, 1], 40)
    flipped = np.array([3, 17, 45, 70])
    noisy = y.copy()
    noisy[flipped] = 1 - noisy[flipped]
    probs = out_of_fold_probs(x, noisy, 2, folds=5)
    assert probs.shape == (80, 2) and probs.sum(axis=1) == pytest.approx(np.ones(80))
    found = {s.row for s in find_label_errors(probs, noisy)}
    # Row 45 lies nearer the boundary (x0 = -2.6): its out-of-fold p1 is .70, under t1 = .87,
    # so confident learning, which counts only confident predictions, leaves it out.
    assert found == {3, 17, 70}
    assert probs[45, 1] < per_class_thresholds(probs, noisy)[1]
