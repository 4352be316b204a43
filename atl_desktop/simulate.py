"""Replay the active-learning loop with known labels as the oracle, to compare strategies.

For every configuration ("arm": a strategy, CEAL pseudo-labels on or off, a
transfer method) and every seed, the loop starts from the same initial labels
(drawn by seed) and the same model (trained on the source data when there is
one), then repeats: score the pool -> choose a batch -> the oracle labels it ->
pseudo-labels (CEAL) -> fine-tune from the last model -> evaluate on the test
split, until the label budget is spent. It runs in memory on arrays (no project
file), but through the same engine functions as a real round: the scoring pass
(`score_pool`), the strategy registry (`select`, with `pool_selection_input`),
CEAL's `pseudo_labels_for_round`, the training loop (`train`), and the round's
evaluation, calibration and stop signal (`rounds`).

Images are transformed once into tensors (no augmentation), which keeps a
round on the small CNN to seconds on a CPU. Each finished (arm, seed) run is
written to OUT/runs/ at once, so an interrupted simulation resumes where it was.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import shutil
import tempfile
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from atl_desktop.active.heads import HEADS, fit_scaler, make_head
from atl_desktop.active.pseudo import PseudoLabelConfig, pseudo_labels_for_round
from atl_desktop.active.scoring import ScoringConfig, score_pool
from atl_desktop.active.strategies import STRATEGIES, select
from atl_desktop.jobs import Progress, relabel
from atl_desktop.loop.rounds import evaluation_metrics, predict_probs, stop_signal
from atl_desktop.loop.session import pool_selection_input, scoring_config_for
from atl_desktop.store import ProjectError
from atl_desktop.store.keys import SCHEDULES
from atl_desktop.transfer.methods import METHODS

BASELINE = "random"
METRICS = ("accuracy", "balanced_accuracy")
NEW_CONFIG_DEFAULTS = {"encoder": "selfsup", "encoder_weights": None, "selfsup": {}, "metric": "accuracy",
                       "input_size": None, "min_steps": None, "schedule": "constant", "augment": "none"}
ENCODER_FIELDS = ("encoder", "encoder_weights", "selfsup")
RUN_VERSION = 2  # part of a saved run's key: raise it when a change alters the curves
# Runs on data with a validation split chose each round's epoch on it until that stopped:
# their keys differ from those saved before (runs on data without one are unchanged).
NO_VALIDATION_KEY = {"validation": "unused"}


@dataclass(frozen=True)
class Arm:
    """One configuration to simulate."""

    name: str
    strategy: str
    pseudo: bool = False  # CEAL pseudo-labels in each round's fine-tune
    method: str = "finetune"  # transfer method of each round's fine-tune (transfer.methods.METHODS)
    params: Mapping[str, Any] = field(default_factory=dict)  # strategy parameters
    # Steps of the first fine-tune, before any query (default: as every round's). With a
    # domain-adaptation method this adapts the source model to the unlabelled pool first,
    # as a user would before labelling: it costs no labels.
    adapt_steps: int = 0
    # The embedding-first loop: a head ("logreg", "prototype") refitted on frozen embeddings
    # after every batch, instead of fine-tuning (see run_embedding_arm).
    head: str | None = None
    head_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ProjectError(f"Unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}.")
        if self.pseudo and "generative" in STRATEGIES[self.strategy].needs:
            raise ProjectError(f"CEAL pseudo-labels are not combined with {self.strategy} (it scores no pool).")
        if self.adapt_steps < 0:
            raise ProjectError("adapt_steps must be 0 or more.")
        if self.head is not None and self.head not in HEADS:
            raise ProjectError(f"Unknown head {self.head!r}; choose one of {', '.join(HEADS)}.")
        if self.head is not None and (self.pseudo or "generative" in STRATEGIES[self.strategy].needs):
            raise ProjectError("A head on embeddings is not combined with CEAL, GAAL or ASAL.")
        if self.method not in METHODS:
            raise ProjectError(f"Unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "head_options", dict(self.head_options))

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        for name in ("adapt_steps", "head", "head_options"):
            if not data[name]:
                del data[name]  # the key of runs saved before the field existed
        return data


@dataclass(frozen=True)
class SimulationConfig:
    budget: int = 500  # labels in all, the initial ones included
    batch: int = 20
    initial: int = 20  # random initial labels (0: cold start)
    rounds: int | None = None  # this many query rounds instead of a label budget
    seeds: tuple[int, ...] = (0, 1, 2)
    backbone: str = "smallcnn"
    epochs: int = 5  # per round's fine-tune
    max_steps: int | None = None  # cap on each round's optimiser steps (time-boxed runs)
    source_epochs: int = 5  # source pre-training, once per seed
    batch_size: int = 32
    lr: float = 1e-3
    pool_size: int | None = None  # random subsample of the pool (speed)
    source_features: int = 1000  # source images scored for strategies that use them (MMD)
    stop_set: int = 1000
    pseudo_delta0: float = PseudoLabelConfig.delta0
    pseudo_decay: float = PseudoLabelConfig.decay
    pseudo_max_per_class: int | None = None
    device: str = "cpu"
    scoring_batch: int = 256
    # Arms with a head: the encoder of their embeddings. "selfsup": SimCLR on the pool's
    # images (no labels), with `selfsup` as its SelfSupConfig fields; else an encoder name
    # of models.encoders with `encoder_weights`.
    encoder: str = "selfsup"
    encoder_weights: str | None = None
    selfsup: Mapping[str, Any] = field(default_factory=dict)
    metric: str = "accuracy"  # the curves' metric: "accuracy" or "balanced_accuracy"
    # The fine-tune's recipe, as a project's TrainConfig has it (store.keys.NEW_PROJECT_TRAINING
    # gives new projects at least min_steps a round, the one-cycle schedule and "histology"
    # augmentation). Here the augmentation is its geometric part only, flips and 90-degree
    # rotations, applied to the tensors (the images are transformed once, see TensorData).
    input_size: int | None = None  # the backbone's usual size when None
    min_steps: int | None = None
    schedule: str = "constant"
    augment: str = "none"  # "none", or flips and rotations for any other augmentation name

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "selfsup", dict(self.selfsup))
        if self.metric not in METRICS:
            raise ProjectError(f"metric must be one of {', '.join(METRICS)}")
        if self.schedule not in SCHEDULES:
            raise ProjectError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if self.batch < 1 or self.initial < 0 or self.budget < max(1, self.initial):
            raise ProjectError("Need batch >= 1, initial >= 0 and a budget of at least the initial labels.")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def run_fields(self, embedding: bool = False) -> dict:
        """What a saved run depends on: fields added later are left out at their defaults,
        so runs saved before they existed are still found, and the encoder's fields count
        only for the embedding-first arms (`embedding`)."""
        # The metric only chooses which recorded curve is drawn: every run records both.
        data = {k: v for k, v in self.to_json().items() if k not in ("seeds", "device", "metric")}
        for name, default in NEW_CONFIG_DEFAULTS.items():
            if data.get(name) == default or (not embedding and name in ENCODER_FIELDS):
                data.pop(name, None)
        return data

    def pseudo_config(self) -> PseudoLabelConfig:
        return PseudoLabelConfig(delta0=self.pseudo_delta0, decay=self.pseudo_decay,
                                 max_per_class=self.pseudo_max_per_class)


# ---- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimData:
    """uint8 images (N, H, W) or (N, H, W, 3) with int labels; source and val optional."""

    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    # Not used by the simulation (see _fine_tune): kept for scripts that choose settings on it.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    x_source: np.ndarray | None = None
    y_source: np.ndarray | None = None

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for a in (self.x_pool, self.y_pool, self.x_test, self.y_test, self.x_source, self.y_source):
            if a is not None:
                digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()[:16]


def _read(path: Path, size: int | None, seed: int) -> dict[str, np.ndarray | list[str]]:
    """Splits of an .npz (x_train/x_test/..., or x/y split 70/30) or an ImageFolder tree."""
    from atl_desktop.data.datasets import load_npz

    if path.is_dir():
        return _read_folders(path, size, seed)
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
    out: dict = {}
    if "x_train" in keys:
        for split in ("train", "val", "test"):
            if f"x_{split}" in keys:
                x, y, classes = load_npz(path, split)
                out[split] = (x, y)
    else:
        x, y, classes = load_npz(path, "train")
        out.update(_split(x, y, seed))
    out["classes"] = classes
    return out


def _split(x: np.ndarray, y: np.ndarray, seed: int, test: float = 0.3) -> dict:
    """Stratified train/test split fixed by seed."""
    rng = np.random.default_rng(seed)
    test_rows = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        test_rows += list(rows[: round(test * len(rows))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test_rows] = True
    return {"train": (x[~is_test], y[~is_test]), "test": (x[is_test], y[is_test])}


def _read_folders(root: Path, size: int | None, seed: int) -> dict:
    from atl_desktop.data.datasets import load_imagefolder

    def arrays(folder: Path, classes: list[str] | None = None):
        paths, labels, found = load_imagefolder(folder)
        if classes is not None and found != classes:
            raise ProjectError(f"{folder}: classes {found} differ from {classes}.")
        return np.stack([_pixels(p, size) for p in paths]), np.asarray(labels, dtype=np.int64), found

    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = arrays(root / "train")
        out = {"train": (x, y), "test": arrays(root / "test", classes)[:2], "classes": classes}
        if (root / "val").is_dir():
            out["val"] = arrays(root / "val", classes)[:2]
        return out
    x, y, classes = arrays(root)
    return {**_split(x, y, seed), "classes": classes}


def _pixels(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image

    from atl_desktop.data.decode import load_image

    img = load_image(path).convert("RGB")
    if size is not None:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_simulation_data(target: str | Path, source: str | Path | None = None, *,
                         image_size: int | None = 28, seed: int = 0) -> SimData:
    """Target (pool = its train split, test split; a file with plain x/y is split 70/30 by seed)
    and an optional labelled source (all of its images), from .npz files or ImageFolder trees.
    Folder images are resized to `image_size` as they are read."""
    t = _read(Path(target), image_size, seed)
    if "test" not in t:
        raise ProjectError(f"{target}: no test split to measure accuracy on.")
    x_val, y_val = t.get("val", (None, None))
    x_source = y_source = None
    if source is not None:
        s = _read(Path(source), image_size, seed)
        if [str(c) for c in s["classes"]] != [str(c) for c in t["classes"]]:
            raise ProjectError("The source and target data must have the same classes in the same order.")
        parts = [s[k] for k in ("train", "val", "test") if k in s]
        x_source = np.concatenate([p[0] for p in parts])
        y_source = np.concatenate([p[1] for p in parts])
    return SimData(t["train"][0], t["train"][1], t["test"][0], t["test"][1], tuple(t["classes"]),
                   x_val, y_val, x_source, y_source)


class TensorData(Dataset):
    """Images transformed once into one tensor; items (image, label) as in ArrayDataset."""

    def __init__(self, x: torch.Tensor, labels: Sequence[int], dihedral: bool = False):
        self.x = x
        self.labels = [int(v) for v in labels]
        self.image_ids = list(range(len(self.labels)))
        # Training copies: a random flip and 90-degree rotation per item, drawn from torch's
        # generator (the training loop's private stream), so runs repeat exactly.
        self.dihedral = dihedral

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray | None, spec) -> TensorData:
        from atl_desktop.data.datasets import ArrayDataset
        from atl_desktop.models.transforms import input_transform

        arrays = ArrayDataset(x, None, input_transform(spec))
        tensor = torch.stack([arrays[i][0] for i in range(len(arrays))]) if len(arrays) else torch.zeros(0)
        return cls(tensor, [-1] * len(x) if y is None else y)

    def rows(self, rows: Sequence[int], labels: Sequence[int] | None = None) -> TensorData:
        rows = np.asarray(rows, dtype=np.int64)
        picked = TensorData(self.x[torch.as_tensor(rows)],
                            [self.labels[r] for r in rows] if labels is None else labels)
        picked.image_ids = [self.image_ids[r] for r in rows]
        picked.dihedral = self.dihedral
        return picked

    def augmented(self, on: bool = True) -> TensorData:
        """The same images, served with random flips and rotations when `on`."""
        copy_ = TensorData(self.x, self.labels, dihedral=on)
        copy_.image_ids = list(self.image_ids)
        return copy_

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.dihedral:
            return random_dihedral(self.x[i]), self.labels[i]
        return self.x[i], self.labels[i]


def random_dihedral(image: torch.Tensor) -> torch.Tensor:
    """One of the 8 flips and rotations of a (C, H, W) square image, uniformly at random."""
    turns, flip = (int(v) for v in torch.randint(0, 4, (2,)))
    image = torch.rot90(image, turns, dims=(1, 2))
    return image.flip(2) if flip % 2 else image


@dataclass
class _Prepared:
    pool: TensorData
    test: TensorData
    source: TensorData | None
    source_scored: TensorData | None  # the subsample scored for MMD's source features
    spec: Any
    raw_pool: np.ndarray | None = None  # the pool's uint8 images (the GAN learns from them)
    gan: Any = None  # simulate_gan.SimGan, for GAAL and ASAL arms


def _prepare(data: SimData, config: SimulationConfig) -> _Prepared:
    from atl_desktop.models.registry import backbone_info

    spec = backbone_info(config.backbone).spec
    if config.input_size is not None:
        spec = dataclasses.replace(spec, size=config.input_size)
    x_pool, y_pool = data.x_pool, data.y_pool
    if config.pool_size is not None and config.pool_size < len(y_pool):
        keep = np.sort(np.random.default_rng(0).choice(len(y_pool), config.pool_size, replace=False))
        x_pool, y_pool = x_pool[keep], y_pool[keep]
    pool = TensorData.from_arrays(x_pool, y_pool, spec)
    test = TensorData.from_arrays(data.x_test, data.y_test, spec)
    source = scored = None
    if data.x_source is not None:
        source = TensorData.from_arrays(data.x_source, data.y_source, spec)
        n = min(config.source_features, len(source))
        scored = source.rows(np.sort(np.random.default_rng(1).choice(len(source), n, replace=False)))
    return _Prepared(pool, test, source, scored, spec, raw_pool=x_pool)


# ---- one run ------------------------------------------------------------------------------


def _train_config(config: SimulationConfig, method: str, seed: int, epochs: int, max_steps: int | None = None):
    from atl_desktop.transfer.train import TrainConfig

    return TrainConfig(backbone=config.backbone, method=method, epochs=epochs, batch_size=config.batch_size,
                       lr=config.lr, patience=0, seed=seed, amp=False, device=config.device, max_steps=max_steps,
                       min_steps=config.min_steps, schedule=config.schedule)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def initial_model_job(data: _Prepared, config: SimulationConfig, seed: int,
                      n_classes: int) -> Generator[Progress, None, Any]:
    """A fresh model, trained on the source images when there are some."""
    from atl_desktop.models.registry import build_model
    from atl_desktop.transfer.train import train

    model = _fast_layout(build_model(config.backbone, n_classes, seed=seed, input_size=config.input_size))
    if data.source is not None:
        cfg = _train_config(config, "finetune", _seed(seed, 7), config.source_epochs)
        yield from relabel(train(model, None, cfg, source_set=data.source), f"source pre-training (seed {seed})")
    return model


def _fast_layout(model):
    """Convolution weights in channels-last layout: the same model, trained and evaluated
    about 1.4 times faster on a CPU (measured with the small CNN)."""
    return model.to(memory_format=torch.channels_last)


def _fine_tune(model, data: _Prepared, labelled: np.ndarray, pseudo: dict[int, int], arm: Arm,
               config: SimulationConfig, seed: int, round_index: int, synthetic: Sequence[Dataset] = ()):
    """One round's fine-tune, with the data a project round gives the method (see
    transfer.train._phases): labelled target (+ pseudo-labels), and for a method that
    uses unlabelled target images, the source images and the unlabelled pool too."""
    from atl_desktop.transfer.train import train

    method = METHODS[arm.method]
    pool = data.pool.augmented(config.augment != "none")
    parts = [pool.rows(labelled)] if len(labelled) else []
    if pseudo:
        rows = sorted(pseudo)
        parts.append(pool.rows(rows, [pseudo[r] for r in rows]))
    parts += list(synthetic)  # GAAL's labelled synthetic images
    train_set = (parts[0] if len(parts) == 1 else ConcatDataset(parts)) if parts else None
    source = target = None
    if method.uses_unlabelled_target:
        source = data.source if method.uses_source_labels else None
        target = data.pool
    if not method.uses_target_labels:
        train_set = None
    if train_set is None and source is None:
        return None
    epochs, steps = config.epochs, config.max_steps
    if round_index == 0 and arm.adapt_steps:
        epochs, steps = arm.adapt_steps, arm.adapt_steps  # an epoch is at least one step
    cfg = _train_config(config, arm.method, _seed(seed, round_index, 11), epochs, steps)
    # No validation set: keeping each round's best epoch by validation accuracy would use
    # labels the budget does not count (524 on a 300-label budget in one set), which a user
    # labelling their own images does not have. Every round trains its fixed schedule instead.
    return (yield from train(model, train_set, cfg, source_set=source, target_set=target))


def _assess(model, data: _Prepared, classes, stop_rows: np.ndarray, previous: np.ndarray | None,
            kappas: list, config: SimulationConfig):
    probs = yield from predict_probs(model, data.test, batch_size=config.scoring_batch, device=config.device,
                                     message="evaluating")
    result = evaluation_metrics(probs, data.test.labels, classes)
    preds = None
    stop = {"kappa": None, "stop": False}
    if len(stop_rows):
        stop_probs = yield from predict_probs(model, data.pool.rows(stop_rows), batch_size=config.scoring_batch,
                                              device=config.device, message="predicting the stop set")
        preds = stop_probs.argmax(1)
        stop = stop_signal(previous, preds, kappas)
    return result, stop, preds


def run_arm_job(data: _Prepared, arm: Arm, config: SimulationConfig, seed: int, start_model,
                classes: Sequence[str], workdir: Path) -> Generator[Progress, None, list[dict]]:
    """One learning curve: a list of per-round records."""
    n = len(data.pool)
    rng = np.random.default_rng([seed, 1])
    labelled = np.sort(rng.choice(n, size=min(config.initial, n), replace=False)).astype(np.int64)
    stop_candidates = np.setdiff1d(np.arange(n), labelled)
    stop_rows = np.sort(np.random.default_rng([seed, 3]).choice(
        stop_candidates, size=min(config.stop_set, len(stop_candidates)), replace=False))
    model = _fast_layout(copy.deepcopy(start_model))
    records: list[dict] = []
    kappas: list = []
    previous = None
    labels = np.asarray(data.pool.labels)
    # A budget that is not a whole number of batches ends with a smaller one.
    max_rounds = config.rounds if config.rounds is not None else -(-(config.budget - len(labelled)) // config.batch)
    total = max_rounds + 1
    synthetic: list[TensorData] = []  # GAAL: labelled synthetic images, one label each
    for r in range(max_rounds + 1):
        pseudo: dict[int, int] = {}
        extra: dict = {}
        if r > 0 and STRATEGIES[arm.strategy].synthetic:
            made, extra = yield from _synthesise(model, data, arm, config, labelled, synthetic, seed, r)
            if made is None:
                break
            synthetic.append(made)
        elif r > 0:
            picks, probs = yield from _query(model, data, arm, config, labelled, seed, r, workdir)
            if not len(picks):
                break
            labelled = np.sort(np.concatenate([labelled, picks]))  # the oracle answers: labels[picks]
            if arm.pseudo:
                pseudo = _pseudo(probs, labelled, r - 1, config)
        if r > 0 or len(labelled) or (arm.adapt_steps and data.source is not None):
            yield from relabel(_fine_tune(model, data, labelled, pseudo, arm, config, seed, r, synthetic),
                               f"{arm.name} seed {seed} round {r}: fine-tuning")
        elif data.source is None:
            continue  # cold start with an untrained model: nothing worth measuring yet
        result, stop, previous = yield from _assess(model, data, classes, stop_rows, previous, kappas, config)
        kappas.append(stop["kappa"])
        records.append(_record(r, labelled, pseudo, labels, result, stop))
        if STRATEGIES[arm.strategy].synthetic:
            n_synthetic = sum(len(s) for s in synthetic)
            records[-1].update(labels=int(len(labelled)) + n_synthetic, synthetic=n_synthetic, **extra)
        yield Progress(r + 1, total, f"{arm.name} seed {seed}", {"labels": records[-1]["labels"],
                                                                "accuracy": result["accuracy"]})
    return records


def _record(r: int, labelled: np.ndarray, pseudo: dict[int, int], labels: np.ndarray, result: dict,
            stop: dict) -> dict:
    right = sum(labels[i] == c for i, c in pseudo.items())
    return {
        "round": r, "labels": int(len(labelled)), "accuracy": result["accuracy"],
        "balanced_accuracy": result["balanced_accuracy"], "loss": result["loss"],
        "ece": result["calibration"]["ece"], "kappa": stop["kappa"], "stop": bool(stop["stop"]),
        "pseudo": len(pseudo), "pseudo_accuracy": (right / len(pseudo)) if pseudo else None,
    }


def _query(model, data: _Prepared, arm: Arm, config: SimulationConfig, labelled: np.ndarray, seed: int,
           r: int, workdir: Path):
    """Score the pool (the real scoring pass) and let the strategy choose; returns
    (chosen pool rows, probabilities of the unlabelled rows after the choice) for CEAL."""
    n = len(data.pool)
    unlabelled = np.setdiff1d(np.arange(n), labelled)
    if not len(unlabelled):
        return np.empty(0, np.int64), None
    budget_left = config.budget - len(labelled)
    batch = min(config.batch, budget_left) if config.rounds is None else config.batch
    if batch <= 0:
        return np.empty(0, np.int64), None
    needs = STRATEGIES[arm.strategy].needs
    rng = np.random.default_rng([seed, r, 2])
    if "generative" in needs:  # ASAL: no scoring pass, the GAN and the pool's index
        from atl_desktop.simulate_gan import asal_rows

        yield Progress(0, None, f"{arm.name} seed {seed} round {r}: matching generated images")
        return asal_rows(data.gan, model, unlabelled, batch, rng, dict(arm.params)).astype(np.int64), None
    base = ScoringConfig(batch_size=config.scoring_batch, device=config.device, seed=_seed(seed, r, 5), amp=False,
                         flush_seconds=60.0)
    cache = workdir / f"scores-{arm.name}-{seed}-{r}"
    try:
        table = source = None
        if needs or arm.pseudo:
            scoring = scoring_config_for(arm.strategy, arm.params, base)
            table = yield from relabel(score_pool(model, data.pool, cache / "target", config=scoring),
                                       f"{arm.name} seed {seed} round {r}: scoring")
            if "source_features" in needs and data.source_scored is not None:
                source = yield from relabel(score_pool(model, data.source_scored, cache / "source", config=base),
                                            "scoring source images")
        if needs:
            inputs = pool_selection_input(table, unlabelled, labelled, source)
        else:
            from atl_desktop.active.strategies import SelectionInput

            inputs = SelectionInput(probs=np.zeros((len(unlabelled), 1)))
        picks = unlabelled[select(arm.strategy, inputs, batch, rng, **arm.params)]
        probs = None
        if arm.pseudo:
            rest = np.setdiff1d(unlabelled, picks)
            probs = (rest, np.array(table.probs[table.rows(rest)]))
        return picks.astype(np.int64), probs
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _synthesise(model, data: _Prepared, arm: Arm, config: SimulationConfig, labelled: np.ndarray,
                synthetic: list, seed: int, r: int):
    """GAAL: a batch of synthetic images labelled by the simulation's proxy oracle (see
    simulate_gan); (TensorData, round info), or (None, {}) once the budget is spent."""
    from atl_desktop.simulate_gan import gaal_labelled

    used = len(labelled) + sum(len(s) for s in synthetic)
    batch = min(config.batch, config.budget - used) if config.rounds is None else config.batch
    if batch <= 0:
        return None, {}
    yield Progress(0, None, f"{arm.name} seed {seed} round {r}: synthesising {batch} images")
    return gaal_labelled(data.gan, model, batch, np.random.default_rng([seed, r, 2]), dict(arm.params), data.spec)


def _pseudo(scored, labelled: np.ndarray, round_index: int, config: SimulationConfig) -> dict[int, int]:
    if scored is None:
        return {}
    rows, probs = scored
    chosen = pseudo_labels_for_round(probs, rows, round_index, config.pseudo_config())
    return {p.image_id: p.class_id for p in chosen}


# ---- the embedding-first loop ----------------------------------------------------------------


@dataclass(frozen=True)
class Embeddings:
    pool: np.ndarray  # (N, D) float32, the pool's rows in order
    test: np.ndarray
    info: dict


def _embed(model, x: np.ndarray, config: SimulationConfig, message: str) -> Generator[Progress, None, np.ndarray]:
    import torch

    from atl_desktop.transfer.train import resolve_device

    data = TensorData.from_arrays(x, None, model.spec)
    device = resolve_device(config.device)
    model.to(device).eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(data), config.scoring_batch):
            parts.append(model.features(data.x[start:start + config.scoring_batch].to(device)).float().cpu().numpy())
            yield Progress(min(start + config.scoring_batch, len(data)), len(data), message)
    return np.concatenate(parts) if parts else np.zeros((0, model.feature_dim), np.float32)


def _rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[..., None], 3, axis=-1) if x.ndim == 3 else x


def embeddings_job(data: SimData, config: SimulationConfig,
                   out_dir: str | Path | None = None) -> Generator[Progress, None, Embeddings]:
    """Embeddings of the pool and test images by the configured encoder, once per simulation
    (cached in out_dir/runs). "selfsup" first trains SimCLR on the pool images, without labels."""
    import time

    from atl_desktop.models.encoders import EncoderChoice, build_encoder
    from atl_desktop.transfer.selfsup import SelfSupConfig, pretrain

    x_pool, _ = _pool_arrays(data, config)
    fields = {"version": RUN_VERSION, "data": data.fingerprint(), "pool": config.pool_size,
              "encoder": config.encoder, "weights": config.encoder_weights, "selfsup": config.selfsup}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    path = None if out_dir is None else Path(out_dir) / "runs" / f"embeddings-{key}.npz"
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as saved:
            return Embeddings(saved["pool"], saved["test"], json.loads(str(saved["info"])))
    started = time.perf_counter()
    info: dict = {"encoder": config.encoder}
    if config.encoder == "selfsup":
        ssl = SelfSupConfig.from_dict({"image_size": x_pool.shape[1], **config.selfsup, "device": config.device})
        model = build_encoder(EncoderChoice("untrained:" + ssl.backbone, input_size=ssl.image_size),
                              len(data.classes))
        model = _fast_layout(model)
        info["selfsup"] = ssl.to_dict()
        info["selfsup_metrics"] = yield from relabel(pretrain(model, _rgb(x_pool), ssl),
                                                     "self-supervised pre-training")
    else:
        model = build_encoder(EncoderChoice(config.encoder, config.encoder_weights), len(data.classes))
    info["pretrain_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    pool = yield from _embed(model, x_pool, config, "embedding the pool")
    test = yield from _embed(model, data.x_test, config, "embedding the test images")
    info["embed_seconds"] = time.perf_counter() - started
    info["images_embedded"] = int(len(pool) + len(test))
    if path is not None:
        import io

        from atl_desktop.store.files import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez(buffer, pool=pool, test=test, info=np.asarray(json.dumps(info)))
        atomic_write_bytes(path, buffer.getvalue())
    return Embeddings(pool, test, info)


def _pool_arrays(data: SimData, config: SimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    """The pool as the simulation uses it (the same subsample as _prepare)."""
    x, y = data.x_pool, data.y_pool
    if config.pool_size is not None and config.pool_size < len(y):
        keep = np.sort(np.random.default_rng(0).choice(len(y), config.pool_size, replace=False))
        x, y = x[keep], y[keep]
    return x, y


def _head_metrics(head, scaler, embeddings: Embeddings, y_test: np.ndarray, classes) -> dict:
    probs = head.predict_proba(scaler(embeddings.test))
    return evaluation_metrics(probs, y_test, classes)


def run_embedding_arm(embeddings: Embeddings, y_pool: np.ndarray, y_test: np.ndarray, arm: Arm,
                      config: SimulationConfig, seed: int, classes: Sequence[str]
                      ) -> Generator[Progress, None, list[dict]]:
    """One learning curve of the embedding-first loop: after every batch the oracle's labels
    refit the head on the frozen embeddings, and the test split is scored. The choice sees
    what a project query sees (session.query_job): the head's probabilities of the
    unlabelled rows, their embeddings and the labelled ones; a strategy that needs
    predictions while nothing is labelled takes the cold start's TypiClust instead."""
    from atl_desktop.active.strategies import SelectionInput
    from atl_desktop.loop.session import COLD_START_STRATEGY

    n, c = len(y_pool), len(classes)
    rng = np.random.default_rng([seed, 1])
    labelled = np.sort(rng.choice(n, size=min(config.initial, n), replace=False)).astype(np.int64)
    scaler = fit_scaler(embeddings.pool)
    z_pool = scaler(embeddings.pool)
    max_rounds = config.rounds if config.rounds is not None else -(-(config.budget - len(labelled)) // config.batch)
    records: list[dict] = []
    head = None
    for r in range(max_rounds + 1):
        if r > 0:
            unlabelled = np.setdiff1d(np.arange(n), labelled)
            batch = min(config.batch, config.budget - len(labelled)) if config.rounds is None else config.batch
            if not len(unlabelled) or batch <= 0:
                break
            probs = None if head is None else head.predict_proba(z_pool[unlabelled])
            data = SelectionInput(probs=probs, features=embeddings.pool[unlabelled],
                                  labelled_features=embeddings.pool[labelled])
            strategy, params = arm.strategy, arm.params
            if "probs" in STRATEGIES[strategy].needs and probs is None:
                strategy, params = COLD_START_STRATEGY, {}
            picks = select(strategy, data, batch, np.random.default_rng([seed, r, 2]), **params)
            labelled = np.sort(np.concatenate([labelled, unlabelled[picks]]))
        if not len(labelled):
            continue  # nothing to fit a head on yet
        head = make_head(arm.head, c, **arm.head_options).fit(z_pool[labelled], y_pool[labelled])
        result = _head_metrics(head, scaler, embeddings, y_test, classes)
        records.append(_record(r, labelled, {}, y_pool, result, {"kappa": None, "stop": False}))
        yield Progress(r + 1, max_rounds + 1, f"{arm.name} seed {seed}",
                       {"labels": int(len(labelled)), config.metric: result[config.metric]})
    if records:
        records[-1]["labelled_rows"] = labelled.tolist()  # what a second stage fine-tunes on
    return records


def second_stage_job(model, data: SimData, labelled: np.ndarray, config: SimulationConfig, seed: int
                     ) -> Generator[Progress, None, dict]:
    """The loop's optional second stage: fine-tune a whole model (e.g. the self-supervised
    encoder with a new head) on the pool rows the first stage labelled, with config's recipe
    (steps, schedule, augmentation), then score the test split once."""
    from atl_desktop.transfer.train import train

    spec = model.spec
    pool = TensorData.from_arrays(data.x_pool, data.y_pool, spec).augmented(config.augment != "none")
    test = TensorData.from_arrays(data.x_test, data.y_test, spec)
    model = _fast_layout(model)
    cfg = _train_config(config, "finetune", _seed(seed, 13), config.epochs, config.max_steps)
    yield from relabel(train(model, pool.rows(np.sort(labelled)), cfg), f"second stage (seed {seed})")
    probs = yield from predict_probs(model, test, batch_size=config.scoring_batch, device=config.device,
                                     message="evaluating")
    return evaluation_metrics(probs, test.labels, data.classes)


# ---- the whole simulation ------------------------------------------------------------------


def default_arms(strategies: Sequence[str], *, pseudo: bool = False, method: str = "finetune",
                 adapt_steps: int = 0, params: Mapping[str, Any] | None = None, head: str | None = None,
                 head_options: Mapping[str, Any] | None = None) -> list[Arm]:
    """One arm per strategy, random (the baseline) always first and never with pseudo-labels
    unless asked for with the others; `adapt_steps`, `head`: see Arm. `params` go to every
    strategy that takes them (random takes none)."""
    names = [BASELINE] + [s for s in dict.fromkeys(strategies) if s != BASELINE]
    if pseudo:  # GAAL and ASAL score no pool, so CEAL has nothing to go on
        names = [s for s in names if s not in STRATEGIES or "generative" not in STRATEGIES[s].needs]
    suffix = ("+ceal" if pseudo else "") + ("" if method == "finetune" else f"+{method}")
    return [Arm(s + suffix, s, pseudo=pseudo, method=method, adapt_steps=adapt_steps,
                params=_accepted(s, params or {}), head=head, head_options=head_options or {})
            for s in names]


def _accepted(strategy: str, params: Mapping[str, Any]) -> dict:
    """The parameters the strategy's function takes."""
    import inspect

    if not params or strategy not in STRATEGIES:
        return {}
    signature = inspect.signature(STRATEGIES[strategy].select).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.values())
    return {k: v for k, v in params.items() if takes_any or k in signature}


