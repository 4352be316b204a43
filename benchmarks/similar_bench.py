""""More like this": query time against pool size, and finding a rare class on pbc_dev (benchmark).

1. Time of one query (k = 24, as the window asks) over 10,000 and 100,000 pool images of 512
   float32 dimensions read from a memory-mapped .npy file (as the embedding cache is), 10 % of
   them labelled and excluded; median and p95 of 30 queries after one warm-up.
2. On pbc_dev's train pool (the split and the SimCLR embeddings of benchmarks/al_pbc.py, which
   must have run first): starting from one basophil, how many basophils are among the first 50
   images "more like this" shows, against the first 50 a strategy alone shows with nothing
   labelled (TypiClust, the cold start; random). 20 starting basophils, drawn once.

Usage: python benchmarks/similar_bench.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from al_pbc import RUNS, SIZE, SPLIT_SEED, load_pbc, stratified_mask
from benchcommon import machine, write_json

from atl_desktop.active.similar import SimilarIndex
from atl_desktop.active.strategies import typiclust

K = 24
SHOWN = 50


def query_times(n: int, dim: int = 512, queries: int = 30) -> dict:
    rng = np.random.default_rng(n)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.npy"
        centres = rng.normal(size=(64, dim)).astype(np.float32)
        x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
        for start in range(0, n, 10000):  # clustered, as embeddings are
            rows = min(10000, n - start)
            x[start:start + rows] = centres[rng.integers(0, 64, rows)] + rng.normal(size=(rows, dim))
        x.flush()
        del x
        features = np.load(path, mmap_mode="r")
        allowed = rng.random(n) >= 0.1
        index = SimilarIndex(features)
        index.search(np.asarray(features[0]), K, allowed)  # warm-up: the file into the page cache
        times = []
        for q in rng.choice(n, queries, replace=False):
            started = time.perf_counter()
            index.search(np.asarray(features[q]), K, allowed)
            times.append(1000 * (time.perf_counter() - started))
        del index, features
    return {"pool": n, "dim": dim, "method": "exact", "median_ms": float(np.median(times)),
            "p95_ms": float(np.percentile(times, 95)), "queries": queries}


def basophils(embeddings_file: Path) -> dict:
    with np.load(embeddings_file, allow_pickle=False) as f:
        e = f["e"]
    x, y, classes = load_pbc(SIZE)
    pool = np.flatnonzero(~stratified_mask(y, 0.3, SPLIT_SEED))
    target = classes.index("basophil")
    y_pool, e_pool = y[pool], e[pool]
    rng = np.random.default_rng(0)
    starts = rng.choice(np.flatnonzero(y_pool == target), 20, replace=False)
    index = SimilarIndex(e_pool)
    found = []
    for s in starts:
        allowed = np.ones(len(pool), dtype=bool)
        allowed[s] = False
        rows, _ = index.search(e_pool[s], SHOWN, allowed)
        found.append(int((y_pool[rows] == target).sum()))
    typical = typiclust(e_pool, None, SHOWN, np.random.default_rng(0))
    random_hits = [int((y_pool[np.random.default_rng(seed).choice(len(pool), SHOWN, replace=False)]
                        == target).sum()) for seed in range(20)]
    return {"pool": int(len(pool)), "basophils_in_pool": int((y_pool == target).sum()), "shown": SHOWN,
            "starts": len(starts), "more_like_this": {"mean": float(np.mean(found)), "std": float(np.std(found)),
                                                       "min": int(np.min(found)), "max": int(np.max(found))},
            "typiclust_cold_start": int((y_pool[typical] == target).sum()),
            "random": {"mean": float(np.mean(random_hits)), "std": float(np.std(random_hits))}}


def main() -> int:
    result = {"benchmark": "similar", "machine": machine(), "k": K,
              "query_time": [query_times(10_000), query_times(100_000)]}
    files = sorted(RUNS.glob("embeddings-*.npz"))
    if files:
        result["pbc_basophils"] = {"embeddings": files[0].name, **basophils(files[0])}
    print(json.dumps(result, indent=1))
    print(write_json("similar.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
