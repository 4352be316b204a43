"""Starting without labels (k-means, one sample per cluster) and with very few (prototypes).

- `kmeans`: Lloyd's algorithm with k-means++ seeding, driven by an explicit
  `numpy.random.Generator`; distances computed in row chunks so memory is
  O(N + k) beyond the features.
- `kmeans_select`: cluster the pool into b clusters and take the member nearest
  each centroid (largest clusters first).
- `fit_prototypes` / `prototype_probs`: a nearest-class-mean classifier on
  backbone features (prototypical classification), usable with 1-5 labels per
  class to predict and score the pool before any fine-tuning.
"""

from __future__ import annotations

import numpy as np

CHUNK_ELEMENTS = 1 << 22  # elements of one chunked distance block (16 MiB of float32)


def as_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def row_chunks(n_rows: int, n_cols: int):
    """Slices of rows such that a (rows, n_cols) block holds about CHUNK_ELEMENTS."""
    step = max(1, CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def nearest_centre(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centre, squared distance to it) for every row of x, chunked."""
    c_norms = sq_norms(centres)
    index = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=x.dtype)
    for rows in row_chunks(len(x), len(centres)):
        block = x[rows]
        d = sq_norms(block)[:, None] - 2.0 * (block @ centres.T) + c_norms[None, :]
        index[rows] = d.argmin(axis=1)
        dist[rows] = np.maximum(d[np.arange(len(d)), index[rows]], 0.0)
    return index, dist


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of k seeds (Arthur & Vassilvitskii 2007): each next seed drawn with
    probability proportional to its squared distance to the nearest seed so far."""
    norms = sq_norms(x)
    seeds = [int(rng.integers(len(x)))]
    min_d = np.maximum(norms - 2.0 * (x @ x[seeds[0]]) + norms[seeds[0]], 0.0)
    for _ in range(1, k):
        total = float(min_d.sum())
        if total <= 0.0:  # fewer distinct points than k: take any unchosen one
            rest = np.setdiff1d(np.arange(len(x)), seeds)
            seeds.append(int(rng.choice(rest)))
        else:
            seeds.append(int(rng.choice(len(x), p=min_d / total)))
        d = np.maximum(norms - 2.0 * (x @ x[seeds[-1]]) + norms[seeds[-1]], 0.0)
        np.minimum(min_d, d, out=min_d)
    return np.asarray(seeds, dtype=np.int64)


def kmeans(
    features: np.ndarray, k: int, rng: np.random.Generator, *, iterations: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means; returns (centres (k, D), assignment (N,)).

    An empty cluster is re-seeded at the point farthest from its centre, so all
    k clusters stay non-empty when there are at least k distinct points.
    """
    x = as_float(features)
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be in 1..{len(x)}, got {k}")
    centres = x[kmeans_plus_plus(x, k, rng)].copy()
    assignment = np.full(len(x), -1, dtype=np.int64)
    for _ in range(iterations):
        new_assignment, dist = nearest_centre(x, centres)
        counts = np.bincount(new_assignment, minlength=k)
        for empty in np.flatnonzero(counts == 0):
            far = int(dist.argmax())
            new_assignment[far], dist[far] = empty, 0.0
        if np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        counts = np.bincount(assignment, minlength=k).astype(x.dtype)
        sums = np.zeros_like(centres)
        np.add.at(sums, assignment, x)
        centres = sums / counts[:, None]
    return centres, assignment


def kmeans_select(
    features: np.ndarray, b: int, rng: np.random.Generator, *, iterations: int = 25
) -> np.ndarray:
    """Cluster into b clusters; one sample per cluster, the member nearest its centroid.

    Ordered by cluster size, largest first (the most representative first).
    """
    x = as_float(features)
    b = min(b, len(x))
    if b <= 0:
        return np.empty(0, dtype=np.int64)
    centres, assignment = kmeans(x, b, rng, iterations=iterations)
    dist = sq_norms(x - centres[assignment])
    chosen = []
    sizes = np.bincount(assignment, minlength=b)
    for cluster in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(assignment == cluster)
        if len(members):
            chosen.append(int(members[dist[members].argmin()]))
    return np.asarray(chosen, dtype=np.int64)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_prototypes(
    features: np.ndarray, labels: np.ndarray, num_classes: int, *, metric: str = "cosine"
) -> np.ndarray:
    """Class means (C, D) of labelled features; NaN rows for classes without labels.

    With metric "cosine", features are L2-normalised before averaging.
    """
    x = as_float(features)
    if metric == "cosine":
        x = _normalise(x)
    elif metric != "euclidean":
        raise ValueError(f"unknown metric {metric!r}")
    labels = np.asarray(labels, dtype=np.int64)
    prototypes = np.full((num_classes, x.shape[1]), np.nan, dtype=x.dtype)
    for c in range(num_classes):
        members = labels == c
        if members.any():
            prototypes[c] = x[members].mean(axis=0)
    return prototypes


def prototype_probs(
    features: np.ndarray,
    prototypes: np.ndarray,
    *,
    metric: str = "cosine",
    temperature: float = 0.1,
) -> np.ndarray:
    """Softmax over classes of similarity to each prototype; (N, C).

    cosine: logits = cos(f, mu_c) / temperature; euclidean: logits = -||f - mu_c||^2 / temperature.
    Classes without a prototype get probability 0.
    """
    x = as_float(features)
    known = ~np.isnan(prototypes).any(axis=1)
    if not known.any():
        raise ValueError("no class has a labelled example")
    protos = prototypes[known]
    if metric == "cosine":
        logits = _normalise(x) @ _normalise(protos).T / temperature
    elif metric == "euclidean":
        d = sq_norms(x)[:, None] - 2.0 * (x @ protos.T) + sq_norms(protos)[None, :]
        logits = -np.maximum(d, 0.0) / temperature
    else:
        raise ValueError(f"unknown metric {metric!r}")
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    probs = np.zeros((len(x), len(prototypes)), dtype=np.float64)
    probs[:, known] = e / e.sum(axis=1, keepdims=True)
    return probs
