"""Rebuild the bundled demo projects from ../shared/data, deterministically.

    python resources/demo/build_demo.py [--data ../shared/data] [--out resources/demo] [--only NAME]

Three projects, each trained by this project's own code:

- bloodcells.atl (the default demo): peripheral blood cell photographs (pbc_dev, Acevedo et al.
  2020, CC BY 4.0), 8 classes, at real resolution (JPEG, longer side TILE_SIDE px). Nothing
  labelled at the start: the rounds run the embedding-first loop as a new user's project does
  (typical images first on an encoder's embeddings, then the `auto` strategy), a simulated
  expert answers with the hidden ground truth, and the small CNN is fine-tuned with the
  project's recipe after each round. The files used are listed in bloodcells_files.csv.

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
import csv
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
from atl_desktop.loop.rounds import record_step
from atl_desktop.loop.session import (
    TRAIN_SETTING,
    ModelChoice,
    audit_job,
    finish_round_job,
    pseudo_label_job,
    query_job,
    round_job,
    score_job,
    train_job,
)
from atl_desktop.store import Project
from atl_desktop.store.keys import BASELINE_SETTING, NEW_PROJECT_TRAINING, SOURCE_SETTING
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


def _copy_project(project, copy: Path) -> None:
    """A consistent copy of the database and the files the rounds need (media, checkpoints)."""
    with sqlite3.connect(copy) as backup:
        project.db.backup(backup)
    for folder in ("media", "checkpoints"):
        if (Path(project.data_dir) / folder).is_dir():
            shutil.copytree(Path(project.data_dir) / folder, copy.with_name(copy.name + ".d") / folder)


def _remove_project(path: Path) -> None:
    for old in (path, path.with_name(path.name + ".d")):
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def _clean(out: Path, name: str, keep_scores: bool = False) -> None:
    """Drop what is recomputed on demand; `keep_scores` keeps the current model's pool scores
    (half a megabyte for the blood cells), so the window shows the audit estimate at once."""
    for derived in ("stopset",) if keep_scores else ("scores", "stopset"):
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
    latest = project.latest_checkpoint()  # None in a first round from nothing labelled
    checkpoint = None if latest is None else latest.id
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
    _copy_project(project, copy)
    labels, accuracy = [], []
    with Project.open(copy) as twin:
        for _ in range(ROUNDS):
            summary = run_job(round_job(twin, strategy="random", batch=batch, seed=SEED))
            labels.append(summary.metrics["labels"])
            accuracy.append(summary.metrics["test"]["accuracy"])
    print(f"{project.path.stem}: random baseline {accuracy}", file=sys.stderr)
    return labels, accuracy


def _audit_sample(project, count: int) -> None:
    """The expert labels `count` more images drawn uniformly at random from the unlabelled pool
    and held out of training (as queries draw them, one in ten): the audit estimate's sample."""
    taken = set(project.current_labels()) | project.audit_ids()
    pool = [i for i in project.image_ids("target", "pool") if i not in taken]
    rng = np.random.default_rng([SEED, 0xA0D1])
    drawn = sorted(int(i) for i in rng.choice(pool, size=min(count, len(pool)), replace=False))
    project.mark_audit(drawn, seed=SEED)
    truth = project.truth()
    with project.transaction():
        for image_id in drawn:
            project.set_label(image_id, truth[image_id], annotator=EXPERT)


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


DIGITS_SOURCE, DIGITS_POOL, DIGITS_TEST = 1000, 800, 300  # small: the demos share a 25 MB budget


