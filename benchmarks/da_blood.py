"""From one lab to another: pbc_dev (source) -> bccd_wbc (target), the embedding-first way (benchmark).

Data: pbc_dev's train pool (benchmarks/al_pbc.py's split; 8 classes, of which the 5 white-cell
classes that bccd_wbc shares are used as labelled source images) and bccd_wbc's 351 crops from
another lab, stain and microscope (basophil 3, eosinophil 88, lymphocyte 33, monocyte 20,
neutrophil 207: small and imbalanced, so balanced accuracy and per-class recall are reported).
bccd_wbc is split once, stratified, into a target pool (50 %) and a target test set (50 %).
Every image is resized to SIZE px.

Encoder: SimCLR trained on the unlabelled images of both labs (pbc_dev's train pool and the
bccd_wbc target pool; no labels, never the target test set). Then, with a logistic head on the
encoder's embeddings (its L2 penalty as chosen by al_pbc.py on pbc_dev's validation split):
- source only: the head learns from every labelled source image, the target test set is scored;
- AdaBN (Li et al. 2017): the same, with the encoder's batch-norm statistics re-estimated on the
  target pool's images before the target images are embedded;
- active learning on the target, from the AdaBN encoder (decided before running): the head
  learns from the source labels and the target labels given so far; random, margin and
  TypiClust choose batches of 5 target images up to 40, 3 seeds.
Nothing is tuned on the target test set.

Usage: python benchmarks/da_blood.py [--steps N]   (after al_pbc.py, whose split and L2 it reads)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from al_pbc import RESULTS, RUNS, SIZE, SPLIT_SEED, load_pbc, stratified_mask
from benchcommon import machine, write_json

from atl_desktop.active.heads import LogisticHead, fit_scaler
from atl_desktop.active.strategies import SelectionInput, select
from atl_desktop.jobs import run_job
from atl_desktop.loop.rounds import evaluation_metrics
from atl_desktop.models.encoders import EncoderChoice, build_encoder
from atl_desktop.simulate import SimulationConfig, _embed
from atl_desktop.transfer.adabn import reestimate_batch_norm
from atl_desktop.transfer.selfsup import SelfSupConfig, pretrain

BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd_wbc"
SHARED = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
SEEDS = (0, 1, 2)
BATCH, BUDGET = 5, 40


def load_bccd(size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    paths = [(p, k) for k, c in enumerate(SHARED) for p in sorted((BCCD / c).glob("*.jpg"))]
    x = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(paths):
        with Image.open(path) as img:
            x[i] = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    return x, np.asarray([k for _, k in paths], dtype=np.int64)


def chosen_l2(summary: Path, wait_minutes: float = 60) -> float:
    """The head's L2 penalty as al_pbc.py chose it on pbc_dev's validation split (waiting for
    it when that benchmark is still running beside this one)."""
    deadline = time.time() + 60 * wait_minutes
    while not summary.is_file():
        if time.time() > deadline:
            raise SystemExit(f"{summary} is missing: run benchmarks/al_pbc.py first.")
        time.sleep(20)
    return float(json.loads(summary.read_text())["chosen"]["head_options"]["l2"])


def head_scores(e_train, y_train, e_test, y_test, l2: float) -> dict:
    scaler = fit_scaler(np.concatenate([e_train, e_test]))
    head = LogisticHead(len(SHARED), l2=l2).fit(scaler(e_train), y_train)
    return evaluation_metrics(head.predict_proba(scaler(e_test)), y_test, SHARED)


def summary_of(metrics: dict) -> dict:
    return {"balanced_accuracy": metrics["balanced_accuracy"], "accuracy": metrics["accuracy"],
            "per_class_recall": dict(zip(SHARED, metrics["per_class_recall"], strict=True)),
            "test_counts": dict(zip(SHARED, [int(sum(r)) for r in metrics["confusion"]], strict=True))}


def active_learning(e_src, y_src, e_pool, y_pool, e_test, y_test, l2: float, strategy: str, seed: int) -> list:
    """Target labels added in batches; the head always learns from the source labels too."""
    scaler = fit_scaler(np.concatenate([e_src, e_pool, e_test]))
    z_src, z_pool, z_test = scaler(e_src), scaler(e_pool), scaler(e_test)
    labelled = np.empty(0, dtype=np.int64)
    curve = []
    while True:
        head = LogisticHead(len(SHARED), l2=l2).fit(np.concatenate([z_src, z_pool[labelled]]),
                                                      np.concatenate([y_src, y_pool[labelled]]))
        m = evaluation_metrics(head.predict_proba(z_test), y_test, SHARED)
        curve.append({"target_labels": int(len(labelled)), "balanced_accuracy": m["balanced_accuracy"]})
        if len(labelled) >= BUDGET:
            return curve
        rest = np.setdiff1d(np.arange(len(y_pool)), labelled)
        data = SelectionInput(probs=head.predict_proba(z_pool[rest]), features=e_pool[rest],
                              labelled_features=e_pool[labelled])
        picks = select(strategy, data, BATCH, np.random.default_rng([seed, len(labelled)]))
        labelled = np.concatenate([labelled, rest[picks]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="SimCLR steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary", type=Path, default=RESULTS / "al_pbc_summary.json",
                        help="al_pbc.py's result, for the head's L2 penalty chosen on validation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    record = {"benchmark": "da_blood", "machine": machine(), "size": SIZE}
    x, y, classes = load_pbc(SIZE)
    pool = ~stratified_mask(y, 0.3, SPLIT_SEED)
    keep = pool & np.isin(y, [classes.index(c) for c in SHARED])
    x_src = x[keep]
    y_src = np.asarray([SHARED.index(classes[c]) for c in y[keep]], dtype=np.int64)
    xb, yb = load_bccd(SIZE)
    test = stratified_mask(yb, 0.5, 7)
    x_pool, y_pool, x_test, y_test = xb[~test], yb[~test], xb[test], yb[test]
    record.update(source_images=int(len(y_src)), target_pool=int(len(y_pool)), target_test=int(len(y_test)),
                  target_test_counts=dict(zip(SHARED, np.bincount(y_test, minlength=5).tolist(), strict=True)))

    config = SelfSupConfig(image_size=SIZE, steps=args.steps, device="cpu")
    model = build_encoder(EncoderChoice("untrained:" + config.backbone, input_size=SIZE), len(SHARED))
    unlabelled = np.concatenate([x[pool], x_pool])
    t = time.perf_counter()
    run_job(pretrain(model, unlabelled, config),
            on_progress=lambda p: p.done % 50 == 0 and print(f"  SimCLR step {p.done}", flush=True))
    record["selfsup"] = {**config.to_dict(), "images": int(len(unlabelled)), "seconds": time.perf_counter() - t}
    l2 = chosen_l2(args.summary)
    record["l2"] = l2
    sim = SimulationConfig(device="cpu")
    e_src = run_job(_embed(model, x_src, sim, "source"))
    e_test = run_job(_embed(model, x_test, sim, "target test"))
    record["source_only"] = summary_of(head_scores(e_src, y_src, e_test, y_test, l2))

    target_images = torch.utils.data.TensorDataset(
        torch.stack([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float().div(255)
                     .sub(torch.tensor(model.spec.mean).view(3, 1, 1)).div(torch.tensor(model.spec.std).view(3, 1, 1))
                     for im in x_pool]))
    run_job(reestimate_batch_norm(model, target_images, batch_size=64))
    a_pool = run_job(_embed(model, x_pool, sim, "target pool (AdaBN)"))
    a_test = run_job(_embed(model, x_test, sim, "target test (AdaBN)"))
    # As in AdaBN: source images keep the source statistics, target images get their own.
    record["adabn"] = summary_of(head_scores(e_src, y_src, a_test, y_test, l2))

    curves = {}
    for strategy in ("random", "margin", "typiclust"):
        runs = [active_learning(e_src, y_src, a_pool, y_pool, a_test, y_test, l2, strategy, s) for s in SEEDS]
        labels = [p["target_labels"] for p in runs[0]]
        values = np.asarray([[p["balanced_accuracy"] for p in r] for r in runs])
        curves[strategy] = {"target_labels": labels, "mean": values.mean(0).tolist(), "std": values.std(0).tolist()}
    record["active_learning_from_adabn"] = curves
    record["seconds"] = time.perf_counter() - started
    print(json.dumps(record, indent=1))
    print(write_json("da_blood.json", record))
    return 0


if __name__ == "__main__":
    RUNS.mkdir(parents=True, exist_ok=True)
    sys.exit(main())
