"""The pieces of a resumable active-learning round over a project.

A round is: query (the round's row is written with the chosen images) ->
labels (by the expert, or from the hidden ground truth in a simulation) ->
pseudo-labels (CEAL, optional) -> fine-tune (a checkpoint) -> assess and
finish (test accuracy, calibration, stopping signal; the round is closed).

Every step's result is committed in one transaction together with the round's
step, kept in the setting ROUND_STATE, so a round stopped anywhere (even by
SIGKILL) resumes after its last committed step: `session.finish_round_job`
reads `round_state` and skips what is done. Checkpoint files are written
atomically before their record. The pure parts (predictions, evaluation,
stop-set agreement) are shared with the in-memory simulation (simulate.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atl_desktop.active.calibration import (
    MIN_FIT_LABELS,
    TemperatureFit,
    calibration_summary,
    cohen_kappa,
    ece_change_words,
    scaled_calibration,
    stabilised,
    temperature_fit,
)
from atl_desktop.jobs import Progress
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import ROUND_STATE

STOP_SET = "stop_set"  # {"seed": s, "image_ids": [...]}: fixed unlabelled images for the stop signal
STOP_SET_SIZE = 1000
ORACLE = "oracle"  # annotator name of labels taken from the hidden ground truth
DISCARDED = "discarded"  # metrics key of a round closed without training (`atl round discard`)
# The steps a round has committed, in order. "queried": its row exists (query_job).
STEPS = ("queried", "labelled", "pseudo-labelled", "trained")

OnCommit = Callable[[str], None]


@dataclass(frozen=True)
class RoundState:
    round_id: int
    step: str
    data: Mapping = field(default_factory=dict)

    def reached(self, step: str) -> bool:
        return STEPS.index(self.step) >= STEPS.index(step)


def open_round(project: Project):
    """The newest unfinished round, or None."""
    unfinished = [r for r in project.rounds() if r.finished is None]
    return unfinished[-1] if unfinished else None


class RoundOpenError(ProjectError):
    """A new round was asked for while one is open."""

    def __init__(self, message: str, round_id: int, labelled: int, chosen: int) -> None:
        super().__init__(message)
        self.round_id, self.labelled, self.chosen = round_id, labelled, chosen


def check_can_query(project: Project) -> None:
    """The one rule for opening a round, used by every query (session.query_job, so `atl query`,
    `atl round query` and the window alike): the open round is first finished (labelled and
    trained: `atl train`, `atl round train` or the window's Train) or discarded. So a label
    belongs to one round, a plain `atl train` closes what a plain `atl query` opened, and
    `atl round status` has one open round to report."""
    current = open_round(project)
    if current is None:
        return
    chosen = chosen_images(project, current.id)
    labelled = sum(project.label_of(i) is not None for i in chosen)
    raise RoundOpenError(
        f"Round {current.id} is still open ({labelled} of {len(chosen)} chosen images labelled): label "
        "them and train (`atl train`), or discard the round (`atl round discard`), before a new query.",
        current.id, labelled, len(chosen))


def check_can_finish(project: Project, round_id: int) -> None:
    """Training closes the open round only once the expert has labelled some of its images."""
    chosen = chosen_images(project, round_id)
    if chosen and all(project.label_of(i) is None for i in chosen):
        raise ProjectError(f"Round {round_id}: none of its {len(chosen)} chosen images is labelled yet; "
                           "label them first, or discard the round (`atl round discard`).")


def discard_round(project: Project) -> list[int]:
    """Close every unfinished round without training (metrics {DISCARDED: true}); their labels
    stay. Projects made before the one-open-round rule may hold several. Returns their ids."""
    ids = [r.id for r in project.rounds() if r.finished is None]
    with project.transaction():
        for round_id in ids:
            project.finish_round(round_id, {DISCARDED: True})
        if ids:
            project.set_setting(ROUND_STATE, None)
    return ids


def completed_rounds(project: Project) -> list:
    """Finished rounds that trained a model (discarded ones are left out)."""
    return [r for r in project.rounds() if r.finished is not None and not r.metrics.get(DISCARDED)]


def round_state(project: Project, round_id: int) -> RoundState:
    saved = project.get_setting(ROUND_STATE)
    if not saved or saved.get("round") != round_id:
        return RoundState(round_id, "queried")
    return RoundState(round_id, saved["step"], {k: v for k, v in saved.items() if k not in ("round", "step")})


def record_step(project: Project, round_id: int, step: str, **data) -> None:
    """Write the round's step; call inside the transaction that commits the step's result."""
    if step not in STEPS:
        raise ValueError(f"unknown round step {step!r}")
    previous = round_state(project, round_id).data
    project.set_setting(ROUND_STATE, {**previous, **data, "round": round_id, "step": step})


def notify(on_commit: OnCommit | None, step: str) -> None:
    if on_commit is not None:
        on_commit(step)


# ---- labels ------------------------------------------------------------------------------


def chosen_images(project: Project, round_id: int) -> list[int]:
    for r in project.rounds():
        if r.id == round_id:
            return [int(i) for i in r.params.get("chosen", [])]
    raise ProjectError(f"No round {round_id} in {project.path.name}.")


def label_from_truth(project: Project, round_id: int, *, annotator: str = ORACLE) -> int:
    """The oracle: label the round's chosen images with their hidden ground truth, and mark
    the round labelled, in one transaction. Returns how many labels were given."""
    truth = project.truth()
    labelled = project.current_labels()
    chosen = chosen_images(project, round_id)
    missing = [i for i in chosen if i not in truth]
    if any(project.image(i).synthetic for i in missing):
        raise ProjectError(f"Round {round_id} asks about images the GAN made (GAAL); they have no ground truth. "
                           "Label them yourself (the window, or `atl label`), then train without --oracle.")
    if missing:
        raise ProjectError(f"{len(missing)} chosen images have no ground truth; the oracle cannot label them.")
    strategy = next(r.strategy for r in project.rounds() if r.id == round_id)
    given = 0
    with project.transaction():
        for image_id in chosen:
            if image_id not in labelled:
                project.set_label(image_id, truth[image_id], annotator=annotator, round=round_id,
                                  strategy=strategy)
                given += 1
        record_step(project, round_id, "labelled", oracle=True)
    return given


def shown_suggestions(items) -> dict[str, list]:
    """What a query showed per image, kept in the round's row: {image id: [class position, p]}
    of the model's top class (positions in the round checkpoint's class order)."""
    return {str(it.image_id): [int(it.top[0][0]), float(it.top[0][1])] for it in items if it.top}


def label_provenance(project: Project, image_id: int) -> dict:
    """The keywords of `Project.set_label` that the window records for an image of the open round
    (gui/queryview.py label_kwargs): the round, its strategy, the checkpoint that scored the pool
    and the suggestion the query showed. Empty for an image the open round did not choose."""
    current = open_round(project)
    if current is None or image_id not in chosen_images(project, current.id):
        return {}
    out: dict = {"round": current.id, "strategy": current.strategy, "checkpoint_id": current.checkpoint_id}
    shown = current.params.get("shown", {}).get(str(image_id))
    if shown is not None:
        checkpoint = None if current.checkpoint_id is None else project.checkpoint(current.checkpoint_id)
        names = list(checkpoint.classes) if checkpoint is not None else project.class_names()
        by_name = {c.name: c.id for c in project.classes()}
        position, probability = shown
        if 0 <= position < len(names) and names[position] in by_name:
            out.update(suggestion=by_name[names[position]], suggestion_confidence=float(probability))
    return out


def training_labels(project: Project, round_id: int | None) -> tuple[dict[int, int], dict[int, int]]:
    """(labels, pseudo): the target pool's labels (accepted pseudo-labels included, being
    labels) and the round's pending pseudo-labels on images still unlabelled (CEAL uses
    them for this fine-tune only). Rejected and expired pseudo-labels are in neither, and
    neither holds an audit image still held out (it trains nothing until released)."""
    labels = project.current_labels(domain="target", split="pool", for_training=True)
    pseudo = {}
    if round_id is not None:
        held_out = project.audit_ids(held_out=True)
        pseudo = {p.image_id: p.class_id for p in project.pseudo_labels("pending")
                  if p.round_id == round_id and p.image_id not in labels and p.image_id not in held_out}
    return labels, pseudo


def pseudo_dataset(project: Project, pseudo: Mapping[int, int], transform):
    """The pseudo-labelled images as a dataset (labels are class positions)."""
    from atl_desktop.data.datasets import ImageDataset

    position = project.class_index()
    ids = sorted(i for i, c in pseudo.items() if c in position)
    dataset = ImageDataset([project.image_path(project.image(i)) for i in ids],
                           [position[pseudo[i]] for i in ids], transform)
    dataset.image_ids = ids
    return dataset


# ---- fine-tuning -------------------------------------------------------------------------


def fine_tune_job(project: Project, config, *, round_id: int | None, pseudo: Mapping[int, int],
                  from_scratch: bool = False) -> Generator[Progress, None, tuple[int, dict]]:
    """Train as `transfer.train.train_project` does (from the latest checkpoint unless
    `from_scratch`, with the project's transfer method), adding `pseudo` to the labelled
    target images. The last phase's checkpoint is recorded together with the round's
    "trained" step. A resumed fine-tune starts from the checkpoint the interrupted one
    started from and skips the phases (source pre-training) it had already recorded.
    Returns (checkpoint id, training metrics)."""
    from torch.utils.data import ConcatDataset

    from atl_desktop.models.checkpoints import load_checkpoint, save_checkpoint
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.transfer.methods import METHODS
    from atl_desktop.transfer.train import _phases, _prefixed, _starting_model, train

    classes = project.class_names()
    if len(classes) < 2:
        raise ProjectError("Training needs at least two classes; add classes first.")
    if config.method not in METHODS:
        raise ProjectError(f"Unknown method {config.method!r}; choose one of {', '.join(METHODS)}.")
    start = _training_start(project, round_id, from_scratch)
    model = _starting_model(project, config, start, classes)
    if not 0 <= config.freeze <= len(model.stages):
        raise ProjectError(f"{model.backbone_name} has {len(model.stages)} stages; "
                           f"freeze must be between 0 and {len(model.stages)}.")
    fit = input_transform(model.spec, train=True, augment=config.augment)
    phases = _phases(project, METHODS[config.method], start is None, fit, input_transform(model.spec))
    extra = pseudo_dataset(project, pseudo, fit)
    if len(extra):
        for phase in phases:
            sets = phase[-1]
            if sets["train"] is not None:
                sets["train"] = ConcatDataset([sets["train"], extra])
    if not phases:
        raise ProjectError("Nothing to train on: label some images first.")
    parent = start.id if start else None
    metrics: dict = {}
    recorded_phases = _recorded_phases(project, round_id)
    for k, phase in enumerate(phases):
        name, method, sets = _phase_parts(phase, config)
        earlier = recorded_phases.get((name, parent))
        if earlier is not None and k < len(phases) - 1:
            model, _ = load_checkpoint(project, earlier.id, classes=classes)
            parent, metrics = earlier.id, dict(earlier.metrics)
            continue
        job = train(model, sets["train"], config, val_set=sets["val"], source_set=sets["source"],
                    target_set=sets["target"], method=method)
        result = yield from _prefixed(job, name)
        metrics = {**result.metrics, **{f"n_{key}": len(v) for key, v in sets.items() if v is not None},
                   "n_pseudo": len(extra)}
        options = method.hyperparameters() if hasattr(method, "hyperparameters") else dict(config.method_options)
        recorded = {**config.to_dict(), "method": method.name, "method_options": options, "phase": name}
        with project.transaction():
            parent = save_checkpoint(project, model, classes=classes, parent_id=parent, round=round_id,
                                     config=recorded, metrics=metrics, seed=config.seed)
            if k == len(phases) - 1 and round_id is not None:
                record_step(project, round_id, "trained", checkpoint=parent, train=metrics)
    return parent, metrics


def _training_start(project: Project, round_id: int | None, from_scratch: bool):
    """The checkpoint a fine-tune starts from (None: a fresh model). A round's choice is
    kept in its state the first time, since an interrupted fine-tune may have recorded
    a phase's checkpoint (which then is the latest) before it was stopped."""
    if round_id is None:
        return None if from_scratch else project.latest_checkpoint()
    state = round_state(project, round_id)
    if "train_from" in state.data:
        saved = state.data["train_from"]
        return None if saved is None else project.checkpoint(int(saved))
    start = None if from_scratch else project.latest_checkpoint()
    record_step(project, round_id, state.step, train_from=None if start is None else start.id)
    return start


def _recorded_phases(project: Project, round_id: int | None) -> dict:
    """This round's checkpoints of finished phases, by (phase name, parent checkpoint)."""
    if round_id is None:
        return {}
    return {(c.config.get("phase"), c.parent_id): c for c in project.checkpoints() if c.round_id == round_id}


def _phase_parts(phase: tuple, config):
    """(name, method module, datasets) of a phase of transfer.train._phases: (name, sets) or
    (name, method name, sets), the method taking the config's options when it is the config's."""
    from atl_desktop.transfer.methods import make_method

    name, sets = phase[0], phase[-1]
    method_name = phase[1] if len(phase) == 3 else config.method
    options = config.method_options if method_name == config.method else None
    return name, make_method(method_name, options), sets


# ---- predictions and evaluation (shared with the simulation) -----------------------------


def predict_probs(model, dataset, *, batch_size: int = 256, device: str = "auto",
                  message: str = "predicting") -> Generator[Progress, None, np.ndarray]:
    """Softmax probabilities (N, C) of `model` on every item of `dataset`, in eval mode."""
    import torch
    from torch.utils.data import DataLoader

    from atl_desktop.transfer.train import resolve_device

    device = resolve_device(device)
    was_training = model.training
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    parts = []
    try:
        with torch.inference_mode():
            for i, batch in enumerate(loader):
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                parts.append(torch.softmax(model(x.to(device)).float(), dim=1).cpu().numpy())
                yield Progress(i + 1, len(loader), message)
    finally:
        model.train(was_training)
    n_classes = model.num_classes
    return np.concatenate(parts) if parts else np.zeros((0, n_classes), dtype=np.float32)


def evaluation_metrics(probs: np.ndarray, labels: Sequence[int], classes: Sequence[str] = (),
                       temperature: TemperatureFit | None = None) -> dict:
    """Accuracy, balanced accuracy, loss, confusion (transfer.train.EvalResult) and
    calibration of predictions against true labels (labels < 0 are skipped); with a
    temperature, the calibration after scaling too (calibration.scaled)."""
    from atl_desktop.transfer.train import EvalResult

    labels = np.asarray(labels, dtype=np.int64)
    keep = labels >= 0
    probs, labels = np.asarray(probs, dtype=np.float64)[keep], labels[keep]
    c = probs.shape[1]
    confusion = np.bincount(labels * c + probs.argmax(1), minlength=c * c).reshape(c, c)
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
    result = EvalResult(len(labels), float(nll.mean()) if len(labels) else float("nan"),
                        tuple(tuple(int(v) for v in row) for row in confusion), tuple(classes))
    out = result.to_dict()
    out["calibration"] = calibration_summary(probs, labels)
    if temperature is not None and len(labels):
        out["calibration"]["scaled"] = scaled_calibration(probs, labels, temperature)
    return out


def stop_signal(previous: np.ndarray | None, current: np.ndarray, earlier_kappas: Sequence[float | None]) -> dict:
    """Agreement of this round's predictions with the previous round's on the stop set,
    and whether predictions have stabilised (Bloodgood & Vijay-Shanker 2009)."""
    if previous is None:
        return {"kappa": None, "agreement": None, "n": int(len(current)), "stop": False}
    kappa = cohen_kappa(previous, current)
    return {"kappa": kappa, "agreement": float(np.mean(previous == current)), "n": int(len(current)),
            "stop": stabilised([*earlier_kappas, kappa])}


# ---- the project's stop set and a round's assessment ----------------------------------------


def stop_set_ids(project: Project, *, size: int = STOP_SET_SIZE, seed: int = 0) -> list[int]:
    """The fixed stop set: up to `size` unlabelled target pool images, drawn once by seed."""
    saved = project.get_setting(STOP_SET)
    if saved is not None:
        return [int(i) for i in saved["image_ids"]]
    labelled = project.current_labels(domain="target", split="pool")
    pool = np.asarray([i for i in project.image_ids("target", "pool", synthetic=False) if i not in labelled],
                      dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False)) if len(pool) else pool
    ids = [int(i) for i in chosen]
    project.set_setting(STOP_SET, {"seed": seed, "image_ids": ids})
    return ids


