"""Label -> updated suggestions in the window's embedding-first loop (benchmark).

What `session.live_suggestions` does after each label, on pbc_dev's 5,979 real photographs
(8 classes): refit the logistic head on every label so far and predict every image. The
expert labels one image at a time, 10 to 300 labels, in a random order (3 orders); each step
is timed twice in the same run:
- "cold": the pool's standardisation recomputed and L-BFGS started from zero (before);
- "warm": the standardisation computed once a round and L-BFGS started from the last fit (now).
Embeddings: an untrained ResNet-18 at 64 px (512 dimensions, what a new offline project has
before its own encoder is learned; the fit's cost depends on the dimension and the labels,
not on how good the features are). Torch threads: 1, as the window's worker thread has.

Usage: python benchmarks/live_head_bench.py
"""

from __future__ import annotations

import sys
import time

import numpy as np
from al_pbc import SIZE, load_pbc
from benchcommon import machine, write_json

from atl_desktop.active.heads import LogisticHead, fit_scaler

ORDERS = (0, 1, 2)
FIRST, LAST = 10, 300


def embed(x: np.ndarray) -> np.ndarray:
    """The simulations' embedding pass (simulate._embed), with an untrained ResNet-18."""
    from atl_desktop.jobs import run_job
    from atl_desktop.models.encoders import EncoderChoice, build_encoder
    from atl_desktop.simulate import SimulationConfig, _embed

    model = build_encoder(EncoderChoice("untrained:resnet18", input_size=SIZE), 8)
    return run_job(_embed(model, x, SimulationConfig(device="cpu"), "embedding"))


def one_order(e: np.ndarray, y: np.ndarray, seed: int) -> dict[str, list[float]]:
    order = np.random.default_rng(seed).permutation(len(y))[:LAST]
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    scaler, last = fit_scaler(e), None
    z = scaler(e)
    for n in range(FIRST, LAST + 1):
        rows = order[:n]
        started = time.perf_counter()
        cold = fit_scaler(e)
        LogisticHead(8).fit(cold(e[rows]), y[rows]).predict_proba(cold(e))
        times["cold"].append(1000 * (time.perf_counter() - started))
        started = time.perf_counter()
        last = LogisticHead(8).fit(z[rows], y[rows], start=last)
        last.predict_proba(z)
        times["warm"].append(1000 * (time.perf_counter() - started))
    return times


def main() -> int:
    import torch

    torch.set_num_threads(1)
    load_at_start = machine()
    x, y, _ = load_pbc(SIZE)
    e = embed(x)
    result = {"benchmark": "live_head", "machine": load_at_start, "data": "pbc_dev", "images": int(len(y)),
              "dimensions": int(e.shape[1]), "labels": [FIRST, LAST], "orders": list(ORDERS)}
    times = [one_order(e, y, seed) for seed in ORDERS]
    for kind in ("cold", "warm"):
        ms = np.concatenate([t[kind] for t in times])
        result[kind] = {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                        "max_ms": float(ms.max()), "refits": int(len(ms))}
    result["p95_ratio_cold_to_warm"] = result["cold"]["p95_ms"] / result["warm"]["p95_ms"]
    print(write_json("live_head.json", result))
    print({k: result[k] for k in ("cold", "warm", "p95_ratio_cold_to_warm")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
