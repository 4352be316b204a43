"""Active learning on real-resolution blood-cell photographs: the embedding-first loop (benchmark).

Data: ../shared/data/pbc_dev (5,979 JPEGs of about 360 px, 8 classes, CC BY 4.0), each photo
resized to SIZE px. One stratified split, fixed before anything ran: 30 % test, 70 % train pool.

Protocol (nothing is chosen on the test split):
1. Encoder: SimCLR (atl_desktop.transfer.selfsup) trained once on the train pool's images,
   without labels; embeddings of every image computed once.
2. Validation: 20 % of the train pool, stratified, is held out as a validation split and the
   rest is the development pool. The settings are chosen there by the area under the
   balanced-accuracy curve (labels 10..300, VAL_SEEDS): the logistic head's L2 penalty (with
   random sampling), then auto's switch point. TypiClust and ProbCover keep their papers' settings.
3. Test: every arm on the whole train pool with the chosen settings, TEST_SEEDS (fresh seeds),
   scored on the test split once.
Arms: random, TypiClust, ProbCover, margin and auto, each with the logistic head refitted after
every batch of 10; beside them, today's default loop (small CNN fine-tuned from scratch, 5 epochs
a round, batches of 20 from 20 random labels, as `atl simulate` runs it) up to 200 labels.
4. Second stage at 300 labels: the whole network fine-tuned on the images auto labelled, with a
   new project's recipe (store.keys.NEW_PROJECT_TRAINING and recipe_pbc.json's validated steps,
   batch and learning rate; nothing tuned here): from the self-supervised encoder, and a small
   CNN from scratch; beside them the small CNN on random's 300 labels.
Also timed: the self-supervised pre-training and the embedding pass per 1,000 images, and label
-> updated suggestions (refit the head, predict all 5,979 images) at p95.

Usage: python benchmarks/al_pbc.py [--steps N] [--skip-cnn] [--skip-second-stage]
Resumable: finished runs and the embeddings are kept in benchmarks/results/al_pbc_runs/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from benchcommon import machine, write_json

from atl_desktop.active.heads import LogisticHead, fit_scaler
from atl_desktop.jobs import run_job
from atl_desktop.simulate import (
    Arm,
    Embeddings,
    SimData,
    SimulationConfig,
    area_under_curve,
    labels_to_reach,
    run_embedding_arm,
    second_stage_job,
    simulate_job,
    summarise,
    write_outputs,
)
from atl_desktop.store.keys import NEW_PROJECT_TRAINING

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc_dev"
RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "al_pbc_runs"
SIZE = 64
SPLIT_SEED = 0  # the test split, fixed
VAL_SEED = 100  # the validation split inside the train pool
VAL_SEEDS = (100, 101)
TEST_SEEDS = (10, 11, 12)
BUDGET, BATCH = 300, 10
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
SWITCH_GRID = (2.0, 5.0, 10.0)  # auto: labels per class before uncertainty takes over
# TypiClust (k-NN 20) and ProbCover (purity 0.95) keep their papers' settings: no grid.


def stratified_mask(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        mask[rows[: round(share * len(rows))]] = True
    return mask


def load_pbc(size: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Every photo resized to size x size (uint8 RGB), cached as .npz beside the runs."""
    from PIL import Image

    cache = RUNS / f"pbc{size}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            return f["x"], f["y"], tuple(str(c) for c in f["classes"])
    classes = tuple(sorted(p.name for p in DATA.iterdir() if p.is_dir()))
    paths = [(p, k) for k, c in enumerate(classes) for p in sorted((DATA / c).glob("*.jpg"))]
    x = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(paths):
        with Image.open(path) as img:
            img.draft("RGB", (2 * size, 2 * size))  # JPEG decodes at a reduced scale: faster, same result
            x[i] = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    y = np.asarray([k for _, k in paths], dtype=np.int64)
    RUNS.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, y=y, classes=np.asarray(classes))
    return x, y, classes


def encoder_file(backbone: str, steps: int) -> Path:
    return RUNS / f"encoder-{backbone}-{steps}-{SIZE}.safetensors"


