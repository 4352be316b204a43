"""Expected calibration error before and after temperature scaling (benchmark).

Temperature scaling (Guo et al., ICML 2017; atl_desktop.active.calibration.fit_temperature)
fits one T on a validation split carved from the training pool; ECE (15 bins) and NLL are
then reported on the test split once, before and after. Nothing is chosen on the test split.

- pbc_dev (../shared/data/pbc_dev, 5,979 blood-cell JPEGs, 8 classes) at 64 px: embeddings of
  an untrained ResNet-18 (seeded), the logistic head of atl_desktop.active.heads (the window's
  suggestions) trained on 80, 320 or every training-pool label. Split: 30 % test (stratified,
  seed 0, as benchmarks/al_pbc.py), 20 % of the rest validation, the remainder the training pool.
- USPS digits (../shared/data/digits_usps.npz, 16 x 16): the same logistic head on the
  standardised pixels, and a small CNN (two conv layers) trained 20 epochs with Adam on every
  training-pool label (over-fitted on purpose, as a fine-tuned network is). Its own test split;
  20 % of its training split is the validation split.
Label subsets are drawn with seeds 0, 1, 2. CPU, one torch thread.

Usage: python benchmarks/calibration_bench.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from al_pbc import SIZE, SPLIT_SEED, VAL_SEED, load_pbc, stratified_mask
from benchcommon import machine, write_json

from atl_desktop.active.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    mean_nll,
)
from atl_desktop.active.heads import LogisticHead, fit_scaler

DIGITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "digits_usps.npz"
SEEDS = (0, 1, 2)
LABELS = (80, 320, None)  # None: every training-pool label
CNN_EPOCHS = 20


def assess(val_probs, y_val, test_probs, y_test) -> dict:
    """T from the validation split; ECE, NLL and accuracy on the test split before and after."""
    t = fit_temperature(val_probs, y_val, from_probs=True)
    scaled = apply_temperature(test_probs, t)
    return {"temperature": t, "test_accuracy": float((test_probs.argmax(1) == y_test).mean()),
            "ece_before": expected_calibration_error(test_probs, y_test),
            "ece_after": expected_calibration_error(scaled, y_test),
            "nll_before": mean_nll(test_probs, y_test), "nll_after": mean_nll(scaled, y_test)}


def head_runs(features, y, train, val, test, classes: int) -> list[dict]:
    z = fit_scaler(features)(features)  # pool statistics, no label: as the app does
    runs = []
    for n in LABELS:
        for seed in SEEDS if n is not None else (0,):
            rows = np.flatnonzero(train)
            if n is not None:
                rows = np.random.default_rng(seed).choice(rows, n, replace=False)
            head = LogisticHead(classes).fit(z[rows], y[rows])
            runs.append({"labels": int(len(rows)), "seed": seed,
                         **assess(head.predict_proba(z[val]), y[val], head.predict_proba(z[test]), y[test])})
    return runs


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    for n in sorted({r["labels"] for r in runs}):
        part = [r for r in runs if r["labels"] == n]
        out.append({"labels": n, "runs": len(part), **{
            k: float(np.mean([r[k] for r in part]))
            for k in ("temperature", "test_accuracy", "ece_before", "ece_after", "nll_before", "nll_after")}})
    return out


def pbc() -> dict:
    from atl_desktop.models.encoders import EncoderChoice, build_encoder
    from atl_desktop.simulate import SimulationConfig, _embed

    x, y, classes = load_pbc(SIZE)
    test = stratified_mask(y, 0.3, SPLIT_SEED)
    val = np.zeros(len(y), dtype=bool)
    val[np.flatnonzero(~test)[stratified_mask(y[~test], 0.2, VAL_SEED)]] = True
    train = ~test & ~val
    torch.manual_seed(0)
    model = build_encoder(EncoderChoice("untrained:resnet18", input_size=SIZE), len(classes))
    started = time.perf_counter()
    gen = _embed(model, x, SimulationConfig(device="cpu"), "embedding")
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        e = stop.value
    seconds = time.perf_counter() - started
    runs = head_runs(e, y, train, val, test, len(classes))
    return {"images": int(len(y)), "classes": len(classes), "size": SIZE, "encoder": "untrained resnet18 (seed 0)",
            "train_pool": int(train.sum()), "validation": int(val.sum()), "test": int(test.sum()),
            "embed_seconds": seconds, "head": {"summary": summarise(runs), "runs": runs}}


class SmallCNN(torch.nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64 * 4 * 4, 128), torch.nn.ReLU(), torch.nn.Linear(128, classes))

    def forward(self, x):
        return self.body(x)


def cnn_probs(x_train, y_train, others, classes: int, seed: int) -> list[np.ndarray]:
    torch.manual_seed(seed)
    net = SmallCNN(classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x_train[:, None]), torch.from_numpy(y_train)
    rng = np.random.default_rng(seed)
    for _ in range(CNN_EPOCHS):
        for batch in np.array_split(rng.permutation(len(xt)), len(xt) // 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[batch]), yt[batch]).backward()
            opt.step()
    net.eval()
    with torch.inference_mode():
        return [torch.softmax(net(torch.from_numpy(x[:, None])).double(), 1).numpy() for x in others]


def digits() -> dict:
    with np.load(DIGITS, allow_pickle=False) as f:
        x_train, y_train = f["x_train"].astype(np.float32), f["y_train"].astype(np.int64)
        x_test, y_test = f["x_test"].astype(np.float32), f["y_test"].astype(np.int64)
    scale = 255.0 if x_train.max() > 1.5 else 1.0
    x_train, x_test = x_train / scale, x_test / scale
    classes = int(max(y_train.max(), y_test.max()) + 1)
    val = stratified_mask(y_train, 0.2, VAL_SEED)
    x = np.concatenate([x_train, x_test]).reshape(len(x_train) + len(x_test), -1)
    y = np.concatenate([y_train, y_test])
    test = np.r_[np.zeros(len(y_train), bool), np.ones(len(y_test), bool)]
    val_all = np.r_[val, np.zeros(len(y_test), bool)]
    runs = head_runs(x, y, ~test & ~val_all, val_all, test, classes)
    cnn_runs = []
    for seed in SEEDS:
        p_val, p_test = cnn_probs(x_train[~val], y_train[~val], (x_train[val], x_test), classes, seed)
        cnn_runs.append({"labels": int((~val).sum()), "seed": seed, **assess(p_val, y_train[val], p_test, y_test)})
    return {"data": DIGITS.name, "classes": classes, "train_pool": int((~val).sum()), "validation": int(val.sum()),
            "test": int(len(y_test)), "head": {"summary": summarise(runs), "runs": runs},
            "small_cnn": {"epochs": CNN_EPOCHS, "summary": summarise(cnn_runs), "runs": cnn_runs}}


def main() -> int:
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = {"benchmark": "calibration", "machine": machine(), "bins": 15,
              "method": "temperature scaling (Guo et al. 2017): T fitted on the validation split by "
                        "safeguarded Newton on 1/T; ECE and NLL on the test split once",
              "pbc_dev": pbc(), "digits_usps": digits()}
    result["seconds"] = time.perf_counter() - started
    path = write_json("calibration.json", result)
    for name in ("pbc_dev", "digits_usps"):
        for model in ("head", "small_cnn"):
            for s in result[name].get(model, {}).get("summary", []):
                print(f"{name} {model} {s['labels']} labels: ECE {s['ece_before']:.4f} -> {s['ece_after']:.4f} "
                      f"(T = {s['temperature']:.3f}), accuracy {s['test_accuracy']:.4f}")
    print(f"wrote {path} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