def _stop_cache(project: Project, sha256: str, ids: Sequence[int]) -> Path:
    import hashlib

    key = hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]
    return Path(project.data_dir) / "stopset" / f"{sha256}-{key}.npy"


def stop_predictions(project: Project, checkpoint_id: int, ids: Sequence[int], *,
                     device: str = "auto") -> Generator[Progress, None, np.ndarray]:
    """Predicted class positions of a checkpoint on the stop set, cached beside the project."""
    from atl_desktop.data.datasets import ImageDataset
    from atl_desktop.models.checkpoints import load_checkpoint
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.store.files import atomic_write_bytes

    record = project.checkpoint(checkpoint_id)
    cache = _stop_cache(project, record.sha256, ids)
    if cache.is_file():
        return np.load(cache, allow_pickle=False)
    model, _ = load_checkpoint(project, checkpoint_id)
    dataset = ImageDataset([project.image_path(project.image(i)) for i in ids], None,
                           input_transform(model.spec))
    probs = yield from predict_probs(model, dataset, device=device, message="predicting the stop set")
    preds = probs.argmax(axis=1).astype(np.int64)
    buffer = io.BytesIO()
    np.save(buffer, preds, allow_pickle=False)
    atomic_write_bytes(cache, buffer.getvalue())
    return preds


