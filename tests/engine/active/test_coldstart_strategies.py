"""TypiClust, ProbCover and auto, on point sets whose answers were worked out by hand."""

import math

import numpy as np
import pytest

from atl_desktop.active.strategies import (
    STRATEGIES,
    SelectionInput,
    auto_phase,
    impure_distance,
    knn_mean_distance,
    probcover,
    probcover_radius,
    select,
    typiclust,
)


def _on_circle(degrees) -> np.ndarray:
    t = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _chord(degrees: float) -> float:
    return 2 * math.sin(math.radians(degrees) / 2)


def test_knn_mean_distance_by_hand():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    # 0: nearest two at 1 and 3 -> 2; 1: at 1 and 2 -> 1.5; 3: at 2 and 3 -> 2.5; 7: at 4 and 6 -> 5
    assert knn_mean_distance(x, 2) == pytest.approx([2.0, 1.5, 2.5, 5.0])


def test_typiclust_takes_the_centre_of_the_largest_uncovered_cluster_first():
    offsets = [0, 1, -1, 2.5, -2.5, 4, -4, 7]  # 8 points around a centre
    a = _on_circle([0 + o for o in [0, 1, -1, 2.5, -2.5, 4]])  # 6 points, one labelled nearby
    b = _on_circle([90 + o for o in offsets])  # 8 points: the largest uncovered cluster
    c = _on_circle([180 + o for o in offsets[:7]])  # 7 points
    pool = np.concatenate([a, b, c])
    labelled = _on_circle([0.5])
    # Typicality in b with knn = min(20, 8 // 2) = 4: the centre's mean distance to its 4
    # nearest is (1 + 1 + 2.5 + 2.5) / 4 = 1.75 degrees; +-1 give (1 + 1.5 + 2 + 3) / 4 = 1.875.
    picks = typiclust(pool, labelled, 2, np.random.default_rng(0))
    assert picks.tolist() == [6, 14]  # b's centre, then c's centre (a is covered)


def test_typiclust_without_labels_and_with_a_small_pool():
    pool = _on_circle([0, 1, 2])
    picks = typiclust(pool, None, 5, np.random.default_rng(0))
    assert sorted(picks.tolist()) == [0, 1, 2]


def test_probcover_greedy_coverage_by_hand():
    pool = _on_circle([0, 2, 4, 30, 32, 60])
    delta = _chord(5)  # balls: {0,2,4} three times, {30,32} twice, {60}
    picks = probcover(pool, None, 3, np.random.default_rng(0), delta=delta)
    assert picks.tolist() == [0, 3, 5]
    # A labelled image at 31 degrees covers 30 and 32 before anything is chosen.
    picks = probcover(pool, _on_circle([31]), 2, np.random.default_rng(0), delta=delta)
    assert picks.tolist() == [0, 5]


def test_probcover_draws_at_random_once_everything_is_covered():
    pool = _on_circle([0, 2, 4])
    picks = probcover(pool, None, 3, np.random.default_rng(0), delta=_chord(5))
    assert picks[0] == 0 and sorted(picks.tolist()) == [0, 1, 2]


def test_impure_distance_and_radius_by_hand():
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    pseudo = np.array([0, 0, 0, 1, 1])
    assert impure_distance(x, pseudo) == pytest.approx([10, 9, 8, 8, 9])
    # Two obvious clusters: k-means finds them whatever its seed. Sorted: 8, 8, 9, 9, 10;
    # purity 0.8 allows floor(0.2 * 5) = 1 impure ball, so delta = the second smallest, 8.
    assert probcover_radius(x, 2, np.random.default_rng(3), purity=0.8) == pytest.approx(8.0)
    assert probcover_radius(x, 2, np.random.default_rng(3), purity=1.0) == pytest.approx(8.0)


def test_auto_switches_from_typical_to_uncertain_at_the_threshold():
    assert auto_phase(9, 2, 5) == "typical"
    assert auto_phase(10, 2, 5) == "uncertain"
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 3))
    probs = np.full((40, 2), 0.5)
    probs[:, 0] = np.linspace(0.5, 1.0, 40)
    probs[:, 1] = 1 - probs[:, 0]
    few = SelectionInput(probs=probs, features=feats, labelled_features=feats[:3])
    many = SelectionInput(probs=probs, features=feats, labelled_features=np.repeat(feats[:1], 12, axis=0))
    typical = select("typiclust", few, 4, np.random.default_rng(1))
    assert select("auto", few, 4, np.random.default_rng(1)).tolist() == typical.tolist()
    hybrid = select("hybrid", many, 4, np.random.default_rng(1), score="margin", k=10)
    assert select("auto", many, 4, np.random.default_rng(1)).tolist() == hybrid.tolist()


def test_new_strategies_are_registered():
    for name in ("typiclust", "probcover", "auto"):
        assert "features" in STRATEGIES[name].needs
