"""Rebuild the bundled demo projects from ../shared/data, deterministically.

    python resources/demo/build_demo.py [--data ../shared/data] [--out resources/demo]

Two projects, each trained by this project's own code:

- histology.atl: colorectal tissue tiles (PathMNIST, NCT-CRC-HE-100K, CC BY 4.0),
  9 classes. A labelled "source lab" and an unlabelled "target lab" whose tiles
  carry a SIMULATED stain and scanner shift (a fixed change of haematoxylin and
  eosin strength in HED colour space, then a slight blur). The shift is made up
  for the demo; it stands in for the real difference between two hospitals.
- digits.atl: MNIST (source, labelled) to USPS (target): a real domain shift.

Each has a source-trained checkpoint, a few rounds already labelled (by a
simulated expert who answers with the hidden ground truth) and recorded by the
rounds code (test accuracy, calibration, stopping signal), the learning curve of
random sampling over the same rounds (measured on a copy), a labelled test split,
a queried batch waiting, and pseudo-labels to review.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from atl_desktop.active.pseudo import PseudoLabelConfig
from atl_desktop.data.importers import ImportOptions, import_source
from atl_desktop.jobs import run_job
from atl_desktop.report import BASELINE_SETTING, SOURCE_SETTING
from atl_desktop.rounds import record_step
from atl_desktop.session import (
    TRAIN_SETTING,
    finish_round_job,
    pseudo_label_job,
    query_job,
    round_job,
    train_job,
)
from atl_desktop.store import Project
from atl_desktop.transfer.train import evaluate_project

HERE = Path(__file__).resolve().parent
SEED = 20261124
ROUNDS = 3
EXPERT = "demo expert (simulated)"
LAST_QUERY, LAST_QUERY_ROUND = "last_query", "last_query_round"  # read by the window's query view

# Ruifrok & Johnston (2001) optical-density vectors of haematoxylin, eosin and DAB.
STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
STAINS = STAINS / np.linalg.norm(STAINS, axis=1, keepdims=True)
STAIN_SCALE = np.array([1.25, 0.75, 1.0])  # more haematoxylin, less eosin: another lab's staining
BLUR_RADIUS = 0.6  # a softer scanner, in pixels at 28 x 28


def stain_shift(tiles: np.ndarray) -> np.ndarray:
    """Rescale stain concentrations in HED space, then blur: (N, H, W, 3) uint8 -> same."""
    od = -np.log((tiles.astype(np.float64) + 1.0) / 256.0)
    concentrations = od @ np.linalg.inv(STAINS)
    shifted = np.clip(concentrations * STAIN_SCALE, 0, None) @ STAINS
    rgb = np.clip(256.0 * np.exp(-shifted) - 1.0, 0, 255).round().astype(np.uint8)
    blur = ImageFilter.GaussianBlur(BLUR_RADIUS)
    return np.stack([np.asarray(Image.fromarray(t).filter(blur)) for t in rgb])


def stratified(y: np.ndarray, fractions: list[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Split indices into parts with the given fractions, per class."""
    parts: list[list[int]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def _npz(folder: Path, name: str, x, y, classes) -> Path:
    path = folder / f"{name}.npz"
    np.savez(path, x=x, y=y, classes=np.asarray(classes))
    return path


def build(name: str, out: Path, parts: dict, classes, train: dict, rounds_train: dict, strategy: str,
          batch: int, describe: str) -> Path:
    """Import, pre-train on the source, run ROUNDS rounds with the rounds code (query, the
    simulated expert labels, fine-tune, assess, finish), leave a batch and pseudo-labels
    waiting, and record the random-sampling baseline from a copy."""
    path = out / f"{name}.atl"
    _remove_project(path)
    with tempfile.TemporaryDirectory() as tmp, Project.create(path) as project:
        for cls in classes:
            project.add_class(str(cls))
        project.set_setting("description", describe)
        project.set_setting(TRAIN_SETTING, train)
        for (domain, split, labels), (x, y) in parts.items():
            source = _npz(Path(tmp), f"{domain}-{split}", x, y, classes)
            run_job(import_source(project, source, ImportOptions(
                domain=domain, split=split, labels=labels, format="npz")))
        print(f"{name}: imported {project.counts()['images']}", file=sys.stderr)
        run_job(train_job(project))  # source pre-training
        project.set_setting(TRAIN_SETTING, {**train, **rounds_train})
        start = _test_accuracy(project)
        print(f"{name}: source model, test accuracy {start:.3f}", file=sys.stderr)
        baseline = _random_baseline(project, Path(tmp), batch)
        project.set_setting(BASELINE_SETTING, {
            "strategy": "random", "seed": SEED, "labels": [0, *baseline[0]],
            "accuracy": [start, *baseline[1]],
            "how": "the same rounds (batch, training settings) from the same source model, "
                   "with a random batch each round, on a copy of this project"})
        project.set_setting(SOURCE_SETTING, {"accuracy": start, "labels": 0})
        for _ in range(ROUNDS):
            _expert_round(project, strategy, batch)
        _leave_work_waiting(project, strategy, batch)
    _clean(out, name)
    return path


def _remove_project(path: Path) -> None:
    for old in (path, path.with_name(path.name + ".d")):
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def _clean(out: Path, name: str) -> None:
    for derived in ("scores", "stopset"):  # recomputed on demand
        shutil.rmtree(out / f"{name}.atl.d" / derived, ignore_errors=True)
    (out / f"{name}.atl.d" / "lock").unlink(missing_ok=True)


def _test_accuracy(project) -> float:
    return run_job(evaluate_project(project, checkpoint_id=project.latest_checkpoint().id)).accuracy


def _expert_round(project, strategy: str, batch: int) -> None:
    """Query, then the simulated expert labels the batch as a person would in the window
    (the suggestion shown is recorded with each label), then fine-tune, assess and finish."""
    result = run_job(query_job(project, strategy=strategy, batch=batch, seed=SEED))
    truth = project.truth()
    class_ids = [c.id for c in project.classes()]
    checkpoint = project.latest_checkpoint().id
    with project.transaction():
        for item in result.items:
            top = item.top[0] if item.top else None
            project.set_label(item.image_id, truth[item.image_id], annotator=EXPERT, round=result.round_id,
                              strategy=strategy, checkpoint_id=checkpoint,
                              suggestion=None if top is None else class_ids[top[0]],
                              suggestion_confidence=None if top is None else top[1])
        record_step(project, result.round_id, "labelled")
    summary = run_job(finish_round_job(project, round_id=result.round_id))
    accuracy = summary.metrics.get("test", {}).get("accuracy")
    print(f"{project.path.stem}: round {result.round_id}, {summary.metrics['labels']} labels, "
          f"test accuracy {accuracy:.3f}", file=sys.stderr)


def _random_baseline(project, tmp: Path, batch: int) -> tuple[list[int], list[float]]:
    """Learning curve of random sampling: the same rounds on a copy, labelled by the oracle."""
    copy = tmp / "baseline.atl"
    with sqlite3.connect(copy) as backup:
        project.db.backup(backup)
    shutil.copytree(Path(project.data_dir) / "media", tmp / "baseline.atl.d" / "media")
    shutil.copytree(Path(project.data_dir) / "checkpoints", tmp / "baseline.atl.d" / "checkpoints")
    labels, accuracy = [], []
    with Project.open(copy) as twin:
        for _ in range(ROUNDS):
            summary = run_job(round_job(twin, strategy="random", batch=batch, seed=SEED))
            labels.append(summary.metrics["labels"])
            accuracy.append(summary.metrics["test"]["accuracy"])
    print(f"{project.path.stem}: random baseline {accuracy}", file=sys.stderr)
    return labels, accuracy


def _leave_work_waiting(project, strategy: str, batch: int) -> None:
    """A queried batch for the query view and CEAL pseudo-labels for the review view."""
    pending = run_job(query_job(project, strategy=strategy, batch=batch, seed=SEED))
    project.set_setting(LAST_QUERY, [
        {"image_id": it.image_id, "score": it.score, "reason": it.reason,
         "top": [list(t) for t in it.top]} for it in pending.items])
    project.set_setting(LAST_QUERY_ROUND, pending.round_id)
    run_job(pseudo_label_job(project, round_id=pending.round_id, config=PseudoLabelConfig(
        delta0=0.3, decay=0.02, max_per_class=6)))


def histology(data: Path, out: Path) -> Path:
    d = np.load(data / "pathmnist_1000.npz", allow_pickle=False)
    rng = np.random.default_rng(SEED)
    source, pool, test = stratified(d["y"], [0.4, 0.45, 0.15], rng)
    target_x = stain_shift(d["x"])
    parts = {
        ("source", "pool", "labels"): (d["x"][source], d["y"][source]),
        ("target", "pool", "truth"): (target_x[pool], d["y"][pool]),
        ("target", "test", "truth"): (target_x[test], d["y"][test]),
    }
    train = {"backbone": "smallcnn", "epochs": 15, "batch_size": 32, "lr": 2e-3,
             "augment": "histology", "patience": 0, "seed": 0}
    describe = ("Colorectal histology, 9 tissue classes (PathMNIST from NCT-CRC-HE-100K, CC BY 4.0). "
                "Source lab: 400 labelled tiles. Target lab: 450 unlabelled tiles and 150 test tiles "
                "with a SIMULATED stain and scanner shift (HED rescaling and blur).")
    # Rounds train on the source tiles, the labelled target tiles and (for the multi-kernel
    # MMD between the domains, DAN) the unlabelled target tiles.
    rounds_train = {"method": "dan", "epochs": 5, "lr": 5e-4}
    return build("histology", out, parts, d["classes"], train, rounds_train, "entropy", 20, describe)


def digits(data: Path, out: Path) -> Path:
    m = np.load(data / "digits_mnist_test.npz", allow_pickle=False)
    u = np.load(data / "digits_usps.npz", allow_pickle=False)
    rng = np.random.default_rng(SEED)
    src = np.sort(rng.permutation(len(m["y"]))[:2000])
    pool = np.sort(rng.permutation(len(u["y_train"]))[:1500])
    test = np.sort(rng.permutation(len(u["y_test"]))[:500])
    parts = {
        ("source", "pool", "labels"): (m["x"][src], m["y"][src]),
        ("target", "pool", "truth"): (u["x_train"][pool], u["y_train"][pool]),
        ("target", "test", "truth"): (u["x_test"][test], u["y_test"][test]),
    }
    train = {"backbone": "smallcnn", "epochs": 10, "batch_size": 64, "lr": 2e-3,
             "augment": "none", "patience": 0, "seed": 0}
    describe = ("Handwritten digits: MNIST (source, 2,000 labelled) to USPS (target, 1,500 "
                "unlabelled, 500 test), a real domain shift. MNIST CC BY-SA 3.0; USPS (Hull 1994).")
    rounds_train = {"epochs": 5, "lr": 5e-4}
    return build("digits", out, parts, m["classes"], train, rounds_train, "margin", 10, describe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--only", choices=["histology", "digits"])
    args = parser.parse_args()
    built = {}
    for name, fn in (("histology", histology), ("digits", digits)):
        if args.only in (None, name):
            built[name] = str(fn(args.data, args.out).relative_to(args.out))
    print(json.dumps(built))


if __name__ == "__main__":
    main()