def calibration_split(project: Project) -> str | None:
    """Where a checkpoint's temperature is fitted: held-out labels the model never trained
    on, drawn as the user likes rather than by the query strategy. Today that is the
    target validation split, when it holds MIN_FIT_LABELS labels or more; audit labels
    (a random sample of the pool) belong here too once the store marks them. None: no
    such labels, so no temperature (T = 1); the suggestions' head has its own, fitted
    out of fold (active.head_calibration)."""
    labelled = project.current_labels(domain="target", split="val")
    return "val" if len(labelled) >= MIN_FIT_LABELS else None


def temperature_job(project: Project, model, split: str, *,
                    device: str = "auto") -> Generator[Progress, None, TemperatureFit | None]:
    """A checkpoint's temperature, fitted on its predictions for a split's labelled images."""
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.transfer.train import project_eval_dataset

    dataset = project_eval_dataset(project, split, input_transform(model.spec))
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if (labels >= 0).sum() < MIN_FIT_LABELS:
        return None
    probs = yield from predict_probs(model, dataset, device=device, message=f"calibrating on the {split} split")
    keep = labels >= 0
    probs, labels = np.asarray(probs, dtype=np.float64)[keep], labels[keep]
    usable = probs[np.arange(len(labels)), labels] > 0  # float32 softmax can underflow to 0
    where = {"val": "validation"}.get(split, split)
    return temperature_fit(probs[usable], labels[usable], fitted_on=f"{int(usable.sum())} labelled {where} images")


