"""Active learning on 1,000 PathMNIST tiles with a small CNN trained from scratch (benchmark).

A stratified split fixed by seed 0: 700 pool tiles, 300 test tiles. Initial 20
random labels, batches of 10, up to 300 labels. Configurations: random, entropy,
the two best strategies of the digits benchmark (benchmarks/results/al_digits*.json,
ranked by area under the learning curve), and CEAL pseudo-labels on the best.
Resumable like al_digits.py. Usage:

    python benchmarks/al_pathmnist.py [--quick] [--configs ...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from atl_desktop.jobs import run_with_tqdm
from atl_desktop.simulate import Arm, SimData, SimulationConfig, simulate_job, write_outputs

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


def pathmnist_data() -> SimData:
    with np.load(DATA, allow_pickle=False) as f:
        x, y, classes = f["x"], f["y"].astype(np.int64), tuple(str(c) for c in f["classes"])
    test = stratified_split(y, TEST, seed=0)
    return SimData(x[~test], y[~test], x[test], y[test], classes)


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
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    stem = "al_pathmnist_quick" if args.quick else "al_pathmnist"
    config = SimulationConfig(
        budget=40 if args.quick else 300, batch=10, initial=20,
        seeds=tuple(range(1 if args.quick else args.seeds)), backbone="smallcnn",
        epochs=1 if args.quick else args.epochs, max_steps=args.steps, batch_size=args.batch_size,
        stop_set=POOL, device="cpu")
    ranking, why = digits_ranking()
    best_two = ranking[:2]
    names = list(dict.fromkeys(["random", "entropy", *best_two]))
    arms = [Arm(n, n) for n in names] + [Arm(f"{best_two[0]}+ceal", best_two[0], pseudo=True)]
    if args.configs:
        wanted = {c.strip() for c in args.configs.split(",")}
        arms = [a for a in arms if a.name in wanted or a.name == "random"]
    started = time.time()
    summary = run_with_tqdm(simulate_job(pathmnist_data(), arms, config, RESULTS / f"{stem}_runs"),
                            desc="simulate", quiet=args.quiet)
    final = summary["random_final_labels"]
    summary["notes"] = [
        f"pathmnist_1000: stratified split fixed by seed 0, {POOL} pool and {TEST} test tiles",
        f"small CNN from scratch (random init per seed); each round fine-tunes incrementally for "
        f"{config.max_steps} AdamW steps (lr 1e-3, batch {config.batch_size}; at most {config.epochs} epochs); "
        f"no augmentation; {len(config.seeds)} seed(s); CPU, 2 threads, shared with other work",
        f"the two best digits strategies: {', '.join(best_two)} ({why}); CEAL on {best_two[0]}",
        f"labels_to_match_random_{final}: fewest labels at which the mean curve reaches random's mean "
        f"accuracy at {final} labels (null: never within the budget)",
        f"wall time of this invocation: {time.time() - started:.0f} s (finished runs are reused)",
    ]
    paths = write_outputs(summary, RESULTS, stem=stem, title="PathMNIST (700-tile pool): test accuracy against labels")
    for name, arm in summary["arms"].items():
        print(f"{name:20} final {arm['final_accuracy']:.4f}  AULC {arm['aulc']:.4f}  "
              f"labels to match random@{final}: {arm[f'labels_to_match_random_{final}']}")
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