def digits(data: Path, out: Path) -> Path:
    m = np.load(data / "digits_mnist_test.npz", allow_pickle=False)
    u = np.load(data / "digits_usps.npz", allow_pickle=False)
    rng = np.random.default_rng(SEED)
    src = np.sort(rng.permutation(len(m["y"]))[:DIGITS_SOURCE])
    pool = np.sort(rng.permutation(len(u["y_train"]))[:DIGITS_POOL])
    test = np.sort(rng.permutation(len(u["y_test"]))[:DIGITS_TEST])
    parts = {
        ("source", "pool", "labels"): (m["x"][src], m["y"][src]),
        ("target", "pool", "truth"): (u["x_train"][pool], u["y_train"][pool]),
        ("target", "test", "truth"): (u["x_test"][test], u["y_test"][test]),
    }
    train = {"backbone": "smallcnn", "epochs": 10, "batch_size": 64, "lr": 2e-3,
             "augment": "none", "patience": 0, "seed": 0}
    describe = (f"Handwritten digits: MNIST (source, {DIGITS_SOURCE:,} labelled) to USPS (target, "
                f"{DIGITS_POOL:,} unlabelled, {DIGITS_TEST} test), a real domain shift. MNIST CC BY-SA 3.0; "
                "USPS (Hull 1994).")
    rounds_train = {"epochs": 5, "lr": 5e-4}
    return build("digits", out, parts, m["classes"], train, rounds_train, "margin", 10, describe)


# ---- bloodcells: real-resolution photographs through the embedding-first loop -------------

BLOOD_SHARE = 0.10  # of each pbc_dev class: about 600 photographs
BLOOD_TEST = 0.25  # of those, per class, held out as the labelled test split
TILE_SIDE = 176  # longer side of the shipped JPEGs: the query view's tiles (176 px) show them 1:1
JPEG_QUALITY = 85
BLOOD_BATCH = 20
BLOOD_AUDIT = 60  # audit images the simulated expert labels: Model quality's estimate
BLOOD_MANIFEST = "bloodcells_files.csv"
# A new project's recipe (400 steps of 64, one-cycle, flips, 90-degree turns, mild colour
# jitter: a cell has no "up"), on the small CNN at 64 px.
BLOOD_TRAIN = {**NEW_PROJECT_TRAINING, "backbone": "smallcnn", "input_size": 64, "epochs": 10, "patience": 0,
               "seed": 0}
BLOOD_DESCRIBE = (
    "Peripheral blood cells, 8 classes, photographed by a CellaVision DM96 (May-Grünwald-Giemsa). "
    "From A. Acevedo et al., Data in Brief 30 (2020) 105474, doi:10.17632/snkd93bnjr.1, CC BY 4.0. "
    "{pool} unlabelled images and {test} test images; {rounds} rounds of {batch} labels already given "
    "by a simulated expert, and {audit} audit images drawn at random and kept out of training, which "
    "estimate the model's accuracy (Model quality). To label your own images: File ▸ New project.")


