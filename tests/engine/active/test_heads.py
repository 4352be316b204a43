"""Heads on embeddings, checked against values worked out by hand."""

import math

import numpy as np
import pytest

from atl_desktop.active.heads import LogisticHead, PrototypeHead, fit_scaler, head_probs


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _symmetric_solution(l2: float) -> float:
    """Two points x = -1 (class 0) and x = +1 (class 1): by symmetry the bias is 0 and the
    weights are (-a, a); the loss is -log sigmoid(2a) + l2 * a^2, stationary where
    l2 * a = 1 - sigmoid(2a). Solved by bisection, independently of the head's optimiser."""
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if l2 * mid - (1 - _sigmoid(2 * mid)) < 0:
            lo = mid
        else:
            hi = mid
    return lo


def test_logistic_head_reaches_the_hand_worked_optimum():
    head = LogisticHead(2, l2=0.1, balanced=False).fit(np.array([[-1.0], [1.0]]), np.array([0, 1]))
    a = _symmetric_solution(0.1)
    assert a == pytest.approx(1.065, abs=0.01)  # worked by hand: 0.1 a = 1 - sigmoid(2a)
    assert head.weight[0, 1] - head.weight[0, 0] == pytest.approx(2 * a, rel=1e-5)
    assert head.bias[1] - head.bias[0] == pytest.approx(0.0, abs=1e-6)
    p = head.predict_proba(np.array([[1.0]]))
    assert p[0, 1] == pytest.approx(_sigmoid(2 * a), rel=1e-5)


def test_balanced_weights_make_three_copies_count_as_one():
    x = np.array([[-1.0], [-1.0], [-1.0], [1.0]])
    y = np.array([0, 0, 0, 1])
    balanced = LogisticHead(2, l2=0.1, balanced=True).fit(x, y)
    plain = LogisticHead(2, l2=0.1, balanced=False).fit(x, y)
    a = _symmetric_solution(0.1)
    assert balanced.weight[0, 1] - balanced.weight[0, 0] == pytest.approx(2 * a, rel=1e-5)
    # Unweighted, the majority class pulls the bias its way.
    assert plain.bias[0] - plain.bias[1] > 0.1


def test_a_class_without_labels_is_never_suggested():
    head = LogisticHead(3, l2=0.1).fit(np.array([[-1.0], [1.0]]), np.array([0, 2]))
    p = head.predict_proba(np.array([[0.0], [5.0]]))
    assert np.all(p[:, 1] == 0.0)
    assert p.sum(axis=1) == pytest.approx([1.0, 1.0])


def test_logistic_head_refuses_labels_out_of_range():
    with pytest.raises(ValueError):
        LogisticHead(2).fit(np.zeros((2, 1)), np.array([0, 2]))


def test_prototype_head_picks_the_nearest_class_mean():
    x = np.array([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]])
    head = PrototypeHead(2, temperature=0.1).fit(x, np.array([0, 0, 1]))
    p = head.predict_proba(np.array([[1.0, 0.1], [0.1, 1.0]]))
    assert p.argmax(axis=1).tolist() == [0, 1]
    # cos to (1, 0.1)/|.| is 1 for class 0 and 0.0995 for class 1: softmax of /0.1 by hand
    expected = 1 / (1 + math.exp((0.0995037 - 1.0) / 0.1))
    assert p[0, 0] == pytest.approx(expected, rel=1e-4)


def test_scaler_uses_no_label_and_head_probs_rows_match():
    rng = np.random.default_rng(0)
    e = rng.normal(3.0, 2.0, size=(50, 4))
    s = fit_scaler(e)
    z = s(e)
    assert z.mean(axis=0) == pytest.approx(np.zeros(4), abs=1e-12)
    assert z.std(axis=0) == pytest.approx(np.ones(4))
    labels = (e[:10, 0] > 3.0).astype(np.int64)
    p = head_probs("logreg", e, np.arange(10), labels, 2)
    assert p.shape == (50, 2)
    assert p.sum(axis=1) == pytest.approx(np.ones(50))


def test_a_warm_start_reaches_the_same_optimum_in_fewer_evaluations():
    """One more label: the previous fit is a warm start to the same convex optimum."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 301)
    x = 0.5 * rng.normal(size=(8, 64))[y] + rng.normal(size=(301, 64))
    before = LogisticHead(8).fit(x[:300], y[:300])
    cold = LogisticHead(8).fit(x, y)
    warm = LogisticHead(8).fit(x, y, start=before)
    np.testing.assert_allclose(warm.predict_proba(x), cold.predict_proba(x), atol=1e-4)
    assert warm.evaluations < 0.8 * cold.evaluations


def test_a_start_that_does_not_fit_is_ignored_and_new_classes_start_at_zero():
    x = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    two_classes = LogisticHead(2).fit(x[:2], np.array([0, 1]))
    wide = LogisticHead(3)
    assert [a.tolist() for a in wide._start(two_classes, 2)] == [[[0.0] * 3] * 2, [0.0] * 3]  # other shape
    seen_two = LogisticHead(3).fit(x[:2], np.array([0, 1]))
    weight, bias = wide._start(seen_two, 2)
    assert (weight[:, 2] == 0).all() and bias[2] == 0  # class 2 was never trained
    np.testing.assert_array_equal(weight[:, :2], seen_two.weight[:, :2])
    refit = LogisticHead(3).fit(x, np.array([0, 1, 2]), start=seen_two)
    np.testing.assert_allclose(refit.predict_proba(x), LogisticHead(3).fit(x, np.array([0, 1, 2])).predict_proba(x),
                               atol=1e-6)