def check_source(arms: Sequence[Arm], has_source: bool) -> None:
    """Refuse, before any work, an arm whose transfer method needs labelled source images
    when there are none (it would fail, or learn nothing, only once its turn came)."""
    if has_source:
        return
    needing = sorted({a.method for a in arms if a.head is None and METHODS[a.method].needs_source()})
    if needing:
        raise ProjectError(f"The method {', '.join(needing)} needs labelled source images (--source); "
                           "without them, use finetune.")


def _run_key(data: SimData, arm: Arm, config: SimulationConfig, seed: int, gan=None) -> str:
    fields = {"version": RUN_VERSION, "data": data.fingerprint(), "arm": arm.to_json(), "seed": seed,
              "config": config.run_fields(embedding=arm.head is not None)}
    if data.x_val is not None:
        fields.update(NO_VALIDATION_KEY)
    if "generative" in STRATEGIES[arm.strategy].needs:  # GAAL, ASAL: their GAN too
        fields["gan"] = gan.to_json()
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def simulate_job(data: SimData, arms: Sequence[Arm], config: SimulationConfig,
                 out_dir: str | Path | None = None, gan=None) -> Generator[Progress, None, dict]:
    """Run every arm for every seed (random must be one of the arms); returns the summary.
    With `out_dir`, finished runs are kept in out_dir/runs and reused when run again.
    `gan` (simulate_gan.GanSimConfig) sets up GAAL and ASAL arms: the GAN, ASAL's feature
    space and the stand-in oracle for synthetic images."""
    from atl_desktop.simulate_gan import GanSimConfig, prepare_job

    gan = gan or GanSimConfig()
    if not any(a.name == BASELINE for a in arms):
        arms = [Arm(BASELINE, BASELINE), *arms]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ProjectError("Arm names must be unique.")
    check_source(arms, data.x_source is not None)
    fine_tuned = [a for a in arms if a.head is None]
    prepared = _prepare(data, config) if fine_tuned else None
    embeddings = None
    runs: dict[str, dict[int, list[dict]]] = {a.name: {} for a in arms}
    run_dir = None if out_dir is None else Path(out_dir) / "runs"
    todo = len(arms) * len(config.seeds)
    done = 0
    with tempfile.TemporaryDirectory(prefix="atl-simulate-") as tmp:
        for seed in config.seeds:
            start = None
            for arm in arms:
                key = _run_key(data, arm, config, seed, gan)
                saved = _load_run(run_dir, arm, seed, key)
                if saved is None and arm.head is not None:
                    if embeddings is None:
                        embeddings = yield from embeddings_job(data, config, out_dir)
                    saved = yield from run_embedding_arm(embeddings, _pool_arrays(data, config)[1], data.y_test,
                                                         arm, config, seed, data.classes)
                    _save_run(run_dir, arm, seed, key, saved)
                if saved is None:
                    if start is None:
                        start = yield from _cached_initial_model(prepared, config, seed, data, out_dir)
                    if "generative" in STRATEGIES[arm.strategy].needs and prepared.gan is None:
                        prepared.gan = yield from prepare_job(
                            prepared, config, gan, data.fingerprint(), list(data.classes), out_dir,
                            oracle=any(STRATEGIES[a.strategy].synthetic for a in arms))
                    saved = yield from run_arm_job(prepared, arm, config, seed, start, data.classes, Path(tmp))
                    _save_run(run_dir, arm, seed, key, saved)
                runs[arm.name][seed] = saved
                done += 1
                yield Progress(done, todo, f"{arm.name} seed {seed} done")
    summary = summarise(runs, arms, config, data)
    if any(a.head is not None for a in arms):
        if embeddings is None:  # every run was reused: so are the embeddings, with their timings
            embeddings = yield from embeddings_job(data, config, out_dir)
        summary["embeddings"] = embeddings.info
    if any("generative" in STRATEGIES[a.strategy].needs for a in arms):
        if prepared.gan is None:  # every run was reused: the GAN and oracle are, too (their facts go in)
            prepared.gan = yield from prepare_job(prepared, config, gan, data.fingerprint(), list(data.classes),
                                                  out_dir, oracle=any(STRATEGIES[a.strategy].synthetic for a in arms))
        summary["gan"] = {"config": gan.to_json(), **prepared.gan.info}
    return summary


