"""Training-loop throughput against a bare loop, and source-only MNIST -> USPS accuracy.

Writes benchmarks/results/train.json:
- <model>_ratio: images/second of `transfer.train.train` divided by images/second of a
  bare forward + backward + optimiser step over the same tensors, in the same run
  (goal >= 0.85), for the small CNN at 28 px and resnet18 at 224 px (median step
  times, steps interleaved);
- mnist_to_usps_source_only_*: the small CNN trained on the 10,000 MNIST test digits
  and evaluated on the 2,007 USPS test digits, both at 28x28, for three seeds;
- machine: where it ran.

Run: python benchmarks/train_bench.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from benchcommon import machine
from torch.utils.data import TensorDataset

from atl_desktop.data.datasets import ArrayDataset
from atl_desktop.jobs import run_job
from atl_desktop.models import build_model
from atl_desktop.models.transforms import input_transform
from atl_desktop.transfer.train import TrainConfig, evaluate, make_optimizer, resolve_device, train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ATL_DATA", "/work/shared/data"))
RESULTS = ROOT / "benchmarks" / "results" / "train.json"


class BareLoop:
    """Forward + backward + optimiser step over tensors already in memory, nothing else."""

    def __init__(self, backbone: str, size: int, x, y, batch: int, device: torch.device):
        self.model = build_model(backbone, 10, input_size=size, seed=0).to(device).train()
        config = TrainConfig(backbone=backbone, batch_size=batch, weight_decay=0.0)
        self.optimizer = make_optimizer(config, [{"params": list(self.model.parameters())}])
        self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        self.x, self.y, self.batch, self.device = x, y, batch, device

    def step(self, i: int) -> None:
        i %= len(self.x) // self.batch
        xb = self.x[i * self.batch:(i + 1) * self.batch].to(self.device, non_blocking=True)
        yb = self.y[i * self.batch:(i + 1) * self.batch].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.scaler is not None):
            loss = F.cross_entropy(self.model(xb).float(), yb)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput_ratio(backbone: str, size: int, batch: int, steps: int, device: torch.device) -> dict:
    """Median step time of `train` against the bare loop, with the steps interleaved one by
    one, so that changing load on a shared machine affects both alike. The first step
    of each (warm-up) is not timed."""
    x = torch.randn(batch * steps, 3, size, size)
    y = torch.randint(0, 10, (batch * steps,))
    bare = BareLoop(backbone, size, x, y, batch, device)
    model = build_model(backbone, 10, input_size=size, seed=0)
    config = TrainConfig(backbone=backbone, epochs=1, batch_size=batch, device=str(device),
                         patience=0, weight_decay=0.0)
    job = train(model, TensorDataset(x, y), config)
    next(job)
    bare.step(0)
    loop_times, bare_times = [], []
    for i in range(1, steps):
        _sync(device)
        t0 = time.perf_counter()
        next(job)
        _sync(device)
        t1 = time.perf_counter()
        bare.step(i)
        _sync(device)
        t2 = time.perf_counter()
        loop_times.append(t1 - t0)
        bare_times.append(t2 - t1)
    job.close()
    key = f"{backbone}_{size}px"
    loop_rate = batch / statistics.median(loop_times)
    bare_rate = batch / statistics.median(bare_times)
    return {
        f"{key}_loop_images_per_s": loop_rate,
        f"{key}_bare_images_per_s": bare_rate,
        f"{key}_ratio": loop_rate / bare_rate,
        f"{key}_batch": batch,
        f"{key}_timed_steps": steps - 1,
    }


def mnist_to_usps(seeds, epochs: int, device: torch.device) -> dict:
    mnist = np.load(DATA / "digits_mnist_test.npz", allow_pickle=False)
    usps = np.load(DATA / "digits_usps.npz", allow_pickle=False)
    accuracies = []
    for seed in seeds:
        model = build_model("smallcnn", 10, seed=seed)  # 28 px: USPS 16 px is resized up
        source = ArrayDataset(mnist["x"], mnist["y"], input_transform(model.spec))
        target = ArrayDataset(usps["x_test"], usps["y_test"], input_transform(model.spec))
        config = TrainConfig(backbone="smallcnn", epochs=epochs, batch_size=64, lr=1e-3,
                             seed=seed, device=str(device), patience=0)
        run_job(train(model, source, config))
        accuracies.append(run_job(evaluate(model, target, batch_size=256, device=device)).accuracy)
    return {
        "mnist_to_usps_source_only_accuracy": statistics.mean(accuracies),
        "mnist_to_usps_source_only_std": statistics.pstdev(accuracies),
        "mnist_to_usps_source_only_accuracies": accuracies,
        "mnist_to_usps_seeds": list(seeds),
        "mnist_to_usps_epochs": epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer steps and epochs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    results: dict = {"machine": f"{machine()}, device {device}"}
    started = time.perf_counter()
    results.update(throughput_ratio("smallcnn", 28, 128, 20 if args.quick else 60, device))
    results.update(throughput_ratio("resnet18", 224, 64 if cuda else 16,
                                    40 if cuda else (4 if args.quick else 11), device))
    results.update(mnist_to_usps((0, 1, 2), 1 if args.quick else 5, device))
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
