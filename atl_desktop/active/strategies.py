"""Selection strategies: scores and/or features in, indices of the chosen pool rows out.

Every strategy is a function

    select(data: SelectionInput, batch: int, rng: numpy.random.Generator, **params) -> np.ndarray

returning indices into the unlabelled pool rows of `data`, most wanted first.
`STRATEGIES` maps a name to the function, to what it needs from the scoring
pass and to its `explain` (the reason shown on a tile, see `reasons`); the CLI,
the GUI and the benchmarks all read it, so a new strategy is one function plus
one line there.

Diversity steps never build an N x N matrix: k-centre keeps one "distance to
the nearest centre" per pool point, MMD reduction keeps two kernel sums per
pool point, and both update them with one kernel/distance row per choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from atl_desktop.active import reasons
from atl_desktop.active.coldstart import as_float, kmeans, kmeans_select, row_chunks, sq_norms
from atl_desktop.active.scores import EPS, PROB_SCORES, bald, entropy_of


@dataclass(frozen=True)
class SelectionInput:
    """What the scoring pass knows about the pool, as arrays (memmaps are fine).

    probs:             (N, C) softmax of the unlabelled target pool
    features:          (N, D) bottleneck features of the same rows
    labelled_features: (M, D) labelled target images
    source_features:   (S, D) source-domain images (MMD counts them as labelled)
    augmented_probs:   (N, m, C) predictions over m augmented patches (AIFT)
    mc_probs:          (N, T, C) predictions over T MC-dropout samples (BALD)
    generative:        gansampling.GanContext: the GAN, the classifier and, for ASAL,
                       the pool in a GAN feature space (GAAL, ASAL)
    """

    probs: np.ndarray | None = None
    features: np.ndarray | None = None
    labelled_features: np.ndarray | None = None
    source_features: np.ndarray | None = None
    augmented_probs: np.ndarray | None = None
    mc_probs: np.ndarray | None = None
    generative: Any = None

    def __len__(self) -> int:
        for a in (self.probs, self.features, self.augmented_probs, self.mc_probs):
            if a is not None:
                return len(a)
        raise ValueError("SelectionInput holds no pool arrays")

    def require(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"this strategy needs {', '.join(missing)} from the scoring pass")


def top_b(scores: np.ndarray, b: int) -> np.ndarray:
    """Indices of the b highest scores, highest first; ties broken by lower index."""
    scores = np.asarray(scores)
    b = min(b, len(scores))
    if b <= 0:
        return np.empty(0, dtype=np.int64)
    return np.lexsort((np.arange(len(scores)), -scores))[:b].astype(np.int64)


def class_quota(num_classes: int, b: int) -> int:
    return math.ceil(b / max(1, num_classes))


def top_b_balanced(scores: np.ndarray, b: int, classes: np.ndarray, quota: int) -> np.ndarray:
    """Highest scores first, at most `quota` per predicted class; relaxed if the pool runs short."""
    order = top_b(scores, len(scores))
    taken = np.zeros(int(classes.max()) + 1 if len(classes) else 0, dtype=np.int64)
    chosen, skipped = [], []
    for i in order:
        if len(chosen) == b:
            break
        c = classes[i]
        if taken[c] < quota:
            taken[c] += 1
            chosen.append(int(i))
        else:
            skipped.append(int(i))
    chosen += skipped[: b - len(chosen)]
    return np.asarray(chosen, dtype=np.int64)


# ---- k-centre (core-set) -----------------------------------------------------


def _sq_dists_to(x: np.ndarray, x_norms: np.ndarray, point: np.ndarray) -> np.ndarray:
    d = x @ point
    d *= -2.0
    d += x_norms
    d += point @ point
    return np.maximum(d, 0.0, out=d)


def min_sq_dists(x: np.ndarray, x_norms: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distance from every row of x to its nearest centre, in row chunks (no N x M)."""
    out = np.empty(len(x), dtype=x.dtype)
    c_norms = sq_norms(centres)
    for rows in row_chunks(len(x), len(centres)):
        d = x[rows] @ centres.T
        d *= -2.0
        d += c_norms[None, :]
        out[rows] = np.maximum(d.min(axis=1) + x_norms[rows], 0.0)
    return out


