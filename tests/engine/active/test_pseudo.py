"""CEAL pseudo-labels: threshold decay, selection, per-class cap, exclusions."""

import math

import numpy as np
import pytest

from atl_desktop.active.pseudo import (
    PseudoLabelConfig,
    entropy_threshold,
    pseudo_labels_for_round,
    select_pseudo_labels,
)


def H(p):
    return -sum(q * math.log(q) for q in p if q > 0)


def test_delta_decays_linearly_and_stops_at_zero():
    # CEAL's own numbers: 0.005 - 0.00033 t
    assert entropy_threshold(0.005, 0.00033, 0) == pytest.approx(0.005)
    assert entropy_threshold(0.005, 0.00033, 3) == pytest.approx(0.005 - 0.00099)
    assert entropy_threshold(0.005, 0.00033, 15) == pytest.approx(0.00005)
    assert entropy_threshold(0.005, 0.00033, 16) == 0.0
    config = PseudoLabelConfig()
    assert config.threshold(0) == pytest.approx(0.05)
    assert config.threshold(10) == pytest.approx(0.05 - 0.033)
    assert config.to_json() == {"delta0": 0.05, "decay": 0.0033, "max_per_class": None}


# Entropies (nats): 0.999 -> 0.00791, 0.995 -> 0.03141, 0.99 -> 0.05600, 0.98 -> 0.09804, 0.6 -> 0.67301
PROBS = np.array([
    [0.999, 0.001],  # id 10, class 0
    [0.005, 0.995],  # id 11, class 1
    [0.99, 0.01],    # id 12, class 0
    [0.98, 0.02],    # id 13, class 0
    [0.6, 0.4],      # id 14, class 0
    [0.001, 0.999],  # id 15, class 1
])
IDS = [10, 11, 12, 13, 14, 15]


def test_selection_by_threshold_sorted_by_entropy():
    picked = select_pseudo_labels(PROBS, IDS, 0.06)
    # below 0.06: 10 (0.00791), 15 (0.00791, tie -> lower id first), 11 (0.03141), 12 (0.05600)
    assert [p.image_id for p in picked] == [10, 15, 11, 12]
    assert [p.class_id for p in picked] == [0, 1, 1, 0]
    assert picked[0].entropy == pytest.approx(H([0.999, 0.001]))
    assert picked[2].confidence == pytest.approx(0.995)
    assert [p.image_id for p in select_pseudo_labels(PROBS, IDS, 0.05)] == [10, 15, 11]


def test_threshold_decay_shrinks_the_selection_round_by_round():
    config = PseudoLabelConfig(delta0=0.06, decay=0.02)
    counts = [len(pseudo_labels_for_round(PROBS, IDS, t, config)) for t in range(4)]
    # delta: 0.06, 0.04, 0.02, 0.0 -> 4, 3, 2, 0
    assert counts == [4, 3, 2, 0]


def test_per_class_cap_keeps_the_surest():
    picked = select_pseudo_labels(PROBS, IDS, 0.2, max_per_class=1)
    assert sorted((p.class_id, p.image_id) for p in picked) == [(0, 10), (1, 15)]
    config = PseudoLabelConfig(delta0=0.2, decay=0.0, max_per_class=2)
    picked = pseudo_labels_for_round(PROBS, IDS, 5, config)
    assert sorted((p.class_id, p.image_id) for p in picked) == [(0, 10), (0, 12), (1, 11), (1, 15)]


def test_store_class_ids_and_rejected_pairs():
    # positions 0, 1 are store classes 7, 9; (15, 9) was rejected before, (12, 7) too.
    picked = select_pseudo_labels(PROBS, IDS, 0.06, class_ids=[7, 9], exclude={(15, 9), (12, 7)})
    assert [(p.image_id, p.class_id) for p in picked] == [(10, 7), (11, 9)]
    assert picked[0].as_tuple() == (10, 7, pytest.approx(0.999), pytest.approx(H([0.999, 0.001])))
    # a rejection for another class does not exclude the image
    picked = select_pseudo_labels(PROBS, IDS, 0.06, class_ids=[7, 9], exclude={(15, 7)})
    assert 15 in [p.image_id for p in picked]


def test_the_cap_does_not_count_excluded_pairs():
    picked = select_pseudo_labels(PROBS, IDS, 0.2, max_per_class=1, exclude={(10, 0)})
    assert sorted((p.class_id, p.image_id) for p in picked) == [(0, 12), (1, 15)]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        select_pseudo_labels(PROBS, IDS[:3], 0.1)


def _scaled(p, t):
    """(p, 1 - p) at temperature t, by hand: the log-odds divided by t."""
    logit = math.log(p / (1 - p)) / t
    q = 1 / (1 + math.exp(-logit))
    return [q, 1 - q]


def test_temperature_changes_which_images_pass_the_threshold():
    # At T = 1 (as before): 10, 15, 11 pass 0.05.
    # T = 2 (an over-confident model calibrated): 0.999 -> 0.9693 (entropy 0.137), 0.995 ->
    # 0.9338 (0.244): nothing passes.
    assert H(_scaled(0.999, 2)) > 0.05
    assert select_pseudo_labels(PROBS, IDS, 0.05, temperature=2.0) == []
    # T = 0.5 (under-confident, sharpened): 0.99 -> 0.99990 (0.0011) and 0.98 -> 0.99958
    # (0.0037) now pass too; 0.6 -> 0.6923 (0.617) still not.
    assert H(_scaled(0.98, 0.5)) < 0.05 < H(_scaled(0.6, 0.5))
    picked = select_pseudo_labels(PROBS, IDS, 0.05, temperature=0.5)
    assert [p.image_id for p in picked] == [10, 15, 11, 12, 13]
    # the confidence kept is the calibrated one
    assert picked[3].confidence == pytest.approx(_scaled(0.99, 0.5)[0])
    config = PseudoLabelConfig(delta0=0.05, decay=0.0)
    assert len(pseudo_labels_for_round(PROBS, IDS, 0, config, temperature=2.0)) == 0
    assert len(pseudo_labels_for_round(PROBS, IDS, 0, config)) == 3
