"""Nearest-neighbour search for ASAL: exact search (the reference) and random-projection LSH.

`LshIndex` is E2LSH (Datar, Immorlica, Indyk & Mirrokni, SoCG 2004). Each of L
tables hashes a point x with K functions h(x) = floor((a . x + b) / w), a drawn
from N(0, I) and b from U[0, w); near points agree on all K values far more
often than distant ones. A query's candidates are the points sharing its
bucket in at least one table; they are ranked by their exact distance. With K
chosen so that about `bucket` unrelated points share a bucket, a query looks at
O(L * bucket) points instead of all N (plus a binary search per table), which
is what makes ASAL's query time grow sub-linearly with the pool.

When the buckets of a query hold fewer than k allowed points (every candidate
already labelled, say), that query falls back to exact search over the allowed
points; `Neighbours.fallback` reports it. Distances are Euclidean.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_ROWS = 65536  # rows of the pool per block of exact distances


@dataclass(frozen=True)
class Neighbours:
    """k nearest allowed points per query, nearest first; -1 / inf where fewer exist."""

    indices: np.ndarray  # (m, k) int64
    distances: np.ndarray  # (m, k) float64
    candidates: np.ndarray  # (m,) points whose distance was computed
    fallback: np.ndarray  # (m,) bool: this query was answered by exact search


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a (rows, dims) feature matrix, got shape {x.shape}")
    return x


def _top_k(d: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest of d (1-D) with their row numbers, smallest first (ties: lower row)."""
    if len(d) > k:
        part = np.argpartition(d, k - 1)[:k]
        d, rows = d[part], rows[part]
    order = np.lexsort((rows, d))
    return rows[order], d[order]