class _Quota:
    """Optional per-class cap on picks (class balance); relaxed when nothing else is left."""

    def __init__(self, classes: np.ndarray | None, quota: int | None):
        self.classes = classes
        self.quota = quota
        self.blocked = None
        if classes is not None and quota is not None:
            self.taken = np.zeros(int(classes.max()) + 1, dtype=np.int64)
            self.blocked = np.zeros(len(classes), dtype=bool)

    def take(self, i: int) -> None:
        if self.blocked is None:
            return
        c = self.classes[i]
        self.taken[c] += 1
        if self.taken[c] >= self.quota:
            self.blocked |= self.classes == c

    def allowed(self, chosen: np.ndarray) -> np.ndarray:
        if self.blocked is not None:
            free = ~(chosen | self.blocked)
            if free.any():
                return free
        return ~chosen


def lazy_argmax(
    bound: np.ndarray,
    allowed: np.ndarray,
    exact: Callable[[np.ndarray], np.ndarray],
    first: int = 32,
) -> int:
    """The allowed row with the largest true value, given bound >= true value everywhere.

    `exact(rows)` (rows ascending) returns the true values of those rows. Rows are
    evaluated in order of their bound, a growing block at a time, until the best
    true value beats every bound outside the block (ties go to the lowest row).
    """
    rows = np.flatnonzero(allowed)
    b = bound[rows]
    k = first
    while True:
        if k >= len(rows):
            values = exact(rows)
            return int(rows[int(np.argmax(values))])
        part = np.argpartition(-b, k)
        block = np.sort(rows[part[:k]])
        values = exact(block)
        j = int(np.argmax(values))
        if values[j] > b[part[k]]:  # strictly: an outside row could otherwise tie
            return int(block[j])
        k = k * 4 if k * 16 < len(rows) else len(rows)


def k_center_greedy(
    features: np.ndarray,
    b: int,
    labelled: np.ndarray | None = None,
    *,
    classes: np.ndarray | None = None,
    max_per_class: int | None = None,
) -> np.ndarray:
    """Greedy k-centre (Sener & Savarese 2018): repeatedly take the pool point farthest
    from every centre so far, the centres starting as the labelled points.

    Each point keeps its squared distance to the nearest centre it has been compared
    with; that only shrinks as centres are added, so it bounds the true distance from
    above and `lazy_argmax` compares only the leading points with the newest centres.
    Same picks as the textbook O(N * b) loop; O(N) memory. With no labelled points
    the first centre is the pool point nearest the feature mean.
    """
    x = as_float(features)
    n = len(x)
    b = min(b, n)
    norms = sq_norms(x)
    chosen = np.zeros(n, dtype=bool)
    quota = _Quota(classes, max_per_class)
    picks: list[int] = []
    seen = np.zeros(n, dtype=np.int64)  # centres (picks) each point has been compared with
    if labelled is not None and len(labelled):
        min_d = min_sq_dists(x, norms, np.asarray(labelled, dtype=x.dtype))
    elif b:
        first = int(np.argmin(np.where(quota.allowed(chosen), _sq_dists_to(x, norms, x.mean(axis=0)), np.inf)))
        picks.append(first)
        chosen[first] = True
        quota.take(first)
        min_d = _sq_dists_to(x, norms, x[first])
        seen[:] = 1

    def exact(rows: np.ndarray) -> np.ndarray:
        lo = int(seen[rows].min())
        if lo < len(picks):  # comparing again with an old centre is harmless: min is idempotent
            centres = x[picks[lo:]]
            c_norms = sq_norms(centres)
            for chunk in row_chunks(len(rows), max(len(centres), x.shape[1])):
                r = rows[chunk]
                d = norms[r, None] - 2.0 * (x[r] @ centres.T) + c_norms[None, :]
                min_d[r] = np.minimum(min_d[r], np.maximum(d.min(axis=1), 0.0))
            seen[rows] = len(picks)
        return min_d[rows]

    while len(picks) < b:
        i = lazy_argmax(min_d, quota.allowed(chosen), exact)
        picks.append(i)
        chosen[i] = True
        quota.take(i)
    return np.asarray(picks, dtype=np.int64)


# ---- MMD reduction -------------------------------------------------------------


def median_bandwidth(x: np.ndarray, rng: np.random.Generator, sample: int = 1000) -> float:
    """Median pairwise Euclidean distance over a random sample of rows (the median heuristic)."""
    idx = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    s = np.asarray(x[np.sort(idx)], dtype=np.float64)
    n = sq_norms(s)
    d = n[:, None] - 2.0 * (s @ s.T) + n[None, :]
    upper = d[np.triu_indices(len(s), k=1)]
    med = math.sqrt(max(float(np.median(upper)), 0.0)) if len(upper) else 1.0
    return med if med > 0 else 1.0