def _cached_initial_model(prepared: _Prepared, config: SimulationConfig, seed: int, data: SimData,
                          out_dir: str | Path | None):
    """The seed's starting model, kept in out_dir/runs (safetensors) when there is a source."""
    from atl_desktop.models.checkpoints import load_model_file, save_model_file

    fields = {"version": RUN_VERSION, "data": data.fingerprint(), "seed": seed, "backbone": config.backbone,
              "epochs": config.source_epochs, "batch_size": config.batch_size, "lr": config.lr}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    path = None if out_dir is None or data.x_source is None else Path(out_dir) / "runs" / f"start-{key}.safetensors"
    if path is not None and path.is_file():
        return load_model_file(path, classes=list(data.classes))[0]
    model = yield from initial_model_job(prepared, config, seed, len(data.classes))
    if path is not None:
        save_model_file(path, model, classes=list(data.classes), config=fields, seed=seed)
    return model


def _run_file(run_dir: Path, arm: Arm, seed: int) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "+-_." else "_" for ch in arm.name)
    return run_dir / f"{safe}__seed{seed}.json"


def _load_run(run_dir: Path | None, arm: Arm, seed: int, key: str) -> list[dict] | None:
    if run_dir is None:
        return None
    path = _run_file(run_dir, arm, seed)
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["records"] if saved.get("key") == key else None


