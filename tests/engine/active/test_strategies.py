"""Strategies: AIFT's R by hand, k-centre and MMD against known answers and brute force,
cold start (k-means, prototypes) and the registry."""

import itertools
import math

import numpy as np
import pytest

from atl_desktop.active.coldstart import fit_prototypes, kmeans, kmeans_select, prototype_probs
from atl_desktop.active.strategies import (
    STRATEGIES,
    SelectionInput,
    aift_scores,
    k_center_greedy,
    mmd_reduction_greedy,
    select,
)

# ---- AIFT ----------------------------------------------------------------------


def H(p):
    return -sum(q * math.log(q) for q in p if q > 0)


def sym_kl(p, q):
    return sum((a - b) * (math.log(a) - math.log(b)) for a, b in zip(p, q, strict=True))


def test_aift_r_by_hand_two_candidates():
    # Two classes, m = 4 patches, alpha = 0.5 -> keep 2 patches per candidate.
    # Candidate A, p(class 0) per patch: 0.9, 0.8, 0.6, 0.3. Mean 0.65 -> majority class 0;
    #   keep the two most confident in class 0: (0.9, 0.1), (0.8, 0.2).
    #   e(0.9) = 0.9*0.10536 + 0.1*2.30259 = 0.32508;  e(0.8) = 0.8*0.22314 + 0.2*1.60944 = 0.50040
    #   symKL = (0.9-0.8)(ln0.9-ln0.8) + (0.1-0.2)(ln0.1-ln0.2) = 0.1*0.11778 + 0.1*0.69315 = 0.08109
    #   sum R = l1*(0.32508 + 0.50040) + l2*2*0.08109
    # Candidate B, p(class 0): 0.6, 0.45, 0.3, 0.05. Mean 0.35 -> majority class 1;
    #   keep the two most confident in class 1: p1 = 0.95 and 0.7, i.e. (0.05, 0.95), (0.3, 0.7).
    #   e(0.95) = 0.19852;  e(0.7) = 0.61086
    #   symKL = (0.05-0.3)(ln0.05-ln0.3) + (0.95-0.7)(ln0.95-ln0.7)
    #         = 0.25*1.79176 + 0.25*0.30538 = 0.52429
    #   sum R = l1*(0.19852 + 0.61086) + l2*2*0.52429
    a = [0.9, 0.8, 0.6, 0.3]
    b = [0.6, 0.45, 0.3, 0.05]
    patches = np.array([[[p, 1 - p] for p in a], [[p, 1 - p] for p in b]])
    for l1, l2 in [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.5, 2.0)]:
        expected_a = l1 * (0.32508 + 0.50040) + l2 * 2 * 0.08109
        expected_b = l1 * (0.19852 + 0.61086) + l2 * 2 * 0.52429
        got = aift_scores(patches, alpha=0.5, lambda1=l1, lambda2=l2)
        np.testing.assert_allclose(got, [expected_a, expected_b], atol=5e-5)
    # the same from the formulas, to more digits
    exact_a = H([0.9, 0.1]) + H([0.8, 0.2]) + 2 * sym_kl([0.9, 0.1], [0.8, 0.2])
    exact_b = H([0.05, 0.95]) + H([0.3, 0.7]) + 2 * sym_kl([0.05, 0.95], [0.3, 0.7])
    np.testing.assert_allclose(aift_scores(patches, alpha=0.5), [exact_a, exact_b], rtol=1e-9)
    # Entropy alone prefers A (0.82548 > 0.80938); with diversity B wins (1.85796 > 0.98766).
    data = SelectionInput(augmented_probs=patches)
    rng = np.random.default_rng(0)
    assert select("aift", data, 1, rng, m=4, alpha=0.5, lambda1=1.0, lambda2=0.0).tolist() == [0]
    assert select("aift", data, 1, rng, m=4, alpha=0.5).tolist() == [1]


def test_aift_alpha_one_keeps_every_patch():
    patches = np.array([[[0.9, 0.1], [0.1, 0.9]]])  # opposite patches: maximal disagreement
    expected = 2 * H([0.9, 0.1]) + 2 * sym_kl([0.9, 0.1], [0.1, 0.9])
    np.testing.assert_allclose(aift_scores(patches, alpha=1.0), [expected], rtol=1e-9)
    # alpha = 0.5 keeps one patch: only its entropy remains
    np.testing.assert_allclose(aift_scores(patches, alpha=0.5), [H([0.9, 0.1])], rtol=1e-9)