def kernel_sums(x: np.ndarray, others: np.ndarray, gamma: float) -> np.ndarray:
    """sum_j k(x_i, others_j) for every row of x, in chunks (no N x M matrix)."""
    out = np.empty(len(x), dtype=np.float64)
    x_norms, o_norms = sq_norms(x), sq_norms(others)
    for rows in row_chunks(len(x), len(others)):
        d = x[rows] @ others.T
        d *= -2.0
        d += x_norms[rows, None]
        d += o_norms[None, :]
        np.maximum(d, 0.0, out=d)
        d *= -gamma
        out[rows] = np.exp(d, out=d).sum(axis=1)
    return out


def _sampled_sums(x: np.ndarray, others: np.ndarray, gamma: float, limit: int | None,
                  rng: np.random.Generator) -> np.ndarray:
    """Kernel sums to `others`; above `limit` rows, an unbiased estimate from a uniform sample."""
    if limit is None or len(others) <= limit:
        return kernel_sums(x, others, gamma)
    idx = np.sort(rng.choice(len(others), size=limit, replace=False))
    return kernel_sums(x, np.asarray(others[idx], dtype=x.dtype), gamma) * (len(others) / limit)


@dataclass(frozen=True)
class MMDTrace:
    """Chosen pool indices and MMD^2 (biased V-statistic) after each choice."""

    chosen: np.ndarray
    mmd2: np.ndarray
    bandwidth: float


def mmd_reduction_greedy(
    pool: np.ndarray,
    labelled: np.ndarray | None,
    b: int,
    rng: np.random.Generator,
    *,
    bandwidth: float | None = None,
    kernel_sample: int | None = 512,
    classes: np.ndarray | None = None,
    max_per_class: int | None = None,
) -> MMDTrace:
    """Greedily move the b pool points whose move into the labelled set most reduces
    MMD^2(labelled, remaining pool), Gaussian kernel k = exp(-||x-y||^2 / (2 sigma^2)).

    Per pool point i we keep a_i = sum_{j in L} k(i, j) and u_i = sum_{j in U} k(i, j)
    (U includes i itself, k(i, i) = 1), and the totals S_LL, S_UU, S_LU. Moving x
    from U to L changes them to
        S_LL' = S_LL + 2 a_x + 1
        S_UU' = S_UU - 2 u_x + 1
        S_LU' = S_LU - a_x + (u_x - 1)
    and MMD^2' = S_LL'/|L'|^2 + S_UU'/|U'|^2 - 2 S_LU'/(|L'||U'|), so all candidates are
    scored in O(N); after the move one kernel row updates a += k(., x), u -= k(., x):
    O(N * D) per choice, never an N x N matrix. (Unlike k-centre, lazy evaluation
    does not pay here: a broad kernel moves every candidate's value at each step.)

    The initial sums over a set with more than `kernel_sample` points are estimated
    from a uniform sample of that many points (scaled; unbiased), which keeps the
    start O(N * kernel_sample); pass None for exact sums (O(N^2) time, still O(N) memory).
    """
    x = as_float(pool)
    n = len(x)
    lab = np.empty((0, x.shape[1]), x.dtype) if labelled is None else np.asarray(labelled, x.dtype)
    b = min(b, n)
    sigma = bandwidth or median_bandwidth(np.concatenate([x[: min(n, 2000)], lab[:2000]]), rng)
    gamma = 1.0 / (2.0 * sigma * sigma)
    a = _sampled_sums(x, lab, gamma, kernel_sample, rng) if len(lab) else np.zeros(n)
    u = _sampled_sums(x, x, gamma, kernel_sample, rng)
    s_uu, s_lu = float(u.sum()), float(a.sum())
    s_ll = float(_sampled_sums(lab, lab, gamma, kernel_sample, rng).sum()) if len(lab) else 0.0
    n_l, n_u = len(lab), n
    norms = sq_norms(x)
    chosen = np.zeros(n, dtype=bool)
    quota = _Quota(classes, max_per_class)
    picks, trace = [], []
    for _ in range(b):
        nl, nu = n_l + 1, n_u - 1
        s_ll_new = s_ll + 2.0 * a + 1.0
        s_uu_new = s_uu - 2.0 * u + 1.0
        s_lu_new = s_lu - a + (u - 1.0)
        mmd2 = s_ll_new / nl**2
        if nu > 0:
            mmd2 += s_uu_new / nu**2 - 2.0 * s_lu_new / (nl * nu)
        i = int(np.argmin(np.where(quota.allowed(chosen), mmd2, np.inf)))
        picks.append(i)
        trace.append(float(mmd2[i]))
        chosen[i] = True
        quota.take(i)
        s_ll, s_uu, s_lu = float(s_ll_new[i]), float(s_uu_new[i]), float(s_lu_new[i])
        n_l, n_u = nl, nu
        row = _sq_dists_to(x, norms, x[i])
        row *= -gamma
        np.exp(row, out=row)
        a += row
        u -= row
    return MMDTrace(np.asarray(picks, dtype=np.int64), np.asarray(trace), sigma)