def calibration_job(project: Project, checkpoint_id: int | None, split: str = "test", *,
                    device: str = "auto") -> Generator[Progress, None, dict]:
    """ECE on a split's labelled images, before and after the temperature fitted on held-out
    labels (calibration_split; never the split measured). For `atl evaluate`."""
    from atl_desktop.models.checkpoints import load_checkpoint
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.transfer.train import project_eval_dataset

    model, record = load_checkpoint(project, checkpoint_id, classes=project.class_names())
    held_out = calibration_split(project)
    fit = None
    if held_out and held_out != split:
        fit = yield from temperature_job(project, model, held_out, device=device)
    dataset = project_eval_dataset(project, split, input_transform(model.spec))
    probs = yield from predict_probs(model, dataset, device=device, message=f"calibration on the {split} split")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    keep = labels >= 0
    out = {"checkpoint": record.id, "split": split, "ece": calibration_summary(probs[keep], labels[keep])["ece"]}
    if fit is not None:
        scaled = scaled_calibration(probs[keep], labels[keep], fit)
        out.update(ece_scaled=scaled["ece"], temperature=fit.to_json())
    return out


def calibration_words(result: Mapping) -> str:
    """One line: 'Calibration: ECE 0.12 → 0.04 (T = 1.8), fitted on 80 labelled validation images'."""
    if "ece_scaled" not in result:
        return (f"Calibration: ECE {result['ece']:.2f}; no temperature scaling (it needs {MIN_FIT_LABELS} "
                "or more labelled validation images the model never trained on)")
    fit = result["temperature"]
    return (f"Calibration: {ece_change_words(result['ece'], result['ece_scaled'], fit['temperature'])}, "
            f"T fitted on {fit['fitted_on']}")