def test_aift_rejects_wrong_patch_count():
    data = SelectionInput(augmented_probs=np.full((3, 4, 2), 0.5))
    with pytest.raises(ValueError, match="m=8"):
        select("aift", data, 1, np.random.default_rng(0), m=8)


# ---- k-centre -------------------------------------------------------------------


def test_k_center_known_answer_on_a_line():
    # Points 0, 1, 3, 9, 12, 20; labelled {0}. Distances to 0: 0 1 3 9 12 20 -> take 20.
    # Then min(d to 0, d to 20): 0 1 3 9 8 0 -> take 9. Then 0 1 3 0 3 0 -> take 3 (first of the tie).
    pool = np.array([[0.0], [1.0], [3.0], [9.0], [12.0], [20.0]])
    picks = k_center_greedy(pool, 3, labelled=np.array([[0.0]]))
    assert picks.tolist() == [5, 3, 2]


def test_k_center_cold_start_begins_at_the_centre():
    pool = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 1.0], [5.0, 9.0]])
    # mean (5, 2.5): nearest is (5, 1); then farthest from it: (5, 9) (d^2=64) vs (0,0),(10,0) (26)
    assert k_center_greedy(pool, 2).tolist() == [2, 3]


def brute_force_k_center(pool, labelled, b):
    centres = list(labelled)
    picks = []
    for _ in range(b):
        best, best_d = None, -1.0
        for i, x in enumerate(pool):
            if i in picks:
                continue
            d = min(float(np.sum((x - c) ** 2)) for c in centres)
            if d > best_d:
                best, best_d = i, d
        picks.append(best)
        centres.append(pool[best])
    return picks


def clustered(rng, n, d, clusters):
    centres = rng.normal(scale=4.0, size=(clusters, d))
    return centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, d))


@pytest.mark.parametrize("seed", [3, 4])
def test_k_center_matches_brute_force(seed):
    # 150 clustered points: more than the first lazy block, so the block has to grow.
    rng = np.random.default_rng(seed)
    pool = clustered(rng, 150, 5, 4)
    labelled = rng.normal(size=(4, 5))
    assert k_center_greedy(pool, 12, labelled).tolist() == brute_force_k_center(pool, labelled, 12)


def test_k_center_class_balance():
    # Class 0 sits far away and would win every pick; a quota of 1 per class forces a spread.
    pool = np.array([[100.0], [90.0], [80.0], [1.0], [2.0], [3.0]])
    classes = np.array([0, 0, 0, 1, 1, 1])
    free = k_center_greedy(pool, 2, np.array([[0.0]]))
    assert set(classes[free]) == {0}
    balanced = k_center_greedy(pool, 2, np.array([[0.0]]), classes=classes, max_per_class=1)
    assert sorted(classes[balanced]) == [0, 1]


# ---- MMD reduction ------------------------------------------------------------


def gaussian(a, b, sigma):
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d / (2 * sigma**2))


def mmd2(L, U, sigma):
    return gaussian(L, L, sigma).mean() + gaussian(U, U, sigma).mean() - 2 * gaussian(L, U, sigma).mean()


def brute_force_mmd_greedy(pool, labelled, b, sigma):
    picks, values = [], []
    for _ in range(b):
        best, best_v = None, math.inf
        for i in range(len(pool)):
            if i in picks:
                continue
            moved = picks + [i]
            L = np.concatenate([labelled, pool[moved]])
            U = np.delete(pool, moved, axis=0)
            v = mmd2(L, U, sigma)
            if v < best_v - 1e-12:
                best, best_v = i, v
        picks.append(best)
        values.append(best_v)
    return picks, values


