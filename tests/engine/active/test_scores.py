"""Scores on tiny probability tables, values worked out by hand (natural logs)."""

import math

import numpy as np
import pytest

from atl_desktop.active.scores import bald, entropy, least_confidence, margin
from atl_desktop.active.strategies import top_b

PROBS = np.array([
    [0.7, 0.2, 0.1],
    [0.4, 0.35, 0.25],
    [0.5, 0.5, 0.0],
    [1.0, 0.0, 0.0],
])


def test_least_confidence_by_hand():
    # 1 - max p: 0.3, 0.6, 0.5, 0.0
    np.testing.assert_allclose(least_confidence(PROBS), [0.3, 0.6, 0.5, 0.0], atol=1e-12)
    assert top_b(least_confidence(PROBS), 4).tolist() == [1, 2, 0, 3]


def test_margin_by_hand():
    # 1 - (best - second): 1-(0.7-0.2)=0.5, 1-(0.4-0.35)=0.95, 1-(0.5-0.5)=1, 1-(1-0)=0
    np.testing.assert_allclose(margin(PROBS), [0.5, 0.95, 1.0, 0.0], atol=1e-12)
    assert top_b(margin(PROBS), 4).tolist() == [2, 1, 0, 3]


def test_entropy_by_hand():
    # row 0: 0.7*0.35667 + 0.2*1.60944 + 0.1*2.30259 = 0.24967 + 0.32189 + 0.23026 = 0.80182
    # row 1: 0.4*0.91629 + 0.35*1.04982 + 0.25*1.38629 = 0.36652 + 0.36744 + 0.34657 = 1.08053
    # row 2: ln 2 = 0.69315 (the 0 contributes 0); row 3: 0
    np.testing.assert_allclose(entropy(PROBS), [0.80182, 1.08053, 0.69315, 0.0], atol=5e-5)
    assert top_b(entropy(PROBS), 4).tolist() == [1, 0, 2, 3]


def test_the_three_scores_rank_differently():
    rankings = {tuple(top_b(f(PROBS), 4)) for f in (least_confidence, margin, entropy)}
    assert len(rankings) == 3


def test_bald_by_hand():
    mc = np.array([
        [[1.0, 0.0], [0.0, 1.0]],  # samples disagree completely: ln2 - 0 = 0.69315
        [[0.5, 0.5], [0.5, 0.5]],  # agree on "don't know": ln2 - ln2 = 0
        [[0.9, 0.1], [0.7, 0.3]],  # H(0.8,0.2)=0.50040; mean of H(0.9)=0.32508, H(0.7)=0.61086 is 0.46797
    ])
    np.testing.assert_allclose(bald(mc), [math.log(2), 0.0, 0.50040 - 0.46797], atol=5e-5)
    assert top_b(bald(mc), 3).tolist() == [0, 2, 1]


def test_top_b_breaks_ties_by_lower_index():
    assert top_b(np.array([0.1, 0.5, 0.5, 0.2, 0.5]), 2).tolist() == [1, 2]


@pytest.mark.parametrize("score", [least_confidence, margin, entropy])
def test_scores_reject_wrong_shape(score):
    with pytest.raises(ValueError):
        score(np.ones(3))