def checkpoint_temperature(project: Project, checkpoint_id: int | None) -> float:
    """The temperature the newest assessment of a checkpoint fitted; 1.0 when none did."""
    for record in reversed(project.rounds()):
        fitted = (record.metrics or {}).get("temperature")
        if record.checkpoint_id == checkpoint_id and fitted and checkpoint_id is not None:
            return float(fitted["temperature"])
    return 1.0


def assess_job(project: Project, checkpoint_id: int, previous_id: int | None, *,
               device: str = "auto") -> Generator[Progress, None, dict]:
    """Test-split evaluation with calibration (when the split has labels or ground truth),
    the temperature fitted on held-out labels (calibration_split) with the test split's
    calibration after it, and the stop signal against the previous model (when there is one)."""
    from atl_desktop.models.checkpoints import load_checkpoint
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.transfer.train import project_eval_dataset

    metrics: dict = {}
    classes = project.class_names()
    split = calibration_split(project)
    fit = None
    if project.image_ids("target", "test") or split:
        model, _ = load_checkpoint(project, checkpoint_id, classes=classes)
        if split:
            fit = yield from temperature_job(project, model, split, device=device)
            if fit is not None:
                metrics["temperature"] = fit.to_json()
    if project.image_ids("target", "test"):
        dataset = project_eval_dataset(project, "test", input_transform(model.spec))
        if any(label >= 0 for label in dataset.labels):
            probs = yield from predict_probs(model, dataset, device=device, message="evaluating on the test split")
            metrics["test"] = evaluation_metrics(probs, dataset.labels, classes, fit)
    ids = stop_set_ids(project)
    if ids:
        current = yield from stop_predictions(project, checkpoint_id, ids, device=device)
        previous = None
        if previous_id is not None and project.checkpoint(previous_id).classes == classes:
            previous = yield from stop_predictions(project, previous_id, ids, device=device)
        earlier = [(r.metrics.get("stop") or {}).get("kappa") for r in completed_rounds(project)]
        metrics["stop"] = stop_signal(previous, current, earlier)
    return metrics