def test_mmd_greedy_matches_brute_force_on_more_points_than_a_lazy_block():
    rng = np.random.default_rng(11)
    labelled = clustered(rng, 10, 3, 3)
    pool = clustered(rng, 70, 3, 3)
    trace = mmd_reduction_greedy(pool, labelled, 6, rng, bandwidth=2.0, kernel_sample=None)
    picks, values = brute_force_mmd_greedy(pool, labelled, 6, 2.0)
    assert trace.chosen.tolist() == picks
    np.testing.assert_allclose(trace.mmd2, values, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmd_greedy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    # Labelled data on one side, the pool spread over two clusters: the greedy should
    # move pool points from the cluster the labelled set does not cover.
    labelled = rng.normal(loc=0.0, size=(4, 3))
    pool = np.concatenate([rng.normal(loc=0.0, size=(5, 3)), rng.normal(loc=3.0, size=(6, 3))])
    sigma = 1.5
    trace = mmd_reduction_greedy(pool, labelled, 4, rng, bandwidth=sigma, kernel_sample=None)
    picks, values = brute_force_mmd_greedy(pool, labelled, 4, sigma)
    assert trace.chosen.tolist() == picks
    np.testing.assert_allclose(trace.mmd2, values, rtol=1e-9, atol=1e-12)
    assert trace.mmd2[0] < mmd2(labelled, pool, sigma)


def test_mmd_greedy_with_no_labelled_data_matches_brute_force():
    rng = np.random.default_rng(7)
    pool = rng.normal(size=(8, 2))
    trace = mmd_reduction_greedy(pool, None, 3, rng, bandwidth=1.0, kernel_sample=None)
    picks, values = brute_force_mmd_greedy(pool, np.empty((0, 2)), 3, 1.0)
    assert trace.chosen.tolist() == picks
    np.testing.assert_allclose(trace.mmd2, values, rtol=1e-9)


def test_mmd_sampled_sums_stay_close_to_exact():
    rng = np.random.default_rng(0)
    labelled = rng.normal(size=(300, 4))
    pool = np.concatenate([rng.normal(size=(300, 4)), rng.normal(loc=2.5, size=(300, 4))])
    exact = mmd_reduction_greedy(pool, labelled, 10, np.random.default_rng(1), bandwidth=2.0,
                                 kernel_sample=None)
    sampled = mmd_reduction_greedy(pool, labelled, 10, np.random.default_rng(1), bandwidth=2.0,
                                   kernel_sample=200)
    # Both draw from the uncovered cluster, and reach about the same MMD.
    assert (sampled.chosen >= 300).mean() >= 0.9 and (exact.chosen >= 300).mean() >= 0.9
    assert abs(sampled.mmd2[-1] - exact.mmd2[-1]) < 0.2 * exact.mmd2[-1]


# ---- hybrid, random, registry ---------------------------------------------------------


def test_hybrid_takes_diverse_points_from_the_uncertain_shortlist():
    # 6 uncertain points (two tight groups) and 6 confident ones; b = 2, k = 3 -> shortlist of 6.
    probs = np.array([[0.5, 0.5]] * 6 + [[0.99, 0.01]] * 6)
    feats = np.array([[0.0, 0], [0.1, 0], [0.2, 0], [5.0, 0], [5.1, 0], [5.2, 0]] + [[50.0, 50]] * 6)
    data = SelectionInput(probs=probs, features=feats, labelled_features=np.array([[0.1, 0.0]]))
    picks = select("hybrid", data, 2, np.random.default_rng(0), k=3)
    assert all(p < 6 for p in picks)  # confident points excluded although far away
    assert picks[0] in (3, 4, 5)  # the group the labelled point does not cover
    assert select("hybrid", data, 2, np.random.default_rng(0), k=3, diversity="mmd").max() < 6


def test_hybrid_class_balance_on_predicted_classes():
    # Uncertain points predicted class 0 dominate the entropy ranking; balance forces one of class 1.
    probs = np.array([[0.55, 0.45], [0.56, 0.44], [0.57, 0.43], [0.4, 0.6], [0.99, 0.01]])
    feats = np.array([[10.0], [11.0], [12.0], [0.5], [3.0]])
    data = SelectionInput(probs=probs, features=feats, labelled_features=np.array([[0.0]]))
    unbalanced = select("hybrid", data, 2, np.random.default_rng(0), k=2)
    assert set(probs[unbalanced].argmax(1)) == {0}
    balanced = select("hybrid", data, 2, np.random.default_rng(0), k=2, balance=True)
    assert sorted(probs[balanced].argmax(1)) == [0, 1]


def test_random_is_reproducible_and_distinct():
    data = SelectionInput(probs=np.full((50, 3), 1 / 3))
    a = select("random", data, 10, np.random.default_rng(5))
    b = select("random", data, 10, np.random.default_rng(5))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10


def test_every_registered_strategy_runs_and_returns_distinct_rows():
    rng = np.random.default_rng(0)
    n, c, d = 40, 3, 6
    probs = rng.dirichlet(np.ones(c), size=n)
    data = SelectionInput(
        probs=probs, features=rng.normal(size=(n, d)), labelled_features=rng.normal(size=(5, d)),
        source_features=rng.normal(size=(7, d)), augmented_probs=rng.dirichlet(np.ones(c), size=(n, 8)),
        mc_probs=rng.dirichlet(np.ones(c), size=(n, 4)),
    )
    for name, strategy in STRATEGIES.items():
        assert strategy.needs <= {f for f in SelectionInput.__dataclass_fields__}, name
        if "generative" in strategy.needs:
            continue  # GAAL and ASAL need a GAN: tests/engine/active/test_gansampling.py
        picks = select(name, data, 6, np.random.default_rng(1))
        assert len(picks) == 6 and len(set(picks.tolist())) == 6, name
        assert set(picks.tolist()) <= set(range(n)), name
    # The uncertainty strategies against their scores worked out here, row by row, in plain
    # Python: the six highest, highest first.
    def six_highest(scores):
        return sorted(range(n), key=lambda i: (-scores[i], i))[:6]

    by_hand = {
        "least_confidence": [1 - max(p) for p in probs],
        "margin": [1 - (sorted(p)[-1] - sorted(p)[-2]) for p in probs],
        "entropy": [H(p) for p in probs],
        "bald": [H(np.mean(t, axis=0)) - np.mean([H(q) for q in t]) for t in data.mc_probs],
    }
    for name, scores in by_hand.items():
        assert select(name, data, 6, np.random.default_rng(1)).tolist() == six_highest(scores), name
    assert select("random", data, 6, np.random.default_rng(1)).tolist() == \
        np.random.default_rng(1).choice(n, 6, replace=False).tolist()


def test_missing_inputs_and_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="features"):
        select("coreset", SelectionInput(probs=np.ones((3, 2)) / 2), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown strategy"):
        select("nope", SelectionInput(probs=np.ones((3, 2)) / 2), 1, np.random.default_rng(0))


# ---- cold start and few-shot --------------------------------------------------------


def blobs(rng, centres, per):
    x = np.concatenate([rng.normal(loc=c, scale=0.2, size=(per, len(c))) for c in centres])
    y = np.repeat(np.arange(len(centres)), per)
    return x, y


def test_kmeans_finds_separated_blobs_and_picks_one_per_cluster():
    rng = np.random.default_rng(0)
    centres = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0), (10.0, 10.0)]
    x, y = blobs(rng, centres, 25)
    _, assignment = kmeans(x, 4, np.random.default_rng(1))
    # each cluster is exactly one blob
    for cluster in range(4):
        assert len(set(y[assignment == cluster])) == 1
    picks = kmeans_select(x, 4, np.random.default_rng(1))
    assert sorted(y[picks].tolist()) == [0, 1, 2, 3]
    again = kmeans_select(x, 4, np.random.default_rng(1))
    assert picks.tolist() == again.tolist()