def encoder_embeddings(x_pool: np.ndarray, x_all: np.ndarray, steps: int, backbone: str) -> tuple[np.ndarray, dict]:
    """SimCLR on the pool's images, then embeddings of every image; cached by settings."""
    import torch

    from atl_desktop.models.checkpoints import load_model_file, save_model_file
    from atl_desktop.models.encoders import EncoderChoice, build_encoder
    from atl_desktop.simulate import _embed
    from atl_desktop.transfer.selfsup import SelfSupConfig, pretrain

    path = RUNS / f"embeddings-{backbone}-{steps}-{SIZE}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return f["e"], json.loads(str(f["info"]))
    config = SelfSupConfig(backbone=backbone, image_size=SIZE, steps=steps, device="cpu")
    saved = encoder_file(backbone, steps)  # kept: a later failure loses no training
    if saved.is_file():
        model, meta = load_model_file(saved, classes=[str(i) for i in range(8)])
        metrics, ssl_wall, ssl_cpu = meta["metrics"], meta["config"]["wall"], meta["config"]["cpu"]
    else:
        model = build_encoder(EncoderChoice("untrained:" + backbone, input_size=SIZE), 8)
        started = time.perf_counter()
        cpu = time.process_time()
        metrics = run_job(pretrain(model, x_pool, config),
                          on_progress=lambda p: p.done % 25 == 0 and print(
                              f"  SimCLR step {p.done}/{p.total} loss {p.metrics['loss']:.3f}", flush=True))
        ssl_wall, ssl_cpu = time.perf_counter() - started, time.process_time() - cpu
        save_model_file(saved, model, classes=[str(i) for i in range(8)], metrics=metrics,
                        config={"wall": ssl_wall, "cpu": ssl_cpu}, seed=0)
    started = time.perf_counter()
    e = run_job(_embed(model, x_all, SimulationConfig(device="cpu"), "embedding"))
    embed_wall = time.perf_counter() - started
    images_seen = steps * config.batch_size * 2
    info = {"selfsup": config.to_dict(), "final_loss": metrics["loss"], "torch_threads": torch.get_num_threads(),
            "pretrain_seconds": ssl_wall, "pretrain_cpu_seconds": ssl_cpu,
            "pretrain_seconds_per_1000_views": 1000 * ssl_wall / images_seen,
            "pretrain_seconds_per_1000_pool_images_one_epoch": 1000 * ssl_wall / images_seen * 2,
            "embed_seconds": embed_wall, "embed_seconds_per_1000_images": 1000 * embed_wall / len(x_all),
            "pool_images": int(len(x_pool))}
    np.savez(path, e=e, info=np.asarray(json.dumps(info)))
    return e, info


def run_arms(emb: Embeddings, y_pool, y_eval, arms, seeds, classes, tag: str, keep_runs: bool = False):
    config = SimulationConfig(budget=BUDGET, batch=BATCH, initial=0, seeds=seeds, metric="balanced_accuracy")
    runs: dict = {}
    for arm in arms:
        runs[arm.name] = {}
        for seed in seeds:
            key = hashlib.sha256(json.dumps(arm.to_json(), sort_keys=True).encode()).hexdigest()[:12]
            path = RUNS / f"{tag}-{arm.name}-{key}-{seed}.json"
            if path.is_file():
                runs[arm.name][seed] = json.loads(path.read_text())
                continue
            started = time.perf_counter()
            records = run_job(run_embedding_arm(emb, y_pool, y_eval, arm, config, seed, classes))
            records[-1]["seconds"] = time.perf_counter() - started
            path.write_text(json.dumps(records))
            runs[arm.name][seed] = records
    summary = summarise(runs, arms, config)
    return (summary, runs) if keep_runs else summary


def aulc_per_seed(summary: dict, name: str) -> list[float]:
    arm = summary["arms"][name]
    return [area_under_curve(arm["labels_per_seed"][s], arm["balanced_accuracy_per_seed"][s])
            for s in sorted(arm["labels_per_seed"])]


def best_by_aulc(summary: dict) -> str:
    return max(summary["arms"], key=lambda n: summary["arms"][n]["aulc"])


