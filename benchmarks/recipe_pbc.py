"""The fine-tune of a round on real-resolution blood-cell photographs: a new project's recipe
against the per-epoch one projects had before (benchmark).

Data and splits as benchmarks/al_pbc.py: pbc_dev (5,979 JPEGs, 8 classes, CC BY 4.0) resized to
64 px; a fixed stratified 30 % test split; 20 % of the train pool held out for validation.
Both arms run the app's round loop through `atl_desktop.simulate` (rounds fine-tune from the
last model, no validation labels): 40 random labels, then 160 more (200), with the small CNN.
- "per-epoch" (what `atl simulate` and projects did): 5 epochs a round at the backbone's 28 px,
  constant learning rate, no augmentation: 40 labels make 10 optimiser steps.
- "project recipe" (store.keys.NEW_PROJECT_TRAINING): at least 200 steps a round, one-cycle
  learning rate, flips and 90-degree rotations, at 64 px.
The recipe's steps, batch size and peak learning rate are chosen on the validation split
(VAL_SEED, the sum of balanced accuracies at 40 and 200 labels); the test split is scored once,
with fresh seeds.

Usage: python benchmarks/recipe_pbc.py [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from al_pbc import RUNS, SIZE, SPLIT_SEED, TEST_SEEDS, VAL_SEED, load_pbc, stratified_mask
from benchcommon import machine, write_json

from atl_desktop.jobs import run_job
from atl_desktop.simulate import Arm, SimData, SimulationConfig, simulate_job
from atl_desktop.store.keys import NEW_PROJECT_TRAINING

GRID = [(steps, batch, lr) for steps in (200, 400) for batch in (32, 64) for lr in (1e-3, 3e-3)]
VAL_SEEDS = (100,)
ROUNDS = dict(budget=200, batch=160, initial=40)  # curve points at 40 and 200 labels


def per_epoch(seeds) -> SimulationConfig:
    return SimulationConfig(**ROUNDS, seeds=seeds, backbone="smallcnn", epochs=5, metric="balanced_accuracy")


def project_recipe(seeds, steps: int, batch: int, lr: float) -> SimulationConfig:
    return SimulationConfig(**ROUNDS, seeds=seeds, backbone="smallcnn", epochs=1, lr=lr, input_size=SIZE,
                            min_steps=steps, batch_size=batch, schedule=NEW_PROJECT_TRAINING["schedule"],
                            augment="dihedral", metric="balanced_accuracy")


def tag(steps: int, batch: int, lr: float) -> str:
    return f"lr{lr:g}" if (steps, batch) == (200, 32) else f"s{steps}-b{batch}-lr{lr:g}"


def curve(data: SimData, config: SimulationConfig, tag: str) -> dict:
    started = time.perf_counter()
    summary = run_job(simulate_job(data, [Arm("random", "random")], config, RUNS / "recipe" / tag))
    arm = summary["arms"]["random"]
    points = dict(zip(arm["labels"], arm["mean"], strict=True))
    stds = dict(zip(arm["labels"], arm["std"], strict=True))
    return {"at_40": points[40], "at_200": points[200], "std_40": stds[40], "std_200": stds[200],
            "balanced_accuracy_per_seed": arm["balanced_accuracy_per_seed"],
            "accuracy_per_seed": arm["accuracy_per_seed"], "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load_at_start = machine()
    x, y, classes = load_pbc(SIZE)
    test = stratified_mask(y, 0.3, SPLIT_SEED)
    pool_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    val = stratified_mask(y[pool_rows], 0.2, VAL_SEED)
    dev_rows, val_rows = pool_rows[~val], pool_rows[val]

    dev = SimData(x[dev_rows], y[dev_rows], x[val_rows], y[val_rows], classes)
    validation = {}
    for steps, batch, lr in GRID:
        validation[tag(steps, batch, lr)] = curve(dev, project_recipe(VAL_SEEDS, steps, batch, lr),
                                                  "val-" + tag(steps, batch, lr))
        print(tag(steps, batch, lr), validation[tag(steps, batch, lr)], flush=True)
    chosen = max(GRID, key=lambda g: validation[tag(*g)]["at_40"] + validation[tag(*g)]["at_200"])

    data = SimData(x[pool_rows], y[pool_rows], x[test_rows], y[test_rows], classes)
    arms = {"per_epoch": curve(data, per_epoch(TEST_SEEDS), "test-per-epoch"),
            "project_recipe": curve(data, project_recipe(TEST_SEEDS, *chosen), "test-recipe-" + tag(*chosen))}
    result = {"benchmark": "recipe_pbc", "machine": load_at_start, "data": "pbc_dev", "image_size": SIZE,
              "pool": len(pool_rows), "test": len(test_rows), "test_seeds": TEST_SEEDS,
              "validation_seeds": VAL_SEEDS, "metric": "balanced_accuracy",
              "chosen": dict(zip(("min_steps", "batch_size", "lr"), chosen, strict=True)),
              "recipe": {"schedule": NEW_PROJECT_TRAINING["schedule"],
                         "augment": "dihedral (flips and 90-degree rotations)", "input_size": SIZE},
              "validation": validation, "arms": arms}
    print(write_json("recipe_pbc.json", result))
    for name, arm in arms.items():
        print(f"{name:15} @40 {arm['at_40']:.3f} ± {arm['std_40']:.3f}   @200 {arm['at_200']:.3f} "
              f"± {arm['std_200']:.3f}   {arm['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
