"""Do the audit sample's 95 % intervals hold 95 % of the time? (benchmark)

Data: ../shared/data/pbc_dev (5,979 blood-cell JPEGs, 8 classes), each photo resized to SIZE
px, with al_pbc.py's stratified split: 30 % test, 70 % pool (SPLIT_SEED 0).

A fixed model: an untrained ResNet-18's embeddings (atl's cold-start encoder, no weights) and
the logistic head of atl_desktop.active.heads fitted on TRAIN_LABELS pool images drawn at
random. Its true accuracy and balanced accuracy are measured on the whole test split, and on
the rest of the pool (the unlabelled pool, which is what the audit samples). Then, for each
audit size n, REPEATS audits: n images drawn uniformly at random, without replacement, from
the unlabelled pool, and atl_desktop.active.audit's intervals from their labels. Reported: the
share of intervals that contain the true value (goal 93-97 %), their mean width, and for
balanced accuracy also the share of audits with a class missing (the estimate then covers
only the classes seen) and, for comparison, the plain Wald interval's coverage.

Usage: python benchmarks/audit.py [--repeats N]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from al_pbc import SPLIT_SEED, load_pbc, stratified_mask  # noqa: E402
from benchcommon import machine, write_json  # noqa: E402

from atl_desktop.active.audit import Z95, audit_estimate  # noqa: E402
from atl_desktop.active.heads import head_probs  # noqa: E402

SIZE = 64
TRAIN_LABELS = 300
MODEL_SEED = 0
AUDIT_SIZES = (30, 60, 120)
REPEATS = 1000
AUDIT_SEED = 1


def embed(x: np.ndarray) -> np.ndarray:
    """The untrained ResNet-18's embeddings of every image (one torch thread)."""
    import torch

    from atl_desktop.jobs import run_job
    from atl_desktop.models.encoders import EncoderChoice, build_encoder
    from atl_desktop.simulate import SimulationConfig, _embed

    torch.manual_seed(0)
    model = build_encoder(EncoderChoice("untrained:resnet18", input_size=SIZE), 8)
    return run_job(_embed(model, x, SimulationConfig(device="cpu"), "embedding"))


def accuracy_and_balanced(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[float, float]:
    recalls = [float(np.mean(pred[y == k] == k)) for k in range(n_classes)]
    return float(np.mean(pred == y)), float(np.mean(recalls))


def rounded(values: dict[str, float]) -> dict[str, float]:
    """4 decimals: what the README quotes (coverage needs no rounding: a count over REPEATS)."""
    return {key: round(value, 4) for key, value in values.items()}


def wald_balanced(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[float, float]:
    """The plain Wald interval of balanced accuracy over the classes seen: sum p(1-p)/n / K²."""
    counts = np.bincount(y, minlength=n_classes)
    seen = counts > 0
    correct = np.bincount(y, weights=pred == y, minlength=n_classes)[seen]
    p = correct / counts[seen]
    half = Z95 * math.sqrt(float(np.sum(p * (1 - p) / counts[seen]))) / seen.sum()
    return float(p.mean() - half), float(p.mean() + half)


def simulate_audits(y: np.ndarray, pred: np.ndarray, classes: tuple[str, ...], n: int, repeats: int,
                    truth: dict[str, dict[str, float]], rng: np.random.Generator) -> dict:
    hits = {f"{metric}_{where}": 0 for metric in ("accuracy", "balanced_accuracy", "balanced_wald")
            for where in truth}
    widths = {"accuracy": [], "balanced_accuracy": []}
    missing = 0
    for _ in range(repeats):
        rows = rng.choice(len(y), size=n, replace=False)
        estimate = audit_estimate(y[rows], pred[rows], classes)
        wald = wald_balanced(y[rows], pred[rows], len(classes))
        missing += bool(estimate.missing_classes)
        for metric, interval in (("accuracy", estimate.accuracy), ("balanced_accuracy", estimate.balanced_accuracy)):
            widths[metric].append(interval.width)
            for where, values in truth.items():
                hits[f"{metric}_{where}"] += interval.lower <= values[metric] <= interval.upper
        for where, values in truth.items():
            hits[f"balanced_wald_{where}"] += wald[0] <= values["balanced_accuracy"] <= wald[1]
    return {
        "audit_labels": n,
        "coverage": {key: count / repeats for key, count in hits.items()},
        "mean_width": {metric: round(float(np.mean(w)), 4) for metric, w in widths.items()},
        "share_with_a_class_missing": missing / repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # before machine(), which records the thread count
    started = time.perf_counter()
    info = machine()
    x, y, classes = load_pbc(SIZE)
    test = stratified_mask(y, 0.3, SPLIT_SEED)
    pool = np.flatnonzero(~test)
    t0 = time.perf_counter()
    e = embed(x)
    embed_seconds = time.perf_counter() - t0
    rng = np.random.default_rng(MODEL_SEED)
    train = np.sort(rng.choice(pool, size=TRAIN_LABELS, replace=False))
    probs = head_probs("logreg", e, train, y[train], len(classes))
    pred = probs.argmax(axis=1)
    unlabelled = np.setdiff1d(pool, train)
    truth = {"test": dict(zip(("accuracy", "balanced_accuracy"),
                              accuracy_and_balanced(y[test], pred[test], len(classes)), strict=True)),
             "unlabelled_pool": dict(zip(("accuracy", "balanced_accuracy"),
                                         accuracy_and_balanced(y[unlabelled], pred[unlabelled], len(classes)),
                                         strict=True))}
    print(f"true values: {truth}", flush=True)
    audit_rng = np.random.default_rng(AUDIT_SEED)
    audits = [simulate_audits(y[unlabelled], pred[unlabelled], classes, n, args.repeats, truth, audit_rng)
              for n in AUDIT_SIZES]
    for a in audits:
        print(a, flush=True)
    result = {
        "machine": info,
        "data": "pbc_dev", "image_size": SIZE, "classes": list(classes),
        "split": {"test": int(test.sum()), "pool": int(len(pool)), "unlabelled_pool": int(len(unlabelled)),
                  "split_seed": SPLIT_SEED},
        "model": {"encoder": "untrained:resnet18", "head": "logreg (active.heads, default L2)",
                  "train_labels": TRAIN_LABELS, "seed": MODEL_SEED},
        "truth": {where: rounded(values) for where, values in truth.items()},
        "audits": audits, "repeats": args.repeats, "audit_seed": AUDIT_SEED,
        "intervals": {"accuracy": "Wilson score, 95 %",
                      "balanced_accuracy": "mean of per-class recalls over the classes seen; adjusted Wald "
                                           "(one success and one failure added per class), 95 %",
                      "balanced_wald": "plain Wald, sum p(1-p)/n / K^2, for comparison"},
        "goal": "coverage 0.93-0.97 against the true test value",
        "embed_seconds": round(embed_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(write_json("audit.json", result))


if __name__ == "__main__":
    main()