# ---- AIFT -------------------------------------------------------------------------


def aift_scores(
    augmented_probs: np.ndarray,
    *,
    alpha: float = 0.5,
    lambda1: float = 1.0,
    lambda2: float = 1.0,
    chunk: int = 1024,
) -> np.ndarray:
    """AIFT worthiness (Zhou et al., CVPR 2017) of each candidate; (N, m, C) -> (N,).

    The candidate's majority prediction is the argmax of its patches' mean
    probabilities; the ceil(alpha * m) patches most confident in that class are
    kept. R has lambda1 * entropy(p_j) on the diagonal and lambda2 * symmetric KL
    sum_c (p_j,c - p_l,c)(ln p_j,c - ln p_l,c) off it; the score is the sum of R.
    """
    probs = np.asarray(augmented_probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"expected (N, m, C) probabilities, got shape {probs.shape}")
    n, m, _ = probs.shape
    keep = max(1, min(m, math.ceil(alpha * m)))
    out = np.empty(n)
    for start in range(0, n, chunk):
        p = probs[start : start + chunk]
        majority = p.mean(axis=1).argmax(axis=1)
        confidence = np.take_along_axis(p, majority[:, None, None], axis=2)[:, :, 0]
        # Highest confidence first; stable so equal patches keep their order.
        kept_idx = np.argsort(-confidence, axis=1, kind="stable")[:, :keep]
        kept = np.take_along_axis(p, kept_idx[:, :, None], axis=1)
        log_kept = np.log(np.clip(kept, EPS, None))
        diag = entropy_of(kept, axis=2).sum(axis=1)
        diff = kept[:, :, None, :] - kept[:, None, :, :]
        log_diff = log_kept[:, :, None, :] - log_kept[:, None, :, :]
        off = (diff * log_diff).sum(axis=(1, 2, 3))  # diagonal terms are zero
        out[start : start + chunk] = lambda1 * diag + lambda2 * off
    return out


# ---- the strategies -----------------------------------------------------------------


def select_random(data: SelectionInput, batch: int, rng: np.random.Generator) -> np.ndarray:
    n = len(data)
    return rng.choice(n, size=min(batch, n), replace=False).astype(np.int64)


def _uncertainty(score_name: str) -> Callable[..., np.ndarray]:
    def select(data: SelectionInput, batch: int, rng: np.random.Generator,
               balance: bool = False) -> np.ndarray:
        data.require("probs")
        scores = PROB_SCORES[score_name](data.probs)
        if balance:
            probs = np.asarray(data.probs)
            return top_b_balanced(scores, batch, probs.argmax(axis=1), class_quota(probs.shape[1], batch))
        return top_b(scores, batch)

    select.__name__ = f"select_{score_name}"
    select.__doc__ = f"Top-b by {score_name} (higher = more uncertain)."
    return select


def select_bald(data: SelectionInput, batch: int, rng: np.random.Generator) -> np.ndarray:
    data.require("mc_probs")
    return top_b(bald(data.mc_probs), batch)


def select_aift(data: SelectionInput, batch: int, rng: np.random.Generator, m: int = 8,
                alpha: float = 0.5, lambda1: float = 1.0, lambda2: float = 1.0) -> np.ndarray:
    """AIFT: top-b by the sum of R; m is the number of patches the scoring pass made."""
    data.require("augmented_probs")
    if data.augmented_probs.shape[1] != m:
        raise ValueError(f"scores hold {data.augmented_probs.shape[1]} patches per image, not m={m}")
    return top_b(aift_scores(data.augmented_probs, alpha=alpha, lambda1=lambda1, lambda2=lambda2), batch)


def _labelled(data: SelectionInput, include_source: bool) -> np.ndarray | None:
    parts = [data.labelled_features]
    if include_source:
        parts.append(data.source_features)
    parts = [np.asarray(p) for p in parts if p is not None and len(p)]
    return np.concatenate(parts) if parts else None


