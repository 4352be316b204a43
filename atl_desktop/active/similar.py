""""More like this": the nearest pool images to one image, in the encoder's embedding space.

A rare class (a few basophils among thousands of cells) is found faster by
asking for images like one example than by waiting for a strategy to reach
them. Similarity is cosine, as for the self-supervised embeddings the loop
uses. Up to EXACT_LIMIT candidates the search is exact: the pool's rows are
streamed in blocks (a memory-mapped cache is never loaded whole) and a running
top-k is kept. Above it, the pool's unit-length embeddings go into the E2LSH
index of `active.lsh` (built once per pool, then reused), whose Euclidean
ranking of unit vectors is the cosine ranking.
"""

from __future__ import annotations

import numpy as np

EXACT_LIMIT = 100_000
BLOCK_ROWS = 32768


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_top_k(features: np.ndarray, query: np.ndarray, k: int,
                 allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosine similarities) of the k allowed rows most similar to `query`, best first
    (ties: the lower row). Streams `features` in blocks; O(N * D) time, O(k + block) memory."""
    q = unit(query).astype(np.float64)
    best_rows = np.empty(0, dtype=np.int64)
    best_sims = np.empty(0)
    for start in range(0, len(features), BLOCK_ROWS):
        block = np.asarray(features[start:start + BLOCK_ROWS], dtype=np.float64)
        sims = (block @ q) / np.maximum(np.linalg.norm(block, axis=1), 1e-12)
        rows = np.arange(start, start + len(block))
        if allowed is not None:
            keep = np.asarray(allowed[start:start + len(block)], dtype=bool)
            sims, rows = sims[keep], rows[keep]
        sims = np.concatenate([best_sims, sims])
        rows = np.concatenate([best_rows, rows])
        if len(sims) > k:
            part = np.argpartition(-sims, k - 1)[:k]
            sims, rows = sims[part], rows[part]
        best_sims, best_rows = sims, rows
    order = np.lexsort((best_rows, -best_sims))
    return best_rows[order], best_sims[order]


class SimilarIndex:
    """Search one pool's embeddings: exact up to EXACT_LIMIT rows, E2LSH above."""

    def __init__(self, features: np.ndarray, *, exact_limit: int = EXACT_LIMIT, seed: int = 0):
        self.features = features
        self.lsh = None
        if len(features) > exact_limit:
            from atl_desktop.active.lsh import LshConfig, LshIndex

            self.lsh = LshIndex.build(unit(features), LshConfig(seed=seed))

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        if self.lsh is None:
            return cosine_top_k(self.features, query, k, allowed)
        found = self.lsh.search(unit(query)[None, :], k, allowed)
        rows = found.indices[0][found.indices[0] >= 0]
        # |a - b|^2 = 2 - 2 cos for unit vectors
        return rows, 1.0 - found.distances[0][: len(rows)] ** 2 / 2.0
