"""Scoring throughput over 1 and 2 processes (torch.distributed, gloo on CPU), end to end.

Every run is a real `atl score --nproc-per-node N` job on a project made from real images:
torchrun starts the ranks, each decodes its block of the pool from the project's files and
scores it into a shard, rank 0 merges the shards into the score cache. Configurations, run
in turn (interleaved, so that drifting load from other users of the machine hits all alike):

  1 process x 1 thread, 2 processes x 1 thread each   the scale-out comparison
  1 process x 2 threads                                what one process makes of both cores

Writes benchmarks/results/scale.json:
  <workload>.<config>.images_per_second   median steady-state rate: rows scored per second
                                          between rank 0's first and last scoring progress
                                          (start-up and merge excluded)
  <workload>.<config>.wall_seconds        median time of the whole job, torchrun start-up included
  <workload>.speedup_2x1_over_1x1         ratio of the steady-state medians (same run)
  machine, threads, notes

Run: python benchmarks/scale_bench.py [--quick] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
from benchcommon import machine, write_json

from atl_desktop.active.scoring import ScoringConfig
from atl_desktop.cli import main as atl
from atl_desktop.jobs import Progress
from atl_desktop.loop.session import ModelChoice
from atl_desktop.models import build_model
from atl_desktop.models.checkpoints import save_checkpoint
from atl_desktop.scale.launch import LaunchOptions, launch
from atl_desktop.scale.worker import score_spec
from atl_desktop.store import Project

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2)}  # processes x threads per process


def make_project(folder: Path, npz: Path, n: int, backbone: str, input_size: int | None) -> Path:
    """A project with the first n images of `npz` in its pool and a random-init checkpoint."""
    arrays = np.load(npz, allow_pickle=False)
    small = folder / "pool.npz"
    np.savez(small, x=arrays["x"][:n], y=arrays["y"][:n], classes=arrays["classes"])
    path = folder / "bench.atl"
    classes = [str(c) for c in arrays["classes"]]
    assert atl(["new", str(path), "--classes", ",".join(classes)]) == 0
    assert atl(["import", str(path), str(small), "--labels", "none", "--quiet"]) == 0
    with Project.open(path) as project:
        model = build_model(backbone, len(classes), weights=None, input_size=input_size, seed=0)
        save_checkpoint(project, model, classes=classes, config={"backbone": backbone})
    return path


def one_run(project: Path, processes: int, threads: int, batch: int) -> dict:
    """Score the pool once (cache removed first); steady-state rate and wall time."""
    shutil.rmtree(project.with_name(project.name + ".d") / "scores", ignore_errors=True)
    spec = score_spec(project, model=asdict(ModelChoice()),
                      scoring=ScoringConfig(batch_size=batch, device="cpu").to_json(), source=False,
                      run_id=uuid.uuid4().hex, handback=False)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    marks: list[tuple[float, Progress]] = []
    start = time.perf_counter()
    with Project.open(project) as handle:
        job = launch(spec, LaunchOptions(nproc_per_node=processes), handle)
        try:
            while True:
                p = next(job)
                marks.append((time.perf_counter(), p))
        except StopIteration as stop:
            outcome = stop.value
    wall = time.perf_counter() - start
    scoring = [(t, p) for t, p in marks if p.message.startswith("scoring") and p.done > 0]
    (t0, first), (t1, last) = scoring[0], scoring[-1]
    return {"wall_seconds": wall, "images": outcome["target"],
            "images_per_second": (last.done - first.done) / (t1 - t0) if t1 > t0 else float("nan")}


def workload(name: str, npz: Path, n: int, backbone: str, input_size: int | None, batch: int,
             repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp), npz, n, backbone, input_size)
        runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
        for r in range(repeats):
            for config, (processes, threads) in CONFIGS.items():
                result = one_run(project, processes, threads, batch)
                runs[config].append(result)
                print(f"{name} {config} repeat {r + 1}: {result['images_per_second']:.1f} images/s, "
                      f"{result['wall_seconds']:.1f} s", file=sys.stderr)
    out: dict = {"backbone": backbone, "input_px": input_size, "images": n, "batch": batch,
                 "data": npz.name}
    for config, results in runs.items():
        out[config] = {
            "images_per_second": statistics.median(r["images_per_second"] for r in results),
            "wall_seconds": statistics.median(r["wall_seconds"] for r in results),
            "runs": results,
        }
    out["speedup_2x1_over_1x1"] = out["2x1"]["images_per_second"] / out["1x1"]["images_per_second"]
    out["speedup_2x1_over_1x2"] = out["2x1"]["images_per_second"] / out["1x2"]["images_per_second"]
    out["wall_ratio_1x1_over_2x1"] = out["1x1"]["wall_seconds"] / out["2x1"]["wall_seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    started = time.time()
    results = {
        "machine": machine() + " (CPUs shared with other engineers' benchmarks while running: "
                   "compare the ratios, measured within this run)",
        "threads": "per configuration: processes x torch threads per process (OMP_NUM_THREADS)",
        "configs": {c: {"processes": p, "threads_per_process": t} for c, (p, t) in CONFIGS.items()},
        "smallcnn_mnist": workload("smallcnn_mnist", DATA / "digits_mnist_test.npz",
                                   2000 if args.quick else 10000, "smallcnn", None, 256, repeats),
        "resnet18_pathmnist": workload("resnet18_pathmnist", DATA / "pathmnist_1000.npz",
                                       200 if args.quick else 1000, "resnet18", 112, 32, repeats),
    }
    results["total_seconds"] = time.time() - started
    print(write_json("scale.json", results))


if __name__ == "__main__":
    main()