def select_coreset(data: SelectionInput, batch: int, rng: np.random.Generator,
                   include_source: bool = False) -> np.ndarray:
    """Greedy k-centre seeded with the labelled target set (and source, if asked);
    with nothing labelled this is the cold-start k-centre."""
    data.require("features")
    return k_center_greedy(data.features, batch, _labelled(data, include_source))


def select_mmd(data: SelectionInput, batch: int, rng: np.random.Generator,
               include_source: bool = True, bandwidth: float | None = None,
               kernel_sample: int | None = 512) -> np.ndarray:
    """MMD reduction between labelled (source + labelled target) and the unlabelled pool."""
    data.require("features")
    return mmd_reduction_greedy(data.features, _labelled(data, include_source), batch, rng,
                                bandwidth=bandwidth, kernel_sample=kernel_sample).chosen


def select_hybrid(data: SelectionInput, batch: int, rng: np.random.Generator,
                  score: str = "entropy", k: int = 10, diversity: str = "kcentre",
                  balance: bool = False, include_source: bool = False) -> np.ndarray:
    """Top k*b by an uncertainty score, then k-centre or MMD among them; with `balance`,
    at most ceil(b / C) per predicted class (relaxed when the candidates run short)."""
    data.require("probs", "features")
    probs = np.asarray(data.probs)
    shortlist = np.sort(top_b(PROB_SCORES[score](probs), k * batch))
    feats = np.asarray(data.features[shortlist])
    classes = probs[shortlist].argmax(axis=1) if balance else None
    quota = class_quota(probs.shape[1], batch) if balance else None
    labelled = _labelled(data, include_source)
    if diversity == "kcentre":
        picks = k_center_greedy(feats, batch, labelled, classes=classes, max_per_class=quota)
    elif diversity == "mmd":
        picks = mmd_reduction_greedy(feats, labelled, batch, rng, classes=classes,
                                     max_per_class=quota).chosen
    else:
        raise ValueError(f"unknown diversity step {diversity!r} (kcentre or mmd)")
    return shortlist[picks]


def select_kmeans(data: SelectionInput, batch: int, rng: np.random.Generator,
                  iterations: int = 25) -> np.ndarray:
    """Cold start: k-means into b clusters, one sample per cluster."""
    data.require("features")
    return kmeans_select(data.features, batch, rng, iterations=iterations)


# ---- cold-start-aware selection in embedding space ---------------------------------------


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def sq_distance_blocks(x: np.ndarray):
    """(rows, squared distances from those rows to every row) in row chunks: never N x N at once."""
    norms = sq_norms(x)
    for rows in row_chunks(len(x), len(x)):
        yield rows, norms[rows][:, None] - 2.0 * (x[rows] @ x.T) + norms[None, :]


def knn_mean_distance(x: np.ndarray, k: int) -> np.ndarray:
    """Mean Euclidean distance of every row to its k nearest other rows (row chunks, no N x N)."""
    n = len(x)
    k = min(k, n - 1)
    out = np.zeros(n)
    if k < 1:
        return out
    for rows, d in sq_distance_blocks(x):
        d[np.arange(d.shape[0]), np.arange(rows.start, rows.stop)] = np.inf  # not itself
        nearest = np.partition(d, k - 1, axis=1)[:, :k]
        out[rows] = np.sqrt(np.maximum(nearest, 0.0)).mean(axis=1)
    return out