def _pad(rows: np.ndarray, d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    out_rows = np.full(k, -1, dtype=np.int64)
    out_d = np.full(k, np.inf)
    out_rows[: len(rows)], out_d[: len(d)] = rows, d
    return out_rows, out_d


class ExactIndex:
    """Brute-force search in blocks of rows: O(N * D) per query, the reference."""

    def __init__(self, features: np.ndarray):
        self.features = _as_matrix(features)
        self.norms = np.einsum("ij,ij->i", self.features, self.features, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.features)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Neighbours:
        q = _as_matrix(queries).astype(np.float64)
        m = len(q)
        best_rows = [np.empty(0, np.int64) for _ in range(m)]
        best_d = [np.empty(0) for _ in range(m)]
        q_norms = (q * q).sum(axis=1)
        for start in range(0, len(self.features), CHUNK_ROWS):
            block = np.asarray(self.features[start : start + CHUNK_ROWS], dtype=np.float64)
            d = self.norms[start : start + len(block), None] - 2.0 * (block @ q.T) + q_norms[None, :]
            rows = np.arange(start, start + len(block))
            if allowed is not None:
                keep = np.asarray(allowed[start : start + len(block)], dtype=bool)
                d, rows = d[keep], rows[keep]
            for i in range(m):
                r, di = _top_k(np.concatenate([best_d[i], d[:, i]]), np.concatenate([best_rows[i], rows]), k)
                best_rows[i], best_d[i] = r, di
        out = [_pad(r, np.sqrt(np.maximum(d, 0.0)), k) for r, d in zip(best_rows, best_d, strict=True)]
        n_allowed = len(self.features) if allowed is None else int(np.count_nonzero(allowed))
        return Neighbours(np.stack([o[0] for o in out]) if m else np.empty((0, k), np.int64),
                          np.stack([o[1] for o in out]) if m else np.empty((0, k)),
                          np.full(m, n_allowed), np.ones(m, dtype=bool))


@dataclass(frozen=True)
class LshConfig:
    tables: int = 16  # L
    bits: int | None = None  # K hash functions per table; None: from the pool size (see module doc)
    width: float | None = None  # w; None: WIDTH_FACTOR x the typical query radius (see `build`)
    bucket: int = 8  # unrelated points expected to share a query's bucket, for choosing K
    sample: int = 2000  # rows used to estimate w and the collision rate of unrelated points
    seed: int = 0


WIDTH_FACTOR = 4.0
DEFAULT_PROBES = 8  # extra buckets looked at per table and query (multi-probe)
EXAMPLE_QUERIES = 32  # at most this many example queries set the width (exact search, once)


class LshIndex:
    """E2LSH over `features` (kept by reference: a memmap works). Build with `LshIndex.build`."""

    def __init__(self, features: np.ndarray, projections: np.ndarray, offsets: np.ndarray, width: float,
                 mix: np.ndarray, sorted_keys: np.ndarray, order: np.ndarray):
        self.features = _as_matrix(features)
        self.projections = projections  # (L, D, K)
        self.offsets = offsets  # (L, K)
        self.width = float(width)
        self.mix = mix  # (L, K) int64: combines a table's K integers into one key
        self.sorted_keys = sorted_keys  # (L, N) int64
        self.order = order  # (L, N) point of each sorted key
        self._exact: ExactIndex | None = None

    def __len__(self) -> int:
        return len(self.features)

    @property
    def tables(self) -> int:
        return len(self.projections)

    @property
    def bits(self) -> int:
        return self.projections.shape[2]

    @classmethod
    def build(cls, features: np.ndarray, config: LshConfig | None = None,
              example_queries: np.ndarray | None = None) -> LshIndex:
        """Index `features`. The bucket width w is WIDTH_FACTOR times the radius at which
        queries find their nearest point (Datar et al. take w = 4r): with `example_queries`
        (a few typical queries, such as generated images' features) their median exact
        nearest-neighbour distance; else the median nearest-neighbour distance among a
        sample of the points themselves."""
        config = config or LshConfig()
        x = _as_matrix(features)
        n, dims = x.shape
        rng = np.random.default_rng(config.seed)
        sample = np.asarray(x[np.sort(rng.choice(n, size=min(n, config.sample), replace=False))], np.float64)
        if example_queries is not None and len(example_queries):
            radius = float(np.median(ExactIndex(x).search(example_queries[:EXAMPLE_QUERIES], 1).distances[:, 0]))
        else:
            radius = _median_nn_distance(sample)
        width = config.width or WIDTH_FACTOR * (radius if radius > 0 else 1.0)
        bits = config.bits or _bits_for(sample, width, n, config.bucket, rng)
        projections = rng.standard_normal((config.tables, dims, bits))
        offsets = rng.uniform(0.0, width, size=(config.tables, bits))
        mix = rng.integers(1, 2**62, size=(config.tables, bits), dtype=np.int64) | 1
        keys = np.empty((config.tables, n), dtype=np.int64)
        for start in range(0, n, CHUNK_ROWS):
            block = np.asarray(x[start : start + CHUNK_ROWS], dtype=np.float64)
            keys[:, start : start + len(block)] = _keys(block, projections, offsets, width, mix)
        order = np.argsort(keys, axis=1, kind="stable").astype(np.int64 if n >= 2**31 else np.int32)
        sorted_keys = np.take_along_axis(keys, order, axis=1)
        return cls(x, projections, offsets, width, mix, sorted_keys, order)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               probes: int = DEFAULT_PROBES) -> Neighbours:
        """k nearest allowed points of each query. Besides its own bucket, each table is probed
        in the `probes` neighbouring buckets the query lies closest to (multi-probe LSH, Lv et
        al., VLDB 2007): one hash value moved by +-1 where the query is nearest that boundary."""
        q = _as_matrix(queries).astype(np.float64)
        m = len(q)
        keys = _probe_keys(q, self.projections, self.offsets, self.width, self.mix, probes)  # (L, m, 1 + probes)
        flat = keys.reshape(self.tables, -1)
        lo = np.stack([np.searchsorted(self.sorted_keys[t], flat[t], "left") for t in range(self.tables)])
        hi = np.stack([np.searchsorted(self.sorted_keys[t], flat[t], "right") for t in range(self.tables)])
        per_query = keys.shape[2]
        lo = lo.reshape(self.tables, m, per_query)
        hi = hi.reshape(self.tables, m, per_query)
        indices = np.full((m, k), -1, dtype=np.int64)
        distances = np.full((m, k), np.inf)
        candidates = np.zeros(m, dtype=np.int64)
        fallback = np.zeros(m, dtype=bool)
        for i in range(m):
            found = [self.order[t, a:b] for t in range(self.tables)
                     for a, b in zip(lo[t, i], hi[t, i], strict=True) if b > a]
            rows = np.unique(np.concatenate(found)).astype(np.int64) if found else np.empty(0, np.int64)
            if allowed is not None and len(rows):
                rows = rows[np.asarray(allowed[rows], dtype=bool)]
            candidates[i] = len(rows)
            if len(rows) < k:
                fallback[i] = True
                exact = self._exact_index().search(q[i : i + 1], k, allowed)
                indices[i], distances[i] = exact.indices[0], exact.distances[0]
                continue
            diff = np.asarray(self.features[rows], dtype=np.float64) - q[i]
            r, d = _top_k(np.einsum("ij,ij->i", diff, diff), rows, k)
            indices[i], distances[i] = r, np.sqrt(d)
        return Neighbours(indices, distances, candidates, fallback)

    def _exact_index(self) -> ExactIndex:
        if self._exact is None:
            self._exact = ExactIndex(self.features)
        return self._exact

    # ---- on disk (no pickle: plain .npz arrays; features are stored by the caller) ----

    def save(self, path: str | os.PathLike) -> None:
        import io

        from atl_desktop.store.files import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez(buffer, projections=self.projections, offsets=self.offsets, width=np.float64(self.width),
                 mix=self.mix, sorted_keys=self.sorted_keys, order=self.order)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike, features: np.ndarray) -> LshIndex:
        with np.load(Path(path), allow_pickle=False) as f:
            parts = {name: f[name] for name in f.files}
        if parts["order"].shape[1] != len(features):
            raise ValueError(f"{Path(path).name} indexes {parts['order'].shape[1]} points, not {len(features)}")
        return cls(features, parts["projections"], parts["offsets"], float(parts["width"]), parts["mix"],
                   parts["sorted_keys"], parts["order"])


