"""Active learning on 1,000 PathMNIST tiles with a small CNN trained from scratch (benchmark).

Each seed s splits the tiles anew, stratified by class and fixed by s: 700 pool
tiles, 300 test tiles. Initial 20 random labels, batches of 10, up to 300
labels. Configurations: random, entropy, the two best strategies of the digits
benchmark (benchmarks/results/al_digits*.json, ranked by area under the
learning curve), and CEAL pseudo-labels on the best. Each round fine-tunes the
last model for the same number of AdamW steps as al_digits.py. Resumable like
al_digits.py. Usage:

    python benchmarks/al_pathmnist.py [--quick] [--configs ...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from benchcommon import machine

from atl_desktop.jobs import run_job
from atl_desktop.simulate import (
    Arm,
    SimData,
    SimulationConfig,
    simulate_job,
    summarise,
    write_outputs,
)

DATA = Path("/work/shared/data/pathmnist_1000.npz")
RESULTS = Path(__file__).resolve().parent / "results"
POOL, TEST = 700, 300
FALLBACK = ("margin", "hybrid")


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> np.ndarray:
    """Boolean test mask with exactly n_test rows, classes in proportion (largest remainder)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    share = counts * n_test / len(y)
    take = np.floor(share).astype(int)
    for k in np.argsort(-(share - take), kind="stable")[: n_test - take.sum()]:
        take[k] += 1
    test = np.zeros(len(y), dtype=bool)
    for c, k in zip(classes, take, strict=True):
        test[rng.permutation(np.flatnonzero(y == c))[:k]] = True
    return test


def pathmnist_data(seed: int) -> SimData:
    with np.load(DATA, allow_pickle=False) as f:
        x, y, classes = f["x"], f["y"].astype(np.int64), tuple(str(c) for c in f["classes"])
    test = stratified_split(y, TEST, seed=seed)
    return SimData(x[~test], y[~test], x[test], y[test], classes)


def run_seeds(arms, config: SimulationConfig, out: Path, quiet: bool) -> tuple[dict, float, float]:
    """Every seed on its own split; one summary over all seeds, and the wall time of all
    runs (kept in out/timings.json, so a resumed benchmark still reports it)."""
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    runs: dict = {a.name: {} for a in arms}
    for seed in config.seeds:
        last, cpu = time.time(), time.process_time()

        def on_progress(p) -> None:
            nonlocal last, cpu
            if p.message.endswith(" done"):
                run = p.message[: -len(" done")]
                if run not in timings:
                    timings[run] = {"wall": round(time.time() - last, 1),
                                    "cpu": round(time.process_time() - cpu, 1)}
                    out.mkdir(parents=True, exist_ok=True)
                    timings_path.write_text(json.dumps(timings, indent=1))
                    if not quiet:
                        print(f"{run}: {timings[run]['wall']:.0f} s ({timings[run]['cpu']:.0f} s CPU)", flush=True)
                last, cpu = time.time(), time.process_time()

        one = dataclasses.replace(config, seeds=(seed,))
        summary = run_job(simulate_job(pathmnist_data(seed), arms, one, out / f"split{seed}"),
                          on_progress=on_progress)
        for name, arm in summary["arms"].items():
            runs.setdefault(name, {})[seed] = arm["rounds"][str(seed)]
    names = [a.name for a in arms]
    full = [*arms, *(Arm(n, n) for n in runs if n not in names)]  # random, when simulate_job added it
    summary = summarise(runs, full, config, pathmnist_data(config.seeds[0]))
    spent = [timings.get(f"{n} seed {s}", {}) for n in runs for s in runs[n]]
    return summary, sum(t.get("wall", 0.0) for t in spent), sum(t.get("cpu", 0.0) for t in spent)


def digits_ranking() -> tuple[list[str], str]:
    for name in ("al_digits.json", "al_digits_stage1.json"):
        path = RESULTS / name
        if path.is_file():
            arms = json.loads(path.read_text())["arms"]
            plain = [n for n, a in arms.items() if not a["pseudo"] and a["method"] == "finetune" and n != "random"]
            plain.sort(key=lambda n: (-(arms[n]["aulc"] or 0.0), -arms[n]["final_accuracy"]))
            return plain, f"ranking by AULC from {name}"
    return list(FALLBACK), "digits results missing; margin and hybrid assumed"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--configs", help="comma-separated configuration names to run (random always)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--delta0", type=float, default=0.005, help="CEAL entropy threshold at the first round")
    parser.add_argument("--decay", type=float, default=0.00033, help="CEAL threshold decay per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stem", help="name of the result files (default al_pathmnist)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    stem = args.stem or ("al_pathmnist_quick" if args.quick else "al_pathmnist")
    config = SimulationConfig(
        budget=40 if args.quick else 300, batch=10, initial=20,
        seeds=tuple(range(1 if args.quick else args.seeds)), backbone="smallcnn",
        epochs=1 if args.quick else args.epochs, max_steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        stop_set=POOL, device="cpu", pseudo_delta0=args.delta0, pseudo_decay=args.decay)
    ranking, why = digits_ranking()
    best_two = ranking[:2]
    names = list(dict.fromkeys(["random", "entropy", *best_two]))
    arms = [Arm(n, n) for n in names] + [Arm(f"{best_two[0]}+ceal", best_two[0], pseudo=True)]
    if args.configs:
        wanted = {c.strip() for c in args.configs.split(",")}
        arms = [a for a in arms if a.name in wanted or a.name == "random"]
    started = time.time()
    summary, seconds, cpu_seconds = run_seeds(arms, config, RESULTS / f"{stem}_runs", args.quiet)
    final = summary["random_final_labels"]
    summary.update({
        "machine": machine(), "threads": args.threads,
        "epochs_per_round": f"{config.max_steps} AdamW steps of {config.batch_size} images per round "
                            f"(at most {config.epochs} epochs), lr {config.lr:g}",
        "wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
        "strategies_from_digits": best_two,
    })
    summary["notes"] = [
        f"pathmnist_1000: per seed s, a stratified split fixed by s: {POOL} pool and {TEST} test tiles",
        f"small CNN from scratch (random init per seed); each round fine-tunes incrementally for "
        f"{config.max_steps} AdamW steps (lr {config.lr:g}, batch {config.batch_size}; at most {config.epochs} "
        f"epochs); no augmentation; {len(config.seeds)} seed(s); CPU, {args.threads} torch thread(s), "
        "shared with other work",
        f"CEAL: entropy threshold delta0 {config.pseudo_delta0:g} nats, decay {config.pseudo_decay:g} per round",
        f"the two best digits strategies: {', '.join(best_two)} ({why}); CEAL on {best_two[0]}",
        f"labels_to_match_random_{final}: fewest labels at which the mean curve reaches random's mean "
        f"accuracy at {final} labels (null: never within the budget)",
        f"wall time of all runs: {seconds:.0f} s ({seconds / 60:.1f} min; this invocation "
        f"{time.time() - started:.0f} s, finished runs being reused); CPU time {cpu_seconds:.0f} s",
    ]
    paths = write_outputs(summary, RESULTS, stem=stem, title="PathMNIST (700-tile pool): test accuracy against labels")
    for name, arm in summary["arms"].items():
        print(f"{name:20} final {arm['final_accuracy']:.4f}  AULC {arm['aulc']:.4f}  "
              f"labels to match random@{final}: {arm[f'labels_to_match_random_{final}']}")
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