def choose_settings(emb_dev: Embeddings, y_dev, y_val, classes) -> dict:
    """Every setting, chosen on the validation split."""
    # Each penalty with random sampling, the curve's area on the validation split.
    l2_aulc = {}
    for n in L2_GRID:
        arm = Arm("random", "random", head="logreg", head_options={"l2": n})
        l2_aulc[n] = run_arms(emb_dev, y_dev, y_val, [arm], VAL_SEEDS, classes, f"val-l2={n:g}")["arms"]["random"]["aulc"]
    l2 = max(l2_aulc, key=l2_aulc.get)
    opts = {"l2": l2}
    log = {"l2": {f"{n:g}": v for n, v in l2_aulc.items()}}
    grids = {
        "auto": [Arm(f"auto-{v:g}", "auto", params={"typical_per_class": v}, head="logreg", head_options=opts)
                 for v in SWITCH_GRID],
    }
    params = {}
    for name, arms in grids.items():
        arms = [Arm("random", "random", head="logreg", head_options=opts), *arms]
        s = run_arms(emb_dev, y_dev, y_val, arms, VAL_SEEDS, classes, "val")
        candidates = {a.name: a for a in arms[1:]}
        best = max(candidates, key=lambda n: s["arms"][n]["aulc"])
        params[name] = dict(candidates[best].params)
        log[name] = {n: s["arms"][n]["aulc"] for n in candidates}
    return {"head_options": opts, "params": params, "validation_aulc": log}


def cnn_default(x_pool, y_pool, x_test, y_test, classes, seeds) -> dict:
    """Today's default loop: the small CNN fine-tuned from scratch (atl simulate's defaults)."""
    data = SimData(x_pool, y_pool, x_test, y_test, classes)
    config = SimulationConfig(budget=200, batch=20, initial=20, seeds=seeds, backbone="smallcnn",
                              metric="balanced_accuracy")
    return run_job(simulate_job(data, [Arm("random", "random"), Arm("margin", "margin")], config,
                                RUNS / "cnn"))


def _every_100(p) -> None:
    if p.done % 100 == 0:
        print(f"  {p.message} {p.done}/{p.total}", flush=True)


def second_stage(data: SimData, runs: dict, encoder: Path, seeds) -> dict:
    """Fine-tune whole networks on the first stage's 300 labels (see the module's docstring)."""
    from atl_desktop.models.checkpoints import load_model_file
    from atl_desktop.models.registry import build_model

    recipe = json.loads((RESULTS / "recipe_pbc.json").read_text())["chosen"]  # validated there
    config = SimulationConfig(epochs=1, input_size=SIZE, min_steps=recipe["min_steps"],
                              batch_size=recipe["batch_size"], lr=recipe["lr"],
                              schedule=NEW_PROJECT_TRAINING["schedule"], augment="dihedral",
                              metric="balanced_accuracy")
    starts = {"selfsup_finetune_auto": ("auto", lambda s: load_model_file(encoder, classes=[str(i) for i in range(8)])[0]),
              "smallcnn_auto": ("auto", lambda s: build_model("smallcnn", len(data.classes), seed=s,
                                                              input_size=SIZE)),
              "smallcnn_random": ("random", lambda s: build_model("smallcnn", len(data.classes), seed=s,
                                                                  input_size=SIZE))}
    out: dict = {"recipe": {**config.to_json(), "chosen_in": "recipe_pbc.json"}}
    for name, (arm, make) in starts.items():
        per_seed = {}
        for seed in seeds:
            path = RUNS / f"second-{name}-{seed}.json"
            if not path.is_file():
                rows = np.asarray(runs[arm][seed][-1]["labelled_rows"])
                started = time.perf_counter()
                result = run_job(second_stage_job(make(seed), data, rows, config, seed), on_progress=_every_100)
                path.write_text(json.dumps({"labels": int(len(rows)), "seconds": time.perf_counter() - started,
                                            **{k: result[k] for k in ("accuracy", "balanced_accuracy")}}))
            per_seed[seed] = json.loads(path.read_text())
        values = [r["balanced_accuracy"] for r in per_seed.values()]
        out[name] = {"first_stage_arm": arm, "labels": per_seed[seeds[0]]["labels"],
                     "balanced_accuracy_mean": float(np.mean(values)), "balanced_accuracy_std": float(np.std(values, ddof=1)),
                     "per_seed": {str(s): r for s, r in per_seed.items()}}
        print(f"second stage {name}: {out[name]['balanced_accuracy_mean']:.3f} ± "
              f"{out[name]['balanced_accuracy_std']:.3f}", flush=True)
    return out