def _save_run(run_dir: Path | None, arm: Arm, seed: int, key: str, records: list[dict]) -> None:
    from atl_desktop.store.files import atomic_write_text

    if run_dir is not None:
        atomic_write_text(_run_file(run_dir, arm, seed), json.dumps({"key": key, "arm": arm.to_json(),
                                                                     "seed": seed, "records": records}))


# ---- summaries -----------------------------------------------------------------------------


def labels_to_reach(labels: Sequence[int], accuracy: Sequence[float], target: float) -> int | None:
    """The fewest labels at which a (mean) learning curve reaches `target`; None if never."""
    for n, a in zip(labels, accuracy, strict=True):
        if a >= target - 1e-12:
            return int(n)
    return None


def area_under_curve(labels: Sequence[int], accuracy: Sequence[float]) -> float | None:
    """Trapezoidal area under accuracy against labels, divided by the label range (mean accuracy)."""
    x = np.asarray(labels, dtype=np.float64)
    y = np.asarray(accuracy, dtype=np.float64)
    if len(x) < 2 or x[-1] == x[0]:
        return float(y[0]) if len(y) else None
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def _curve(per_seed: dict[int, list[dict]], metric: str = "accuracy") -> dict:
    """Mean and std of `metric` over seeds, round by round, up to the shortest run."""
    length = min(len(r) for r in per_seed.values())
    acc = np.asarray([[rec[metric] for rec in r[:length]] for r in per_seed.values()])
    labels = [int(np.mean([r[k]["labels"] for r in per_seed.values()])) for k in range(length)]
    return {"labels": labels, "mean": acc.mean(0).tolist(), "std": acc.std(0).tolist()}


