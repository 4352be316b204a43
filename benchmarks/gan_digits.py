"""GAAL and ASAL on USPS digits with a small CNN pre-trained on MNIST (benchmark, not a test).

Part 1, label efficiency: the active-learning benchmark's setting (benchmarks/al_digits.py:
USPS x_train as the pool, a random subsample for time; all of x_test for evaluation;
each seed's starting model trained on the 10,000 MNIST test images; 20 random initial
labels, batches of 20) with four arms: random, entropy, GAAL and ASAL, 3 seeds. The
budget is smaller than al_digits' (200 labels, not 500) to keep this under an hour on
a shared CPU. One DCGAN is trained on the pool images (no labels) for the whole run.
GAAL's synthetic images are labelled by the simulation's stand-in expert, a small CNN
trained on every pool label (see atl_desktop/simulate_gan.py); ASAL matches generated
images to real pool images in pixel-PCA space with an LSH index.

Part 2, query time against pool size: for 10k, 100k and 1M pool feature vectors
(synthetic: real USPS PCA features plus noise), the time ASAL needs to choose a batch
of 20 (the latent search, measured once with the trained GAN and classifier, plus
20 LSH look-ups; exact search alongside, with LSH's recall against it) and the time
exhaustive entropy scoring needs (a small-CNN forward pass over every pool image,
throughput measured on 10,000 images; and, as a lower bound, the classifier head
alone on N x 256 bottleneck features, measured at every N). Index building, done once
per GAN rather than per query, is reported apart.

Writes benchmarks/results/gan.json (and gan_curves.png). Usage:

    python benchmarks/gan_digits.py [--quick] [--seeds 3] [--budget 200] [--parts efficiency,timing]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from al_digits import digits_data
from benchcommon import machine

from atl_desktop.jobs import run_job
from atl_desktop.simulate import Arm, SimulationConfig, plot_learning_curves, simulate_job
from atl_desktop.simulate_gan import GanSimConfig

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10_000, 100_000, 1_000_000)
QUERIES = 20


def efficiency(args, out: Path) -> tuple[dict, dict]:
    """Part 1: the simulation; returns (summary, the simulation's prepared GAN pieces)."""
    config = SimulationConfig(
        budget=args.budget, batch=20, initial=20, seeds=tuple(range(args.seeds)), backbone="smallcnn",
        epochs=20, max_steps=args.steps, lr=5e-4, batch_size=64, source_epochs=1, stop_set=300,
        pool_size=args.pool_size, device="cpu")
    gan = GanSimConfig(steps=args.gan_steps, width=32, latent_dim=100, space="pca", dims=32,
                       oracle_epochs=args.oracle_epochs)
    arms = [Arm("random", "random"), Arm("entropy", "entropy"), Arm("gaal", "gaal"), Arm("asal", "asal")]
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    last = time.time()

    def on_progress(p) -> None:
        nonlocal last
        if p.message.endswith(" done"):
            run = p.message[: -len(" done")]
            timings.setdefault(run, round(time.time() - last, 1))
            out.mkdir(parents=True, exist_ok=True)
            timings_path.write_text(json.dumps(timings, indent=1))
            if not args.quiet:
                print(f"{run}: {timings[run]:.0f} s", flush=True)
            last = time.time()

    summary = run_job(simulate_job(digits_data(), arms, config, out, gan=gan), on_progress=on_progress)
    summary["run_seconds"] = timings
    for name in ("gaal",):
        rounds = [r for runs in summary["arms"][name]["rounds"].values() for r in runs if "oracle_agreement" in r]
        summary["arms"][name]["mean_oracle_agreement"] = float(np.mean([r["oracle_agreement"] for r in rounds]))
        summary["arms"][name]["mean_synthetic_entropy"] = float(np.mean([r["synthetic_entropy"] for r in rounds]))
    return summary, {"config": config, "gan": gan}


def _median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timing(args, out: Path, sizes) -> dict:
    """Part 2: query time against pool size."""
    import torch

    from atl_desktop.active.gan import gan_from_bytes, images_to_tensor
    from atl_desktop.active.gansampling import (
        FeatureSpaceConfig,
        GanContext,
        LatentSearch,
        _latent_search,
        fit_feature_space,
        generated_features,
    )
    from atl_desktop.active.lsh import ExactIndex, LshConfig, LshIndex
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import load_model_file

    rng = np.random.default_rng(0)
    data = digits_data()
    gan_files = sorted((out / "runs").glob("gan-*.safetensors"))
    if not gan_files:
        raise SystemExit("run the efficiency part first: the timing uses its GAN")
    gan, _ = gan_from_bytes(gan_files[0].read_bytes())
    real = images_to_tensor(data.x_pool, gan.config)  # all 7291 USPS training images
    space = run_job(fit_feature_space(real, gan, FeatureSpaceConfig("pca", 32)))
    real_feats = space.transform(real)
    # The latent search climbs a trained classifier's entropy: the simulation's oracle network
    # (same architecture and cost as the learner) makes the generated queries realistic.
    oracle_files = sorted((out / "runs").glob("oracle-*.safetensors"))
    classifier = (load_model_file(oracle_files[0])[0] if oracle_files else build_model("smallcnn", 10, seed=0)).eval()
    ctx = GanContext(gan, classifier, torch.device("cpu"))
    search = LatentSearch()
    latent_s = _median_time(lambda: _latent_search(ctx, QUERIES, np.random.default_rng(1), search))
    result = _latent_search(ctx, QUERIES, np.random.default_rng(1), search)
    with torch.no_grad():
        queries = space.transform(gan.generator(result.z))
    spread = real_feats.std(axis=0)
    examples = generated_features(gan, space)
    # Recall is measured on more queries than one batch: 200 latent searches from other seeds.
    many_z = _latent_search(ctx, 200, np.random.default_rng(2), search).z
    with torch.no_grad():
        many = space.transform(gan.generator(many_z))

    # Exhaustive entropy: a forward pass of the small CNN over every pool image.
    images = torch.randn(10_000, 3, 28, 28)

    def forward_all():
        with torch.inference_mode():
            for s in range(0, len(images), 256):
                torch.softmax(classifier(images[s : s + 256]), dim=1)

    forward_s = _median_time(forward_all, repeats=1)
    throughput = len(images) / forward_s
    head = torch.nn.Linear(256, 10)
    rows = []
    for n in sizes:
        base = real_feats[rng.integers(0, len(real_feats), n)]
        feats = (base + 0.25 * spread * rng.standard_normal(base.shape)).astype(np.float32)
        del base
        t = time.perf_counter()
        lsh = LshIndex.build(feats, LshConfig(seed=0), example_queries=examples)
        build_s = time.perf_counter() - t
        lsh_s = _median_time(lambda lsh=lsh: lsh.search(queries, 1))
        exact = ExactIndex(feats)
        t = time.perf_counter()
        exact.search(queries, 1)
        exact_s = time.perf_counter() - t
        found, truth = lsh.search(many, 1), exact.search(many, 1)
        recall = float(np.mean(found.indices[:, 0] == truth.indices[:, 0]))
        ratio = float(np.mean(found.distances[:, 0] / np.maximum(truth.distances[:, 0], 1e-12)))
        head_s = _head_only(head, n, rng)
        asal_s = latent_s + lsh_s
        entropy_s = n / throughput
        rows.append({
            "pool": n, "asal_query_s": round(asal_s, 4), "asal_latent_search_s": round(latent_s, 4),
            "lsh_lookup_s": round(lsh_s, 5), "exact_lookup_s": round(exact_s, 4),
            "lsh_recall_at_1": recall, "lsh_distance_ratio": round(ratio, 4),
            "lsh_candidates_mean": float(found.candidates.mean()),
            "lsh_fallback_share": float(found.fallback.mean()), "lsh_tables": lsh.tables, "lsh_bits": lsh.bits,
            "lsh_build_s": round(build_s, 2),
            "entropy_full_s": round(entropy_s, 3), "entropy_full_measured": n == len(images),
            "entropy_head_only_s": round(head_s, 4),
            "ratio_asal_to_entropy_full": round(asal_s / entropy_s, 4),
            "ratio_asal_to_entropy_head_only": round(asal_s / head_s, 3),
        })
        if not args.quiet:
            print(json.dumps(rows[-1]), flush=True)
        del feats, lsh, exact
    return {"queries": QUERIES, "dims": 32, "forward_images_per_s": round(throughput, 1),
            "latent_search": {"steps": search.steps, "batch": QUERIES}, "rows": rows}


def _head_only(head, n: int, rng: np.random.Generator) -> float:
    """Seconds for softmax + entropy + top-20 over n x 256 features (made outside the clock)."""
    import torch

    total, best = 0.0, []
    with torch.inference_mode():
        for s in range(0, n, 65536):
            f = torch.from_numpy(rng.standard_normal((min(65536, n - s), 256), dtype=np.float32))
            t = time.perf_counter()
            logp = torch.log_softmax(head(f), dim=1)
            h = -(logp.exp() * logp).sum(1)
            best.append(torch.topk(h, min(QUERIES, len(h))).values)
            total += time.perf_counter() - t
    t = time.perf_counter()
    torch.topk(torch.cat(best), QUERIES)
    return total + time.perf_counter() - t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script (not the result)")
    parser.add_argument("--parts", default="efficiency,timing")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=16, help="optimiser steps per round's fine-tune")
    parser.add_argument("--gan-steps", type=int, default=2000)
    parser.add_argument("--oracle-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.budget, args.pool_size, args.gan_steps, args.oracle_epochs = 1, 40, 300, 50, 1
    stem = "gan_quick" if args.quick else "gan"
    out = RESULTS / f"{stem}_runs"
    if args.quick:
        shutil.rmtree(out, ignore_errors=True)
    parts = {p.strip() for p in args.parts.split(",")}
    started = time.time()
    result: dict = {"machine": machine(), "threads": args.threads}
    path = RESULTS / f"{stem}.json"
    if path.is_file():
        result = {**json.loads(path.read_text()), **result}
    if "efficiency" in parts:
        summary, _ = efficiency(args, out)
        plot_learning_curves(summary, RESULTS / f"{stem}_curves.png",
                             title="USPS (MNIST-pretrained small CNN): GAAL and ASAL against random and entropy")
        final = summary["random_final_labels"]
        result["efficiency"] = summary
        result["efficiency_table"] = {
            name: {"final_accuracy": arm["final_accuracy"], "aulc": arm["aulc"],
                   f"labels_to_match_random_{final}": arm["labels_to_match_random"]}
            for name, arm in summary["arms"].items()}
    if "timing" in parts:
        result["timing"] = timing(args, out, (2000, 5000) if args.quick else SIZES)
    result["wall_seconds_this_invocation"] = round(time.time() - started, 1)
    result["notes"] = [
        f"pool: a random subsample of {args.pool_size} of the 7291 USPS training images; test: the 2007 USPS "
        "test images; source: the 10,000 MNIST test images (1 epoch per seed)",
        f"budget {args.budget} labels (20 random, then batches of 20), {args.steps} AdamW steps per round "
        "(lr 5e-4, batch 64), 3 seeds: reduced from al_digits' 500 labels to fit an hour on a shared CPU",
        f"GAN: DCGAN at 16 px grey, latent 100, width 32, {args.gan_steps} steps on the pool images, trained once",
        "GAAL: 60 steps of normalised entropy ascent per batch of 20 codes on the latent sphere; its images are "
        f"labelled by a stand-in expert, a small CNN trained {args.oracle_epochs} epochs on every pool label "
        "(test accuracy in efficiency.gan.oracle_test_accuracy); each synthetic label costs one label",
        "ASAL: same latent search; nearest unlabelled pool image in 32-d pixel-PCA space: E2LSH, 16 tables, "
        "8 extra probes per table, bucket width 4x the distance at which generated images meet the pool",
        "timing recall: LSH's nearest neighbour against exact search for 200 generated high-entropy queries; "
        "distance ratio = LSH's neighbour distance over the exact one (1 = exact)",
        "timing: ASAL = latent search (constant in N) + LSH look-ups; exhaustive entropy = a small-CNN forward "
        "pass per pool image, throughput measured on 10,000 images and scaled to N (entropy_full_measured false "
        "where scaled); head-only = the linear head, softmax, entropy and top-20 on N x 256 features, measured",
        f"CPU, {args.threads} torch thread(s), shared with other benchmarks",
    ]
    path.write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    print("wrote", path)
    return 0


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


if __name__ == "__main__":
    sys.exit(main())