def suggestion_latency(e_all: np.ndarray, y_pool: np.ndarray, pool_rows: np.ndarray) -> dict:
    """Label -> updated suggestions: refit the head on L labels, predict every image (p95)."""
    scaler = fit_scaler(e_all)
    z = scaler(e_all)
    times = []
    rng = np.random.default_rng(0)
    for n in (10, 40, 100, 200, 300):
        for _ in range(20):
            rows = rng.choice(pool_rows, n, replace=False)
            started = time.perf_counter()
            LogisticHead(8, l2=1e-2).fit(z[rows], y_pool[rows]).predict_proba(z)
            times.append(1000 * (time.perf_counter() - started))
    return {"images": int(len(e_all)), "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95)), "max_ms": float(np.max(times)), "fits": len(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="SimCLR steps")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--skip-cnn", action="store_true", help="leave out today's default (slow) arm")
    parser.add_argument("--skip-second-stage", action="store_true", help="leave out the fine-tunes at 300 labels")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadier on a shared machine, where 2 threads wait for each other)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    RUNS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_at_start = machine()
    x, y, classes = load_pbc(SIZE)
    test = stratified_mask(y, 0.3, SPLIT_SEED)
    pool_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    print(f"{len(pool_rows)} pool and {len(test_rows)} test images", flush=True)
    e, enc_info = encoder_embeddings(x[pool_rows], x, args.steps, args.backbone)
    print(f"encoder: {enc_info}", flush=True)

    val = stratified_mask(y[pool_rows], 0.2, VAL_SEED)
    dev_rows, val_rows = pool_rows[~val], pool_rows[val]
    chosen = choose_settings(Embeddings(e[dev_rows], e[val_rows], {}), y[dev_rows], y[val_rows], classes)
    print(f"chosen on validation: {chosen}", flush=True)

    opts, params = chosen["head_options"], chosen["params"]
    arms = [Arm("random", "random", head="logreg", head_options=opts)]
    arms += [Arm(name, name, params=params.get(name, {}), head="logreg", head_options=opts)
             for name in ("typiclust", "probcover", "margin", "auto")]
    summary, runs = run_arms(Embeddings(e[pool_rows], e[test_rows], {}), y[pool_rows], y[test_rows], arms,
                             TEST_SEEDS, classes, "test", keep_runs=True)
    random_aulc = aulc_per_seed(summary, "random")
    target = summary["random_final_accuracy"]
    for name, arm in summary["arms"].items():
        diffs = np.asarray(aulc_per_seed(summary, name)) - np.asarray(random_aulc)
        arm["aulc_minus_random"] = {"mean": float(diffs.mean()), "std": float(diffs.std(ddof=1)),
                                    "per_seed": diffs.tolist(),
                                    "beats_by_2_sd": bool(diffs.mean() > 2 * diffs.std(ddof=1))}
        curve = dict(zip(arm["labels"], arm["mean"], strict=True))
        arm["at_40"], arm["at_200"] = curve.get(40), curve.get(200)
        arm["labels_to_random_300"] = labels_to_reach(arm["labels"], arm["mean"], target)
    result = {
        "benchmark": "al_pbc", "machine": load_at_start, "data": str(DATA.name), "image_size": SIZE,
        "pool": len(pool_rows), "test": len(test_rows), "budget": BUDGET, "batch": BATCH,
        "test_seeds": TEST_SEEDS, "validation_seeds": VAL_SEEDS, "encoder": enc_info, "chosen": chosen,
        "summary": summary, "suggestion_latency": suggestion_latency(e, y, pool_rows),
    }
    write_outputs(summary, RESULTS, stem="al_pbc", title="pbc_dev: test balanced accuracy against labels")
    if not args.skip_second_stage:
        data = SimData(x[pool_rows], y[pool_rows], x[test_rows], y[test_rows], classes)
        result["second_stage"] = second_stage(data, runs, encoder_file(args.backbone, args.steps), TEST_SEEDS)
    if not args.skip_cnn:
        result["cnn_default"] = cnn_default(x[pool_rows], y[pool_rows], x[test_rows], y[test_rows], classes,
                                            TEST_SEEDS)
    result["seconds"] = time.perf_counter() - started
    print(write_json("al_pbc_summary.json", result))
    for name, arm in summary["arms"].items():
        print(f"{name:10} @40 {arm['at_40']:.3f} @200 {arm['at_200']:.3f} @300 {arm['final_accuracy']:.3f} "
              f"AULC {arm['aulc']:.3f} (vs random {arm['aulc_minus_random']['mean']:+.3f} "
              f"± {arm['aulc_minus_random']['std']:.3f}) reaches random@300 with {arm['labels_to_random_300']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
