"""Finding wrong labels on pbc_dev with confident learning on cached embeddings (benchmark).

Every pbc_dev image is taken as labelled (all 5,979, as a project that has been labelled
for a while), with the SimCLR embeddings of benchmarks/al_pbc.py (run it first). 5 % of the
labels are flipped: (a) to a class drawn at random among the others; (b) to the most
confusable class (for each true class, the class it is most often mistaken for by an
out-of-fold head on clean labels). Confident learning (atl_desktop.active.label_errors,
5 folds) then flags suspects; the flagged set is scored by precision and recall, and so is
every prefix of the ranking (precision and recall at k = the number of flips). Three seeds of
flips; the time to flag all 5,979 images is measured.

Usage: python benchmarks/label_errors.py
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from al_pbc import RUNS, SIZE, load_pbc
from benchcommon import machine, write_json

from atl_desktop.active.label_errors import find_label_errors, out_of_fold_probs

SHARE = 0.05
SEEDS = (0, 1, 2)


def most_confusable(e: np.ndarray, y: np.ndarray, c: int) -> np.ndarray:
    probs = out_of_fold_probs(e, y, c, seed=99)
    confusion = np.zeros((c, c))
    np.add.at(confusion, (y, probs.argmax(1)), 1)
    np.fill_diagonal(confusion, -1)
    return confusion.argmax(axis=1)


def run(e: np.ndarray, y: np.ndarray, c: int, kind: str, seed: int, confusable: np.ndarray) -> dict:
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y), round(SHARE * len(y)), replace=False)
    noisy = y.copy()
    if kind == "random":
        noisy[flipped] = (y[flipped] + rng.integers(1, c, len(flipped))) % c
    else:
        noisy[flipped] = confusable[y[flipped]]
    started = time.perf_counter()
    suspects = find_label_errors(out_of_fold_probs(e, noisy, c), noisy)
    seconds = time.perf_counter() - started
    flagged = np.asarray([s.row for s in suspects], dtype=np.int64)
    truth = np.zeros(len(y), dtype=bool)
    truth[flipped] = True
    hits = truth[flagged]
    k = len(flipped)
    return {"kind": kind, "seed": seed, "flipped": int(k), "flagged": int(len(flagged)),
            "precision": float(hits.mean()) if len(hits) else 0.0, "recall": float(hits.sum() / k),
            "precision_at_k": float(hits[:k].mean()) if len(hits) else 0.0,
            "recall_at_k": float(hits[:k].sum() / k), "seconds": seconds}


def main() -> int:
    files = sorted(RUNS.glob("embeddings-*.npz"))
    if not files:
        print("Run benchmarks/al_pbc.py first: it makes the embeddings.", file=sys.stderr)
        return 1
    with np.load(files[0], allow_pickle=False) as f:
        e = f["e"]
    _, y, classes = load_pbc(SIZE)
    c = len(classes)
    confusable = most_confusable(e, y, c)
    runs = [run(e, y, c, kind, seed, confusable) for kind in ("random", "confusable") for seed in SEEDS]
    summary = {}
    for kind in ("random", "confusable"):
        part = [r for r in runs if r["kind"] == kind]
        summary[kind] = {k: float(np.mean([r[k] for r in part])) for k in
                         ("precision", "recall", "precision_at_k", "recall_at_k", "seconds")}
    result = {"benchmark": "label_errors", "machine": machine(), "embeddings": files[0].name,
              "images": int(len(y)), "share_flipped": SHARE,
              "most_confusable": {classes[i]: classes[j] for i, j in enumerate(confusable)},
              "summary": summary, "runs": runs}
    print(json.dumps(summary, indent=1))
    print(write_json("label_errors.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
