"""Each strategy explains its picks: the sentence on a tile, worked by hand."""

import numpy as np
import pytest

from atl_desktop.active.reasons import top_share
from atl_desktop.active.strategies import STRATEGIES, SelectionInput, explain


def test_top_share_worked_by_hand():
    scores = np.array([0.1, 0.5, 0.9, 0.3])
    assert top_share(scores, 0.9) == "top 25 % of 4 unlabelled"  # rank 1 of 4
    assert top_share(scores, 0.3) == "top 75 % of 4 unlabelled"  # rank 3 of 4


def test_margin_and_its_diverse_variant_name_the_gap_and_the_rank():
    data = SelectionInput(probs=np.array([[0.6, 0.4], [0.9, 0.1]]), features=np.eye(2),
                          labelled_features=np.zeros((0, 2)))
    values, words = explain("margin", data, np.array([0]), {})
    assert values == pytest.approx([0.8])  # 1 - (0.6 - 0.4)
    assert words == ["top two classes 20% apart, top 50 % of 2 unlabelled"]
    _, words = explain("hybrid", data, np.array([1]), {"score": "margin"})
    assert words == ["top two classes 80% apart, top 100 % of 2 unlabelled; unlike the other chosen images"]


def test_auto_explains_the_phase_it_was_in():
    probs = np.array([[0.6, 0.4], [0.9, 0.1]])
    few = SelectionInput(probs=probs, features=np.eye(2), labelled_features=np.zeros((3, 2)))
    assert "TypiClust" in explain("auto", few, np.array([0]), {})[1][0]  # 3 < 5 labels per class x 2
    many = SelectionInput(probs=probs, features=np.eye(2), labelled_features=np.zeros((10, 2)))
    assert explain("auto", many, np.array([0]), {})[1][0].startswith("top two classes 20% apart")


def test_coreset_gives_the_distance_to_the_nearest_label():
    data = SelectionInput(features=np.array([[3.0, 4.0], [0.0, 1.0]]),
                          labelled_features=np.array([[0.0, 0.0], [0.0, 2.0]]))
    values, words = explain("coreset", data, np.array([0]), {})
    assert values == pytest.approx([np.sqrt(9 + 4)])  # to (0, 2)
    assert words[0].startswith("far from every labelled image (distance 3.61, 3.6× the labelled set's spread)")


def test_every_strategy_explains_itself_without_what_it_lacks():
    data = SelectionInput(features=np.eye(3), labelled_features=np.zeros((0, 3)))
    for name, strategy in STRATEGIES.items():
        values, words = strategy.explain(data, np.array([0, 1]), {})
        assert len(values) == len(words) == 2 and all(isinstance(w, str) and w for w in words), name
