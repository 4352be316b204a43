"""The audit estimate and the stopping rule, against values worked out by hand."""

import math

import numpy as np
import pytest

from atl_desktop.active.audit import (
    AuditEstimate,
    audit_estimate,
    balanced_interval,
    stop_rule,
    wilson_interval,
)


def test_wilson_for_8_of_10_worked_by_hand():
    # p = 0.8, z² = 3.8415: centre (0.8 + 0.19207) / 1.38415 = 0.71674,
    # half 1.96 * sqrt(0.016 + 0.0096036) / 1.38415 = 0.22658
    interval = wilson_interval(8, 10)
    assert interval.estimate == 0.8
    assert interval.lower == pytest.approx(0.4902, abs=5e-5)
    assert interval.upper == pytest.approx(0.9433, abs=5e-5)


def test_wilson_for_none_right_starts_at_zero_and_is_not_empty():
    # p = 0: centre = half = (z²/10) / (1 + z²/5) = 0.38415 / 1.76829 = 0.21724
    interval = wilson_interval(0, 5)
    assert interval.lower == 0.0
    assert interval.upper == pytest.approx(0.43448, abs=5e-5)


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_balanced_interval_worked_by_hand():
    # class A 3 of 4 right, class B 1 of 2: estimate (0.75 + 0.5) / 2 = 0.625.
    # adjusted 4/6 and 2/4; variance (2/3 * 1/3 / 6 + 1/4 / 4) / 4 = 0.0248843,
    # half 1.95996 * 0.157748 = 0.309180 around (2/3 + 1/2) / 2 = 0.583333
    interval = balanced_interval([3, 1, 0], [4, 2, 0])  # the third class has no audit label
    assert interval.estimate == pytest.approx(0.625)
    assert interval.lower == pytest.approx(0.274153, abs=2e-6)
    assert interval.upper == pytest.approx(0.892513, abs=2e-6)


def test_balanced_interval_always_holds_its_estimate():
    # one wrong label in each of three classes: estimate 0, adjusted 1/3 each,
    # half 1.96 * sqrt(3 * (1/3 * 2/3 / 3)) / 3 = 0.307978 around 1/3: [0.0254, 0.6413] -> from 0
    interval = balanced_interval([0, 0, 0], [1, 1, 1])
    assert interval.estimate == 0.0 and interval.lower == 0.0
    assert interval.upper == pytest.approx(1 / 3 + 0.307978, abs=2e-6)


def test_all_right_in_a_class_still_leaves_doubt():
    # the plain Wald variance would be 0 here: 5 of 5 and 5 of 5
    interval = balanced_interval([5, 5], [5, 5])
    assert interval.estimate == 1.0 and interval.upper == 1.0
    # adjusted 6/7 each: half = 1.96 * sqrt(2 * (6/7)(1/7)/7) / 2
    assert interval.lower == pytest.approx(6 / 7 - 1.959964 * math.sqrt(2 * 6 / 49 / 7) / 2, abs=1e-6)


def test_audit_estimate_counts_per_class():
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 0, 0, 1, 1, 0, 2, 2, 2, 2]
    est = audit_estimate(labels, preds, ["a", "b", "c", "d"])
    assert est.n == 10
    assert est.accuracy.estimate == pytest.approx(0.8)
    assert est.accuracy.lower == pytest.approx(0.4902, abs=5e-5)
    assert [(c.name, c.correct, c.count) for c in est.per_class] == [
        ("a", 3, 4), ("b", 1, 2), ("c", 4, 4), ("d", 0, 0)]
    assert est.per_class[3].recall is None and est.missing_classes == ["d"]
    assert est.balanced_accuracy.estimate == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert "no audit label yet for d" in est.summary()
    data = est.to_json()
    assert data["n"] == 10 and data["per_class"][0]["recall"] == 0.75


def test_audit_estimate_refuses_bad_input():
    with pytest.raises(ValueError):
        audit_estimate([], [], ["a"])
    with pytest.raises(ValueError):
        audit_estimate([0, 3], [0, 0], ["a", "b"])


def _estimate(right_a: int, n_a: int, right_b: int, n_b: int):
    labels = [0] * n_a + [1] * n_b
    preds = [0] * right_a + [1] * (n_a - right_a) + [1] * right_b + [0] * (n_b - right_b)
    return audit_estimate(np.asarray(labels), np.asarray(preds), ["a", "b"])


def test_stop_rule_needs_both_stable_predictions_and_a_tight_audit():
    tight = _estimate(380, 400, 380, 400)  # width about 0.04
    wide = _estimate(9, 10, 9, 10)  # width about 0.4
    assert tight.balanced_accuracy.width < 0.10 < wide.balanced_accuracy.width
    assert stop_rule(True, tight).stop
    decision = stop_rule(False, tight)
    assert not decision.stop and decision.audit_ok and "still change" in decision.reason
    decision = stop_rule(True, wide)
    assert not decision.stop and decision.stabilised and "wide" in decision.reason
    assert not stop_rule(True, None).stop


def test_stop_rule_target_lower_bound_is_an_alternative():
    est = _estimate(28, 30, 29, 30)  # lower bound about 0.84, width about 0.15
    b = est.balanced_accuracy
    assert b.width > 0.10
    assert stop_rule(True, est, target=b.lower - 0.01).stop
    assert not stop_rule(True, est, target=b.lower + 0.01).stop
    assert stop_rule(True, est, width=b.width + 0.01).stop


def test_stop_rule_waits_for_every_class():
    labels = [0] * 400
    est = audit_estimate(labels, labels, ["a", "b"])
    decision = stop_rule(True, est)
    assert not decision.stop and "no audit label yet for b" in decision.reason


def test_estimate_survives_json_as_a_round_records_it():
    est = audit_estimate([0, 0, 1, 2], [0, 1, 1, 2], ["a", "b", "c"])
    assert AuditEstimate.from_json(est.to_json()) == est