def _keys(x: np.ndarray, projections: np.ndarray, offsets: np.ndarray, width: float,
          mix: np.ndarray) -> np.ndarray:
    """(L, n) bucket keys: the K integers floor((a.x + b) / w) of each table, mixed into one int64
    (wrapping multiplication; a rare merge of two buckets only adds candidates)."""
    h = np.floor((np.einsum("nd,tdk->tnk", x, projections) + offsets[:, None, :]) / width).astype(np.int64)
    return (h * mix[:, None, :]).sum(axis=2)


def _probe_keys(x: np.ndarray, projections: np.ndarray, offsets: np.ndarray, width: float, mix: np.ndarray,
                probes: int) -> np.ndarray:
    """(L, n, 1 + probes) keys: each query's own bucket, then the buckets reached by moving the
    hash value with the nearest boundary by one step, next nearest, and so on."""
    u = (np.einsum("nd,tdk->tnk", x, projections) + offsets[:, None, :]) / width
    h = np.floor(u)
    base = (h.astype(np.int64) * mix[:, None, :]).sum(axis=2)
    if probes <= 0:
        return base[:, :, None]
    frac = u - h  # distance to the lower boundary; 1 - frac to the upper one
    gaps = np.concatenate([frac, 1.0 - frac], axis=2)  # (L, n, 2K): step -1 for the first K, +1 after
    nearest = np.argsort(gaps, axis=2, kind="stable")[:, :, :probes]
    bits = mix.shape[1]
    steps = np.where(nearest < bits, -1, 1)
    moved = np.take_along_axis(np.broadcast_to(mix[:, None, :], h.shape), nearest % bits, axis=2)
    return np.concatenate([base[:, :, None], base[:, :, None] + steps * moved], axis=2)


def _median_nn_distance(sample: np.ndarray) -> float:
    norms = (sample * sample).sum(axis=1)
    d = norms[:, None] - 2.0 * (sample @ sample.T) + norms[None, :]
    np.fill_diagonal(d, np.inf)
    nn = np.sqrt(np.maximum(d.min(axis=1), 0.0))
    med = float(np.median(nn[np.isfinite(nn)])) if len(sample) > 1 else 1.0
    return med if med > 0 else 1.0


def _bits_for(sample: np.ndarray, width: float, n: int, bucket: int, rng: np.random.Generator) -> int:
    """K such that n * p^K ~ bucket, p = the chance that one hash function puts two random
    points of the sample into the same slot (measured with 64 functions on 2000 pairs)."""
    if n <= bucket or len(sample) < 2:
        return 1
    pairs = rng.integers(0, len(sample), size=(2000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    a = rng.standard_normal((sample.shape[1], 64))
    b = rng.uniform(0.0, width, size=64)
    ha = np.floor((sample[pairs[:, 0]] @ a + b) / width)
    hb = np.floor((sample[pairs[:, 1]] @ a + b) / width)
    p = float(np.clip(np.mean(ha == hb), 1e-3, 0.999))
    return int(np.clip(math.ceil(math.log(n / bucket) / math.log(1.0 / p)), 1, 64))
