"""ECE, reliability bins, Cohen's kappa and the stabilising-predictions rule, worked by hand."""

import numpy as np
import pytest

from atl_desktop.active.calibration import (
    apply_temperature,
    bin_index,
    calibration_summary,
    cohen_kappa,
    ece_change_words,
    expected_calibration_error,
    fit_temperature,
    mean_nll,
    reliability_bins,
    scaled_calibration,
    softmax_t,
    stabilised,
    temperature_fit,
)

# Four predictions, five bins of width 0.2:
#   conf 0.90 right, 0.85 wrong -> bin (0.8, 1]: mean conf 0.875, accuracy 0.5, gap 0.375, weight 2/4
#   conf 0.70 right             -> bin (0.6, 0.8]: gap 0.30, weight 1/4
#   conf 0.55 right             -> bin (0.4, 0.6]: gap 0.45, weight 1/4
# ECE = 0.1875 + 0.075 + 0.1125 = 0.375
PROBS = np.array([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.55, 0.45]])
LABELS = np.array([0, 1, 1, 0])


def test_ece_worked_by_hand():
    assert expected_calibration_error(PROBS, LABELS, n_bins=5) == pytest.approx(0.375)


def test_reliability_bins_worked_by_hand():
    bins = reliability_bins(PROBS, LABELS, n_bins=5)
    assert [b.count for b in bins] == [0, 0, 1, 1, 2]
    assert bins[4].confidence == pytest.approx(0.875) and bins[4].accuracy == 0.5
    assert bins[3].confidence == pytest.approx(0.7) and bins[3].accuracy == 1.0
    assert bins[0].confidence is None and bins[0].accuracy is None
    assert (bins[2].lower, bins[2].upper) == (0.4, 0.6)
    summary = calibration_summary(PROBS, LABELS, n_bins=5)
    assert summary["ece"] == pytest.approx(0.375) and summary["bins"][4]["count"] == 2


def test_bins_are_closed_on_the_right():
    assert bin_index(np.array([0.6, 0.6000001, 1.0, 0.2, 0.0]), 5).tolist() == [2, 3, 4, 0, 0]


def test_a_calibrated_model_has_zero_ece():
    # confidence 0.75 everywhere and three of four right
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(probs, [0, 0, 0, 1]) == pytest.approx(0.0)
    assert expected_calibration_error(probs, [1, 1, 1, 1]) == pytest.approx(0.75)


def test_ece_matches_a_brute_force_loop():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=300)
    labels = rng.integers(0, 4, size=300)
    n_bins = 10
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        inside = [i for i in range(300) if lo < probs[i].max() <= hi]
        if inside:
            conf = np.mean([probs[i].max() for i in inside])
            acc = np.mean([probs[i].argmax() == labels[i] for i in inside])
            total += len(inside) / 300 * abs(acc - conf)
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(total)


def test_cohen_kappa_worked_by_hand():
    # Observed 3/4; chance 0.5*0.25 + 0.5*0.75 = 0.5; kappa = 0.25 / 0.5
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    a = [1] * 25 + [0] * 25
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([2, 0, 1], [2, 0, 1]) == 1.0
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) == 1.0  # chance agreement certain
    assert cohen_kappa([0, 1], [1, 0]) == pytest.approx(-1.0)


def test_stabilised_needs_three_rounds_with_high_mean_kappa():
    assert stabilised([None, 0.995, 0.99, 0.992])
    assert not stabilised([0.99, 0.98, 0.999])  # mean 0.9897
    assert not stabilised([0.999, 0.999])  # too few rounds yet
    assert not stabilised([0.999, None, 0.999])


def test_stop_signal_compares_successive_rounds_on_the_stop_set():
    from atl_desktop.loop.rounds import stop_signal

    first = stop_signal(None, np.array([0, 1, 1, 1]), [])
    assert first == {"kappa": None, "agreement": None, "n": 4, "stop": False}
    # the kappa worked by hand above: agreement 3/4, kappa 0.5
    second = stop_signal(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), [None])
    assert second["kappa"] == pytest.approx(0.5) and second["agreement"] == 0.75 and not second["stop"]
    # identical predictions after two stable rounds: mean kappa (0.995 + 0.99 + 1) / 3 >= 0.99
    third = stop_signal(np.array([2, 0, 1]), np.array([2, 0, 1]), [None, 0.995, 0.99])
    assert third["kappa"] == 1.0 and third["stop"]
    assert not stop_signal(np.array([2, 0, 1]), np.array([2, 0, 1]), [None, 0.5, 0.99])["stop"]


def test_round_evaluation_adds_calibration_and_skips_unknown_labels():
    from atl_desktop.loop.rounds import evaluation_metrics

    probs = np.vstack([PROBS, [[0.5, 0.5]]])
    metrics = evaluation_metrics(probs, [*LABELS, -1], ["a", "b"])
    assert metrics["n"] == 4 and metrics["accuracy"] == 0.75  # the fifth row has no label
    # loss: mean of -log p(true class) = -log(0.9 * 0.15 * 0.7 * 0.55) / 4
    assert metrics["loss"] == pytest.approx(-np.log(0.9 * 0.15 * 0.7 * 0.55) / 4)
    assert metrics["calibration"]["ece"] == pytest.approx(expected_calibration_error(PROBS, LABELS))
    assert metrics["confusion"] == [[2, 0], [1, 1]] and metrics["balanced_accuracy"] == 0.75