def typiclust(
    features: np.ndarray,
    labelled: np.ndarray | None,
    b: int,
    rng: np.random.Generator,
    *,
    knn: int = 20,
    min_cluster_size: int = 5,
    max_clusters: int = 500,
) -> np.ndarray:
    """TypiClust (Hacohen, Dekel & Weinshall, ICML 2022): typical images of uncovered clusters.

    The pool and the labelled images are clustered together by k-means into
    min(|L| + b, max_clusters) clusters. b times: among clusters larger than
    `min_cluster_size`, take the one holding the fewest labelled or chosen images
    (ties: the largest), and from it the unlabelled member of highest typicality,
    1 / (mean distance to its min(knn, size // 2) nearest members of the cluster).
    Embeddings are L2-normalised first, as the paper's self-supervised features are.
    """
    pool = _unit_rows(features)
    lab = _unit_rows(labelled) if labelled is not None and len(labelled) else np.zeros((0, pool.shape[1]))
    n = len(pool)
    b = min(b, n)
    if b <= 0:
        return np.empty(0, dtype=np.int64)
    x = np.concatenate([pool, lab])
    k = min(len(lab) + b, max_clusters, len(x))
    _, assignment = kmeans(x, k, rng)
    sizes = np.bincount(assignment, minlength=k)
    covered = np.bincount(assignment[n:], minlength=k)  # labelled images per cluster
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    eligible = sizes > min_cluster_size
    if not eligible.any():
        eligible = sizes > 0
    while len(chosen) < b:
        free = np.array([eligible[c] and bool((~taken[assignment[:n] == c]).any()) for c in range(k)])
        if not free.any():
            rest = np.flatnonzero(~taken)
            chosen.extend(int(i) for i in rng.permutation(rest)[: b - len(chosen)])
            break
        order = np.lexsort((-sizes, covered))  # fewest covered first, then the largest
        cluster = int(next(c for c in order if free[c]))
        members = np.flatnonzero(assignment == cluster)
        typicality = 1.0 / (knn_mean_distance(x[members], min(knn, len(members) // 2)) + 1e-12)
        candidates = [(t, i) for t, i in zip(typicality, members, strict=True) if i < n and not taken[i]]
        best = max(candidates, key=lambda pair: (pair[0], -pair[1]))[1]
        chosen.append(int(best))
        taken[best] = True
        covered[cluster] += 1
    return np.asarray(chosen, dtype=np.int64)


def impure_distance(x: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
    """Distance from every row to its nearest row of another pseudo-class (inf if none)."""
    out = np.full(len(x), np.inf)
    for rows, d in sq_distance_blocks(x):
        d[pseudo[rows][:, None] == pseudo[None, :]] = np.inf
        out[rows] = np.sqrt(np.maximum(d.min(axis=1), 0.0))
    return out


def probcover_radius(x: np.ndarray, num_classes: int, rng: np.random.Generator,
                     purity: float = 0.95) -> float:
    """ProbCover's ball radius: the largest delta for which at least `purity` of the balls
    B(x, delta) = {x' : ||x - x'|| < delta} hold one k-means cluster only (k = the number of
    classes). A ball is pure exactly when delta <= the distance to the nearest point of
    another cluster, so delta is that distance's (1 - purity) quantile, found exactly
    (the paper searches a grid)."""
    k = max(2, min(num_classes, len(x)))
    _, pseudo = kmeans(x, k, rng)
    d = np.sort(impure_distance(x, pseudo))
    allowed_impure = int(math.floor((1.0 - purity) * len(d) + 1e-9))
    return float(d[min(allowed_impure, len(d) - 1)])


def ball_edges(x: np.ndarray, delta: float) -> list[np.ndarray]:
    """For every row, the rows inside its open ball of radius delta (itself included)."""
    edges: list[np.ndarray] = []
    for rows, d in sq_distance_blocks(x):
        inside = d < delta * delta
        inside[np.arange(d.shape[0]), np.arange(rows.start, rows.stop)] = True
        edges.extend(np.flatnonzero(row).astype(np.int64) for row in inside)
    return edges


def probcover(
    features: np.ndarray,
    labelled: np.ndarray | None,
    b: int,
    rng: np.random.Generator,
    *,
    delta: float | None = None,
    num_classes: int = 10,
    purity: float = 0.95,
) -> np.ndarray:
    """ProbCover (Yehuda et al., NeurIPS 2022): greedy max coverage of the delta-ball graph.

    Points covered by a labelled image's ball are removed first; then b times the
    unlabelled point whose ball holds the most uncovered points is taken and
    everything in its ball marked covered. Once nothing is left to cover, the rest
    is drawn at random, as in the paper. Embeddings are L2-normalised; delta
    defaults to `probcover_radius` over the pool and the labelled images.
    """
    pool = _unit_rows(features)
    lab = _unit_rows(labelled) if labelled is not None and len(labelled) else np.zeros((0, pool.shape[1]))
    n = len(pool)
    b = min(b, n)
    if b <= 0:
        return np.empty(0, dtype=np.int64)
    x = np.concatenate([pool, lab])
    if delta is None:
        delta = probcover_radius(x, num_classes, rng, purity)
    edges = ball_edges(x, delta)
    covered = np.zeros(len(x), dtype=bool)
    for i in range(n, len(x)):
        covered[edges[i]] = True
    degree = np.array([int((~covered[e]).sum()) for e in edges[:n]])
    taken = np.zeros(n, dtype=bool)
    chosen: list[int] = []
    while len(chosen) < b:
        degree[taken] = -1
        best = int(np.argmax(degree))  # ties: the lowest row
        if degree[best] <= 0:
            rest = np.flatnonzero(~taken)
            chosen.extend(int(i) for i in rng.permutation(rest)[: b - len(chosen)])
            break
        chosen.append(best)
        taken[best] = True
        newly = edges[best][~covered[edges[best]]]
        covered[newly] = True
        # Only points whose ball reaches a newly covered point lose degree; balls are symmetric.
        for j in newly:
            for i in edges[j]:
                if i < n and not taken[i]:
                    degree[i] -= 1
    return np.asarray(chosen, dtype=np.int64)


def select_typiclust(data: SelectionInput, batch: int, rng: np.random.Generator, knn: int = 20,
                     min_cluster_size: int = 5, max_clusters: int = 500) -> np.ndarray:
    """TypiClust on the pool's embeddings, the labelled images counting as covered."""
    data.require("features")
    return typiclust(data.features, data.labelled_features, batch, rng, knn=knn,
                     min_cluster_size=min_cluster_size, max_clusters=max_clusters)


def select_probcover(data: SelectionInput, batch: int, rng: np.random.Generator,
                     delta: float | None = None, purity: float = 0.95,
                     num_classes: int | None = None) -> np.ndarray:
    """ProbCover on the pool's embeddings; delta from `purity` unless given."""
    data.require("features")
    if num_classes is None:
        num_classes = data.probs.shape[1] if data.probs is not None and data.probs.shape[1] > 1 else 10
    return probcover(data.features, data.labelled_features, batch, rng, delta=delta,
                     num_classes=num_classes, purity=purity)


def auto_phase(labelled: int, num_classes: int, typical_per_class: float) -> str:
    """"typical" while fewer than `typical_per_class` labels per class exist, then "uncertain"."""
    return "typical" if labelled < typical_per_class * max(1, num_classes) else "uncertain"


def select_auto(data: SelectionInput, batch: int, rng: np.random.Generator,
                typical_per_class: float = 5.0, k: int = 10) -> np.ndarray:
    """Typical images first, uncertain and diverse ones once labels have grown.

    The low-budget regime (Hacohen et al. 2022: below a few labels per class,
    representative beats uncertain) takes TypiClust; after that, the k*b images
    of smallest margin are shortlisted and thinned by k-centre, so a batch is not
    b near-copies of one ambiguous image (uncertainty with diversity, as in
    Citovsky et al. 2021's cluster-margin). Without a model's probabilities the
    first phase is kept.
    """
    data.require("features")
    n_labelled = 0 if data.labelled_features is None else len(data.labelled_features)
    has_model = data.probs is not None and data.probs.shape[1] > 1
    num_classes = data.probs.shape[1] if has_model else 1
    if not has_model or auto_phase(n_labelled, num_classes, typical_per_class) == "typical":
        return select_typiclust(data, batch, rng)
    return select_hybrid(data, batch, rng, score="margin", k=k, diversity="kcentre")


def select_gaal(data: SelectionInput, batch: int, rng: np.random.Generator, **params):
    """GAAL: new images that maximise the classifier's entropy (a gansampling.SyntheticBatch)."""
    from atl_desktop.active.gansampling import gaal_synthesise

    data.require("generative")
    return gaal_synthesise(data.generative, batch, rng, **params)


def select_asal(data: SelectionInput, batch: int, rng: np.random.Generator, **params) -> np.ndarray:
    """ASAL: the unlabelled pool images nearest to high-entropy synthetic images."""
    from atl_desktop.active.gansampling import asal_matches

    data.require("generative")
    return asal_matches(data.generative, batch, rng, **params).rows


@dataclass(frozen=True)
class Strategy:
    select: Callable[..., np.ndarray]
    needs: frozenset[str]  # SelectionInput fields the scoring pass must fill
    help: str
    synthetic: bool = False  # True: `select` makes new images (see `synthesise`), not pool rows
    explain: reasons.Explain = reasons.RANDOM  # (data, picks, params) -> (values, sentences)


def _s(select: Callable[..., np.ndarray], needs: str, help: str, synthetic: bool = False,
       explain: reasons.Explain = reasons.RANDOM) -> Strategy:
    return Strategy(select, frozenset(needs.split()), help, synthetic, explain)


def _explain_bald(data: SelectionInput, picks: np.ndarray, params) -> reasons.Explanation:
    if data.mc_probs is None:
        return reasons.RANDOM(data, picks, params)
    scores = bald(np.asarray(data.mc_probs))
    return reasons.ranked(scores, picks, lambda v: f"dropout samples disagree (BALD {v:.2f})")


def _explain_aift(data: SelectionInput, picks: np.ndarray, params) -> reasons.Explanation:
    if data.augmented_probs is None:
        return reasons.RANDOM(data, picks, params)
    options = {k: params[k] for k in ("alpha", "lambda1", "lambda2") if k in params}
    scores = aift_scores(np.asarray(data.augmented_probs), **options)
    return reasons.ranked(scores, picks, lambda v: f"predictions disagree across augmented copies (AIFT {v:.2f})")


def _explain_auto(data: SelectionInput, picks: np.ndarray, params) -> reasons.Explanation:
    """The phase select_auto was in: typical images, or margin with diversity."""
    labelled = 0 if data.labelled_features is None else len(data.labelled_features)
    classes = data.probs.shape[1] if data.probs is not None else 1
    if data.probs is None or classes < 2 or auto_phase(
            labelled, classes, float(params.get("typical_per_class", 5.0))) == "typical":
        return _TYPICAL(data, picks, {})
    return _UNCERTAIN_DIVERSE(data, picks, {"score": "margin"})


_TYPICAL = reasons.fixed("typical of a cluster that has no label yet (TypiClust)")
_UNCERTAIN_DIVERSE = reasons.uncertainty(diverse=True)


STRATEGIES: dict[str, Strategy] = {
    "random": _s(select_random, "", "uniformly at random"),
    "least_confidence": _s(_uncertainty("least_confidence"), "probs", "top-b by 1 - max p",
                           explain=reasons.uncertainty("least_confidence")),
    "margin": _s(_uncertainty("margin"), "probs", "top-b by smallest gap between the two best classes",
                 explain=reasons.uncertainty("margin")),
    "entropy": _s(_uncertainty("entropy"), "probs", "top-b by predictive entropy",
                  explain=reasons.uncertainty("entropy")),
    "bald": _s(select_bald, "mc_probs", "top-b by BALD over MC-dropout samples", explain=_explain_bald),
    "aift": _s(select_aift, "augmented_probs", "AIFT: entropy + diversity over augmented patches",
               explain=_explain_aift),
    "coreset": _s(select_coreset, "features labelled_features", "greedy k-centre on features",
                  explain=reasons.far_from_labelled("coreset")),
    "mmd": _s(select_mmd, "features labelled_features source_features", "greedy MMD reduction",
              explain=reasons.fixed("brings the labelled set closer to the unlabelled pool (MMD reduction)")),
    "hybrid": _s(select_hybrid, "probs features labelled_features", "uncertainty shortlist, then diversity",
                 explain=_UNCERTAIN_DIVERSE),
    "kmeans": _s(select_kmeans, "features", "cold start: one sample per k-means cluster",
                 explain=reasons.far_from_labelled("kmeans")),
    "typiclust": _s(select_typiclust, "features labelled_features",
                    "TypiClust: the most typical image of each uncovered cluster (cold start)", explain=_TYPICAL),
    "probcover": _s(select_probcover, "features labelled_features",
                    "ProbCover: greedy coverage of the embedding space by pure balls (cold start)",
                    explain=reasons.fixed("covers the most unlabelled images nearby (ProbCover)")),
    "auto": _s(select_auto, "probs features labelled_features",
               "typical first (TypiClust), then smallest margin with diversity", explain=_explain_auto),
    "gaal": _s(select_gaal, "generative", "GAAL: GAN-made images of maximal entropy, labelled as they are",
               synthetic=True),
    "asal": _s(select_asal, "generative", "ASAL: pool images nearest to GAN-made high-entropy images"),
}


def explain(name: str, data: SelectionInput, picks: np.ndarray, params) -> reasons.Explanation:
    """Why strategy `name` chose `picks` (rows of `data`): one value and one sentence each."""
    return STRATEGIES[name].explain(data, np.asarray(picks, dtype=np.int64), params)


def select(name: str, data: SelectionInput, batch: int, rng: np.random.Generator, **params) -> np.ndarray:
    """Run the registered strategy `name`."""
    try:
        strategy = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    if strategy.synthetic:
        raise ValueError(f"{name} makes new images instead of choosing pool rows; use synthesise()")
    return np.asarray(strategy.select(data, batch, rng, **params), dtype=np.int64)


def synthesise(name: str, data: SelectionInput, batch: int, rng: np.random.Generator, **params):
    """Run the registered synthetic strategy `name` (GAAL): a gansampling.SyntheticBatch."""
    strategy = STRATEGIES.get(name)
    if strategy is None or not strategy.synthetic:
        raise ValueError(f"{name!r} is not a strategy that makes new images")
    return strategy.select(data, batch, rng, **params)
