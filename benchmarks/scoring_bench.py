"""Scoring-pass throughput against a bare forward pass, and the cost of core-set and MMD selection.

Writes benchmarks/results/scoring.json:
  <model>_ratio               images/s of the scoring pass (softmax + features written to the
                              memmap cache) divided by images/s of a bare `model(x)` over the
                              same tensors, same batches, same run (goal >= 0.9)
  coreset_select_seconds      greedy k-centre, b = 100 from 100,000 x 512 features (goal <= 2 s)
  mmd_select_seconds          greedy MMD reduction, same sizes (goal <= 2 s)
  *_peak_bytes                peak numpy allocation during the selection (tracemalloc); an
                              N x N float32 matrix would be 40 GB
  machine                     where it ran

Run: python benchmarks/scoring_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from benchcommon import machine
from torch.utils.data import Dataset

from atl_desktop.active.scoring import ScoringConfig, score_pool
from atl_desktop.active.strategies import k_center_greedy, mmd_reduction_greedy
from atl_desktop.jobs import run_job
from atl_desktop.models import build_model

RESULTS = Path(__file__).resolve().parent / "results" / "scoring.json"


class TensorPool(Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x
        self.image_ids = list(range(len(x)))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], -1


def bare_seconds(model, x: torch.Tensor, batch: int, device: torch.device) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            model(x[i : i + batch].to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def scoring_seconds(model, x: torch.Tensor, batch: int, device: torch.device) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = ScoringConfig(batch_size=batch, device=str(device))
        start = time.perf_counter()
        run_job(score_pool(model, TensorPool(x), Path(tmp) / "c", config=config))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def throughput_ratio(backbone: str, n: int, batch: int, repeats: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(backbone, 10, weights=None, seed=0).to(device).eval()
    size = model.spec.size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, model.spec.channels, size, size, generator=g)
    bare_seconds(model, x[:batch], batch, device)  # warm-up
    bare, scoring = [], []
    for _ in range(repeats):  # interleaved so that drifting machine load hits both alike
        bare.append(bare_seconds(model, x, batch, device))
        scoring.append(scoring_seconds(model, x, batch, device))
    return {
        f"{backbone}_ratio": min(bare) / min(scoring),
        f"{backbone}_bare_images_per_second": n / min(bare),
        f"{backbone}_scoring_images_per_second": n / min(scoring),
        f"{backbone}_images": n,
        f"{backbone}_input_px": size,
        f"{backbone}_batch": batch,
    }


def timed_and_traced(fn) -> tuple[float, int]:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return seconds, peak


def selection(n: int, d: int, labelled: int, b: int) -> dict:
    rng = np.random.default_rng(0)
    # Clustered features, roughly like a backbone's: 50 centres plus noise.
    centres = rng.normal(size=(50, d)).astype(np.float32) * 3.0
    feats = centres[rng.integers(50, size=n)] + rng.normal(size=(n, d)).astype(np.float32)
    lab = feats[:labelled].copy()
    pool = feats[labelled:]
    coreset_s, coreset_peak = timed_and_traced(lambda: k_center_greedy(pool, b, lab))
    mmd_s, mmd_peak = timed_and_traced(
        lambda: mmd_reduction_greedy(pool, lab, b, np.random.default_rng(1)))
    return {
        "coreset_select_seconds": coreset_s,
        "coreset_peak_bytes": coreset_peak,
        "mmd_select_seconds": mmd_s,
        "mmd_peak_bytes": mmd_peak,
        "select_pool": len(pool),
        "select_feature_dim": d,
        "select_labelled": labelled,
        "select_batch": b,
        "features_bytes": int(pool.nbytes),
        "nxn_float32_bytes": 4 * len(pool) ** 2,
        "mmd_kernel_sample": 512,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    args = parser.parse_args()
    quick = args.quick
    results = {"machine": machine()}
    results |= throughput_ratio("resnet18", 32 if quick else 192, 32, 1 if quick else 3)
    results |= throughput_ratio("smallcnn", 1024 if quick else 8192, 256, 1 if quick else 3)
    results |= selection(10_000 if quick else 100_200, 512, 200, 100)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
