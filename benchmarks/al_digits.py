"""Active learning on USPS digits with a small CNN pre-trained on MNIST (benchmark, not a test).

Target: USPS x_train as the pool (a random subsample, for time), x_test for
evaluation, resized to 28x28 by the model's input transform. Source: the MNIST
test set (10,000 images), on which each seed's starting model is trained.
Initial 20 random labels, batches of 20, up to 500 labels, 3 seeds.

Stage 1: random, entropy, margin, coreset, mmd, aift, hybrid.
Stage 2: CEAL pseudo-labels on top of random and of the two best strategies.
Stage 3: the best CEAL configuration again with a domain-adaptation method in
each round's fine-tune; with --adapt-steps N, also with N steps of that method
on the source and the unlabelled pool before the first query (round 0), as a
user adapts the source model before labelling (it costs no labels).
"Best" = the largest area under the mean learning curve (AULC).

Each round fine-tunes the last model for a fixed number of AdamW steps (16 by
default, lr 5e-4), the same for every configuration: the whole run has to fit
in an hour on a shared 2-core CPU, one thread (another benchmark runs beside it).

Resumable: every finished (configuration, seed) run is kept in
benchmarks/results/al_digits_runs/runs/ (with its wall time in timings.json)
and reused. Usage:

    python benchmarks/al_digits.py [--quick] [--configs random,entropy,...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from benchcommon import machine

from atl_desktop.jobs import run_job
from atl_desktop.simulate import Arm, SimData, SimulationConfig, simulate_job, write_outputs

DATA = Path("/work/shared/data")
RESULTS = Path(__file__).resolve().parent / "results"
STAGE1 = ("random", "entropy", "margin", "coreset", "mmd", "aift", "hybrid")
FALLBACK_METHOD = "dann"


def digits_data() -> SimData:
    with np.load(DATA / "digits_usps.npz", allow_pickle=False) as usps, \
            np.load(DATA / "digits_mnist_test.npz", allow_pickle=False) as mnist:
        if [str(c) for c in usps["classes"]] != [str(c) for c in mnist["classes"]]:
            raise SystemExit("USPS and MNIST class lists differ")
        return SimData(usps["x_train"], usps["y_train"].astype(np.int64), usps["x_test"],
                       usps["y_test"].astype(np.int64), tuple(str(c) for c in usps["classes"]),
                       x_source=mnist["x"], y_source=mnist["y"].astype(np.int64))


def rank(summary: dict, names: list[str]) -> list[str]:
    """Best first: larger area under the mean learning curve, then higher final accuracy."""
    arms = summary["arms"]
    return sorted(names, key=lambda n: (-(arms[n]["aulc"] or 0.0), -arms[n]["final_accuracy"]))


def best_method(methods: dict) -> tuple[str | None, str]:
    """The domain-adaptation method with the best mean MNIST->USPS accuracy in the transfer
    benchmark's results (benchmarks/results/transfer_digits.json), among those a round's
    fine-tune can use: they must learn from the labelled target images as well as the
    unlabelled ones (ADDA, for one, trains on unlabelled target images only, so the
    expert's labels would change nothing). Else DANN."""
    path = RESULTS / "transfer_digits.json"
    try:
        table = json.loads(path.read_text()).get("M->U", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        table = {}
    means = {name: row["mean"] for name, row in table.items()
             if name in methods and isinstance(row, dict) and isinstance(row.get("mean"), (int, float))}
    usable = {name: m for name, m in means.items()
              if methods[name].uses_unlabelled_target and methods[name].uses_target_labels}
    if usable:
        best = max(usable, key=usable.get)
        why = f"best mean M->U accuracy in {path.name} ({usable[best]:.2f} %) among methods that use target labels"
        overall = max(means, key=means.get)
        if overall != best:
            why += f"; {overall} ({means[overall]:.2f} %) is better but ignores target labels"
        return best, why
    if FALLBACK_METHOD in methods:
        return FALLBACK_METHOD, "no transfer benchmark result; DANN used as the brief says"
    return None, "no domain-adaptation method available; stage 3 left out"


def method_text(method: str | None, why: str) -> str:
    return f"{method or 'none'} ({why})"


def run(data, arms, config, out: Path, quiet: bool, filters: set[str] | None):
    """Simulate the arms (finished runs are reused); each new run's wall time goes to
    out/timings.json (a seed's first new run includes its source pre-training)."""
    chosen = [a for a in arms if filters is None or a.name in filters or a.name == "random"]
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    last, cpu = time.time(), time.process_time()

    def on_progress(p) -> None:
        nonlocal last, cpu
        if p.message.endswith(" done"):
            run = p.message[: -len(" done")]
            if run not in timings:
                timings[run] = {"wall": round(time.time() - last, 1), "cpu": round(time.process_time() - cpu, 1)}
                timings_path.parent.mkdir(parents=True, exist_ok=True)
                timings_path.write_text(json.dumps(timings, indent=1))
                if not quiet:
                    print(f"{run}: {timings[run]['wall']:.0f} s ({timings[run]['cpu']:.0f} s CPU)", flush=True)
            last, cpu = time.time(), time.process_time()

    return run_job(simulate_job(data, chosen, config, out), on_progress=on_progress), timings


def total_seconds(summary: dict, timings: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of every run in the summary, however many invocations it took."""
    spent = [timings.get(f"{name} seed {seed}", {}) for name, arm in summary["arms"].items()
             for seed in arm["rounds"]]
    return sum(t.get("wall", 0.0) for t in spent), sum(t.get("cpu", 0.0) for t in spent)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script (not the result)")
    parser.add_argument("--configs", help="comma-separated configuration names to run (random always)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20, help="epochs per round's fine-tune (at most)")
    parser.add_argument("--steps", type=int, default=16, help="optimiser steps per round's fine-tune (at most)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--source-epochs", type=int, default=1)
    parser.add_argument("--stop-set", type=int, default=300)
    parser.add_argument("--delta0", type=float, default=0.005, help="CEAL entropy threshold at the first round")
    parser.add_argument("--decay", type=float, default=0.00033, help="CEAL threshold decay per round")
    parser.add_argument("--max-per-class", type=int, help="CEAL: at most this many pseudo-labels per class "
                                                          "and round, the most confident (default: no cap)")
    parser.add_argument("--stages", type=int, default=3, help="run stages 1..N only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--method", help="domain-adaptation method(s) of stage 3, comma-separated (default: "
                                         "the best in transfer_digits.json that uses target labels)")
    parser.add_argument("--adapt-steps", type=int, default=0,
                        help="stage 3 also runs each method with this many steps of adaptation to the "
                             "unlabelled pool before the first query (0: not)")
    parser.add_argument("--stem", help="name of the result files (default al_digits)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from atl_desktop.transfer.methods import METHODS

    torch.set_num_threads(args.threads)
    stem = args.stem or ("al_digits_quick" if args.quick else "al_digits")
    out = RESULTS / f"{stem}_runs"
    budget = 60 if args.quick else 500
    config = SimulationConfig(
        budget=budget, batch=20, initial=20, seeds=tuple(range(1 if args.quick else args.seeds)),
        backbone="smallcnn", epochs=1 if args.quick else args.epochs, max_steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, source_epochs=1 if args.quick else args.source_epochs,
        stop_set=args.stop_set, pool_size=400 if args.quick else args.pool_size, device="cpu",
        pseudo_delta0=args.delta0, pseudo_decay=args.decay, pseudo_max_per_class=args.max_per_class)
    data = digits_data()
    filters = None if not args.configs else {c.strip() for c in args.configs.split(",")}
    started = time.time()

    stage1 = [Arm(s, s) for s in STAGE1]
    summary, timings = run(data, stage1, config, out, args.quiet, filters)
    plain = [n for n in rank(summary, list(summary["arms"])) if n != "random"]
    best_two = plain[:2]
    if args.stages < 2:
        summary["notes"] = [f"stage 1 only; ranking by AULC: {', '.join(plain)}"]
        write_outputs(summary, RESULTS, stem=f"{stem}_stage1", title="USPS, stage 1")
        return 0
    stage2 = [Arm("random+ceal", "random", pseudo=True)] + [Arm(f"{n}+ceal", n, pseudo=True) for n in best_two]
    summary, timings = run(data, stage1 + stage2, config, out, args.quiet, filters)
    ceal = [a.name for a in stage2 if a.name in summary["arms"]]
    arms = stage1 + stage2
    method, why = best_method(METHODS)
    if args.method is not None:
        method, why = args.method, f"chosen with --method; the default now: {method_text(method, why)}"
    methods = [] if method is None else method.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    best_ceal = rank(summary, ceal)[0] if ceal else None
    if methods and best_ceal is not None:
        base = next(a for a in stage2 if a.name == best_ceal)
        arms += [Arm(f"{best_ceal}+{m}", base.strategy, pseudo=True, method=m) for m in methods]
        if args.adapt_steps:
            arms += [Arm(f"{best_ceal}+{m}+adapt{args.adapt_steps}", base.strategy, pseudo=True, method=m,
                         adapt_steps=args.adapt_steps) for m in methods]
        summary, timings = run(data, arms, config, out, args.quiet, filters)

    final = summary["random_final_labels"]
    seconds, cpu_seconds = total_seconds(summary, timings)
    summary.update({
        "machine": machine(), "threads": args.threads,
        "epochs_per_round": f"{config.max_steps} AdamW steps of {config.batch_size} images per round "
                            f"(at most {config.epochs} epochs), lr {config.lr:g}",
        "wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
        "stage1_ranking": plain, "best_two": best_two, "domain_adaptation": {"method": method, "why": why},
    })
    best = max(summary["arms"], key=lambda n: (-(summary["arms"][n][f"labels_to_match_random_{final}"] or 10**9),
                                               summary["arms"][n]["aulc"] or 0.0))
    summary["best"] = {"name": best, f"labels_to_match_random_{final}":
                       summary["arms"][best][f"labels_to_match_random_{final}"]}
    summary["notes"] = [
        (f"pool: a random subsample of {config.pool_size} of the 7291 USPS training images (for time); "
         if config.pool_size and config.pool_size < len(data.y_pool) else "pool: all 7291 USPS training images; ")
        + "test: all 2007 USPS test images; source: the 10,000 MNIST test images",
        f"small CNN; {config.source_epochs} source epoch(s) per seed; each round fine-tunes incrementally "
        f"from the last model for {config.max_steps} AdamW steps (lr {config.lr:g}, batch {config.batch_size}; "
        f"at most {config.epochs} epochs); no augmentation; stop set of {config.stop_set} pool images; "
        f"{len(config.seeds)} seed(s); CPU, {args.threads} torch thread(s), shared with another benchmark",
        f"CEAL: entropy threshold delta0 {config.pseudo_delta0:g} nats, decay {config.pseudo_decay:g} per round "
        "(the paper's values)"
        + (f", at most {config.pseudo_max_per_class} per class and round" if config.pseudo_max_per_class else "")
        + "; pseudo-labels join the next fine-tune only",
        "best = largest area under the mean learning curve (AULC); "
        f"stage 1 ranking: {', '.join(plain)}; the two best: {', '.join(best_two)}",
        f"CEAL configurations ranked: {', '.join(rank(summary, ceal)) if ceal else 'none run'}",
        f"domain adaptation in stage 3: {method or 'none'} ({why})"
        + (f"; the '+adapt{args.adapt_steps}' configurations first adapt for {args.adapt_steps} steps of their "
           f"method on the source images and the unlabelled pool (with the {config.initial} initial labels) before "
           "the first query" if args.adapt_steps else ""),
        f"labels_to_match_random_{final}: fewest labels at which the mean curve reaches random's mean "
        f"accuracy at {final} labels (null: never within the budget)",
        f"wall time of all runs: {seconds:.0f} s ({seconds / 60:.1f} min; this invocation "
        f"{time.time() - started:.0f} s, finished runs being reused); CPU time {cpu_seconds:.0f} s "
        "(the wall time is longer by the share of the 2 cores that other work took)",
    ]
    summary["goal"] = "best configuration needs <= 120 labels to match random at 500"
    paths = write_outputs(summary, RESULTS, stem=stem,
                          title=f"USPS, pool of {summary['pool']} (MNIST-pretrained small CNN): test accuracy")
    for name, arm in summary["arms"].items():
        print(f"{name:28} final {arm['final_accuracy']:.4f}  AULC {arm['aulc']:.4f}  "
              f"labels to match random@{final}: {arm[f'labels_to_match_random_{final}']}")
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