def pbc_subset(data: Path, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(path under pbc_dev, class) of BLOOD_SHARE of each class, drawn with `rng`, sorted."""
    with open(data / "pbc_dev" / "index.csv", newline="") as f:
        rows = sorted((r["path"], r["label"]) for r in csv.DictReader(f))
    chosen = []
    for cls in sorted({label for _, label in rows}):
        paths = [p for p, label in rows if label == cls]
        keep = rng.choice(len(paths), round(BLOOD_SHARE * len(paths)), replace=False)
        chosen += [(paths[i], cls) for i in sorted(keep)]
    return chosen


def reencode(source: Path, target: Path) -> None:
    """A JPEG whose longer side is TILE_SIDE (Lanczos), at JPEG_QUALITY."""
    with Image.open(source) as img:
        img = img.convert("RGB")
        img.thumbnail((TILE_SIDE, TILE_SIDE), Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        img.save(target, "JPEG", quality=JPEG_QUALITY, optimize=True)


def blood_files(data: Path, folder: Path) -> list[tuple[str, str, str]]:
    """Choose the subset, split it per class and write it as folder/<split>/<class>/<name>.jpg;
    returns (file name, class, split) rows for the manifest."""
    rng = np.random.default_rng(SEED)
    chosen = pbc_subset(data, rng)
    y = np.array([cls for _, cls in chosen])
    pool, test = stratified(y, [1 - BLOOD_TEST, BLOOD_TEST], rng)
    rows = []
    for split, idx in (("pool", pool), ("test", test)):
        for i in idx:
            path, cls = chosen[i]
            reencode(data / "pbc_dev" / path, folder / split / cls / Path(path).name)
            rows.append((Path(path).name, cls, split))
    return sorted(rows, key=lambda r: (r[2], r[1], r[0]))


def write_manifest(out: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(out / BLOOD_MANIFEST, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "class", "split"])
        writer.writerows(rows)


def import_blood(project, folder: Path) -> None:
    """Both splits with their classes as hidden ground truth (the expert's answers), copied in."""
    for split in ("pool", "test"):
        run_job(import_source(project, folder / split, ImportOptions(
            format="imagefolder", domain="target", split=split, labels="truth", copy=True)))


def blood_accuracy(project) -> dict:
    """Balanced accuracy of the latest model on the test split and on the unlabelled pool."""
    checkpoint = project.latest_checkpoint().id
    test = run_job(evaluate_project(project, checkpoint_id=checkpoint))
    scored = run_job(score_job(project, model=ModelChoice(checkpoint_id=checkpoint)))
    unlabelled = [i for i in project.image_ids("target", "pool") if i not in project.current_labels()]
    position, truth = project.class_index(), project.truth()
    predicted = np.argmax(scored.target.probs[scored.target.rows(unlabelled)], axis=1)
    actual = np.array([position[truth[i]] for i in unlabelled])
    recalls = [float(np.mean(predicted[actual == c] == c)) for c in np.unique(actual)]
    audit = run_job(audit_job(project)).estimate.balanced_accuracy
    return {"checkpoint": checkpoint, "test_balanced_accuracy": test.balanced_accuracy,
            "audit_balanced_accuracy": [audit.estimate, audit.lower, audit.upper],
            "test_images": test.n, "unlabelled_balanced_accuracy": float(np.mean(recalls)),
            "unlabelled_images": len(unlabelled), "labels": len(project.current_labels())}


def bloodcells(data: Path, out: Path) -> Path:
    """Import, run ROUNDS expert rounds from nothing labelled, record random sampling's curve
    from the same start on a copy, leave a batch and pseudo-labels waiting, measure."""
    name, path = "bloodcells", out / "bloodcells.atl"
    _remove_project(path)
    with tempfile.TemporaryDirectory() as tmp, Project.create(path) as project:
        rows = blood_files(data, Path(tmp) / "images")
        write_manifest(out, rows)
        for cls in sorted({r[1] for r in rows}):
            project.add_class(cls)
        project.set_setting(TRAIN_SETTING, BLOOD_TRAIN)
        import_blood(project, Path(tmp) / "images")
        counts = project.counts()["images"]
        project.set_setting("description", BLOOD_DESCRIBE.format(
            pool=counts["target/pool"], test=counts["target/test"], rounds=ROUNDS, batch=BLOOD_BATCH,
            audit=BLOOD_AUDIT))
        print(f"{name}: imported {counts}", file=sys.stderr)
        baseline = _random_baseline(project, Path(tmp), BLOOD_BATCH)
        project.set_setting(BASELINE_SETTING, {
            "strategy": "random", "seed": SEED, "labels": baseline[0], "accuracy": baseline[1],
            "how": "the same rounds (batch, training settings) from nothing labelled, with a "
                   "random batch each round, on a copy of this project"})
        for _ in range(ROUNDS):
            _expert_round(project, "auto", BLOOD_BATCH)
        _audit_sample(project, BLOOD_AUDIT)
        measured = blood_accuracy(project)
        project.set_setting("demo_measured", measured)
        print(f"{name}: {json.dumps(measured)}", file=sys.stderr)
        _leave_work_waiting(project, "auto", BLOOD_BATCH)
    _clean(out, name, keep_scores=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--only", choices=["bloodcells", "histology", "digits"])
    args = parser.parse_args()
    built = {}
    for name, fn in (("bloodcells", bloodcells), ("histology", histology), ("digits", digits)):
        if args.only in (None, name):
            built[name] = str(fn(args.data, args.out).relative_to(args.out))
    print(json.dumps(built))


if __name__ == "__main__":
    main()