def test_kmeans_select_picks_the_member_nearest_each_centroid():
    x = np.array([[0.0], [1.0], [2.0], [100.0], [101.0], [105.0]])
    picks = kmeans_select(x, 2, np.random.default_rng(0))
    # clusters {0,1,2} (mean 1) and {100,101,105} (mean 102): nearest members 1 and 101
    assert sorted(picks.tolist()) == [1, 4]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_prototype_classifier_on_separable_features(metric):
    rng = np.random.default_rng(0)
    centres = [(5.0, 0.0, 0.0), (0.0, 5.0, 0.0), (0.0, 0.0, 5.0)]
    train_x, train_y = blobs(rng, centres, 3)  # 3 labels per class
    test_x, test_y = blobs(rng, centres, 30)
    protos = fit_prototypes(train_x, train_y, 3, metric=metric)
    probs = prototype_probs(test_x, protos, metric=metric, temperature=0.1 if metric == "cosine" else 1.0)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-9)
    assert (probs.argmax(1) == test_y).all()
    # a point halfway between two prototypes is uncertain between exactly those two
    mid = np.array([[2.5, 2.5, 0.0]])
    p = prototype_probs(mid, protos, metric=metric, temperature=0.1 if metric == "cosine" else 1.0)[0]
    assert p[2] < 0.05 and min(p[0], p[1]) > 0.25


def test_prototypes_give_zero_probability_to_unlabelled_classes():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    protos = fit_prototypes(x, np.array([0, 2]), 3)
    probs = prototype_probs(np.array([[1.0, 0.1]]), protos)
    assert probs[0, 1] == 0.0 and probs[0].argmax() == 0


def test_brute_force_helpers_are_consistent():
    # guard the references themselves: brute-force k-centre equals exhaustive search for b = 1
    pool = np.array([[0.0], [4.0], [7.0]])
    ex = max(itertools.combinations(range(3), 1), key=lambda s: abs(pool[s[0], 0] - 1.0))
    assert brute_force_k_center(pool, [np.array([1.0])], 1) == list(ex)