def summarise(runs: dict[str, dict[int, list[dict]]], arms: Sequence[Arm], config: SimulationConfig,
              data: SimData | None = None) -> dict:
    """Curves per arm, labels each arm needs to reach random's final accuracy, and AULC."""
    curves = {name: _curve(per_seed, config.metric) for name, per_seed in runs.items() if per_seed}
    baseline = curves[BASELINE]
    target = baseline["mean"][-1]
    final_labels = baseline["labels"][-1]
    out_arms = {}
    for arm in arms:
        if arm.name not in curves:
            continue
        curve = curves[arm.name]
        need = labels_to_reach(curve["labels"], curve["mean"], target)
        out_arms[arm.name] = {
            **arm.to_json(), **curve,
            "accuracy_per_seed": {str(s): [rec["accuracy"] for rec in r] for s, r in runs[arm.name].items()},
            "balanced_accuracy_per_seed": {str(s): [rec.get("balanced_accuracy") for rec in r]
                                           for s, r in runs[arm.name].items()},
            "labels_per_seed": {str(s): [rec["labels"] for rec in r] for s, r in runs[arm.name].items()},
            "rounds": {str(s): r for s, r in runs[arm.name].items()},
            "labels_to_match_random": need,
            f"labels_to_match_random_{final_labels}": need,
            "aulc": area_under_curve(curve["labels"], curve["mean"]),
            "final_accuracy": curve["mean"][-1],
        }
    return {
        "config": config.to_json(), "metric": config.metric, "classes": list(data.classes) if data else None,
        "pool": None if data is None else int(min(len(data.y_pool), config.pool_size or len(data.y_pool))),
        "test": None if data is None else int(len(data.y_test)),
        "random_final_accuracy": target, "random_final_labels": final_labels, "arms": out_arms,
    }