# ---- temperature scaling ----------------------------------------------------------------------
# Every row has logits (a, 0, ..., 0) over C classes and a share q of the rows is labelled 0,
# the rest spread over the other classes. The NLL of softmax(z / T) is minimal where the
# predicted p(class 0) = e^(a/T) / (e^(a/T) + C - 1) equals q, so a / T = ln(q (C - 1) / (1 - q)).


def test_temperature_two_classes_closed_form():
    # a = 2, q = 3/4, C = 2: 2 / T = ln 3, T = 2 / ln 3 = 1.8205 (the model is over-confident)
    logits = np.array([[2.0, 0.0]] * 4)
    assert fit_temperature(logits, [0, 0, 0, 1]) == pytest.approx(2 / np.log(3), rel=1e-9)


def test_temperature_three_classes_closed_form():
    # a = 1, q = 1/2, C = 3: 1 / T = ln(0.5 * 2 / 0.5) = ln 2, T = 1.4427
    logits = np.array([[1.0, 0.0, 0.0]] * 4)
    assert fit_temperature(logits, [0, 0, 1, 2]) == pytest.approx(1 / np.log(2), rel=1e-9)


def test_temperature_under_confident_model_is_sharpened():
    # probabilities (0.6, 0.4), right 9 times in 10: log-ratio ln 1.5 per T must reach ln 9,
    # T = ln 1.5 / ln 9 = 0.1845 < 1
    probs = np.array([[0.6, 0.4]] * 10)
    labels = [0] * 9 + [1]
    assert fit_temperature(probs, labels, from_probs=True) == pytest.approx(np.log(1.5) / np.log(9), rel=1e-9)


def test_probabilities_are_taken_as_log_probability_logits():
    # (0.9, 0.1) has log-ratio ln 9; right 3 times in 4 gives ln 3 = ln 9 / T: T = 2 exactly
    probs = np.array([[0.9, 0.1]] * 4)
    assert fit_temperature(probs, [0, 0, 0, 1], from_probs=True) == pytest.approx(2.0, rel=1e-9)
    # softmax(log p / 2) = (3/4, 1/4)
    assert apply_temperature(probs, 2.0)[0] == pytest.approx([0.75, 0.25])
    assert np.array_equal(apply_temperature(probs, 1.0), probs)


def test_temperature_matches_a_grid_search_on_random_logits():
    # An independent check: the NLL over a fine log-spaced grid of T has its minimum at the fit.
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 2.5 * np.eye(4)[labels] * rng.random((300, 1)) * 4
    t = fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(t / 2), np.log(t * 2), 4001))
    best = grid[np.argmin([mean_nll(softmax_t(logits, g), labels) for g in grid])]
    assert t == pytest.approx(best, rel=1e-3)
    assert t != pytest.approx(1.0, abs=0.05)


def test_temperature_keeps_predictions_and_zero_probabilities():
    probs = np.array([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3]])
    scaled = apply_temperature(probs, 1.7)
    assert scaled.argmax(1).tolist() == [0, 1]
    assert scaled[0, 2] == 0.0
    assert scaled.sum(1) == pytest.approx([1, 1])


def test_temperature_at_the_ends_and_refusals():
    # every prediction right: the NLL falls as T -> 0, so the lower end of the search
    assert fit_temperature(np.array([[3.0, 0.0]] * 3), [0, 0, 0]) == pytest.approx(0.01)
    # no information (equal logits): the upper end
    assert fit_temperature(np.zeros((4, 2)), [0, 1, 0, 1]) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        fit_temperature(np.array([[1.0, 0.0]]), [0, 1])
    with pytest.raises(ValueError):  # the true class at probability 0
        fit_temperature(np.array([[1.0, 0.0]]), [1], from_probs=True)


def test_temperature_fit_reports_nll_and_ece_line():
    probs = np.array([[0.9, 0.1]] * 4)
    fit = temperature_fit(probs, [0, 0, 0, 1], fitted_on="validation split")
    # before: -(3 ln .9 + ln .1) / 4 = 0.6547; after, at (3/4, 1/4): -(3 ln .75 + ln .25) / 4 = 0.5623
    assert fit.nll_before == pytest.approx(-(3 * np.log(0.9) + np.log(0.1)) / 4)
    assert fit.nll_after == pytest.approx(-(3 * np.log(0.75) + np.log(0.25)) / 4)
    assert fit.to_json()["fitted_on"] == "validation split" and fit.n == 4
    assert ece_change_words(0.1234, 0.0412, 1.8205) == "ECE 0.12 → 0.04 (T = 1.8)"


def test_scaled_calibration_before_and_after_by_hand():
    # (0.9, 0.1) four times, right three: ECE before |0.75 - 0.9| = 0.15; at T = 2 the
    # confidence is 0.75, the accuracy 0.75: ECE 0
    probs = np.array([[0.9, 0.1]] * 4)
    labels = [0, 0, 0, 1]
    fit = temperature_fit(probs, labels, fitted_on="validation split")
    assert calibration_summary(probs, labels)["ece"] == pytest.approx(0.15)
    after = scaled_calibration(probs, labels, fit)
    assert after["ece"] == pytest.approx(0.0, abs=1e-9)
    assert after["temperature"] == pytest.approx(2.0) and after["n_fit"] == 4