def write_outputs(summary: dict, out_dir: str | Path, *, stem: str = "simulation",
                  title: str = "Learning curves") -> dict[str, Path]:
    """JSON, CSV (one row per arm, seed and round) and the learning-curve PNG."""
    from atl_desktop.store.files import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    atomic_write_text(paths["json"], json.dumps(summary, indent=1, allow_nan=False, default=_json_default))
    columns = ["arm", "seed", "round", "labels", "accuracy", "balanced_accuracy", "ece", "kappa", "pseudo",
               "pseudo_accuracy"]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for name, arm in summary["arms"].items():
            for seed, records in arm["rounds"].items():
                for rec in records:
                    writer.writerow([name, seed] + [rec.get(c) for c in columns[2:]])
    plot_learning_curves(summary, paths["png"], title=title)
    return paths


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def plot_learning_curves(summary: dict, path: str | Path, *, title: str = "Learning curves") -> Path:
    """Write `learning_curve_figure` as a PNG."""
    learning_curve_figure(summary, title=title).savefig(path)
    return Path(path)


def learning_curve_figure(summary: dict, *, title: str = "Learning curves"):
    """Mean test accuracy against labels with a ±1 std band per arm; random dashed in black,
    its final accuracy as a dotted line."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no global backend, safe beside the GUI

    figure = Figure(figsize=(7.5, 5), dpi=120)
    ax = figure.subplots()
    others = [name for name in summary["arms"] if name != BASELINE]
    palette = colormaps["tab10" if len(others) <= 10 else "tab20"]  # a colour of its own for each arm
    for name, arm in summary["arms"].items():
        x = np.asarray(arm["labels"])
        mean, std = np.asarray(arm["mean"]), np.asarray(arm["std"])
        style = ({"color": "black", "linestyle": "--", "linewidth": 2} if name == BASELINE
                 else {"color": palette(others.index(name) % palette.N), "linewidth": 1.5})
        need = arm.get("labels_to_match_random")
        label = name if name == BASELINE or need is None else f"{name} (matches random with {need})"
        line = ax.plot(x, mean, label=label, **style)[0]
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.12, linewidth=0)
    ax.axhline(summary["random_final_accuracy"], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("labelled target images")
    ax.set_ylabel("test " + summary.get("metric", "accuracy").replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure
