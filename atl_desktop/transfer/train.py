"""The fine-tuning loop and evaluation, as jobs (generators of Progress).

`train` optimises a `Classifier` on a labelled training set, optionally with a
labelled source set and an unlabelled target set for transfer methods (see
`methods.py`). Every step yields a Progress carrying the loss terms; closing the
generator at a yield stops it cleanly (nothing is written by `train` itself;
`train_project` writes a checkpoint only when a phase has finished, so a
cancelled run leaves the last good checkpoint as it was).

Randomness is explicit: data order comes from seeded DataLoader generators, and
dropout and augmentations run inside a private random stream (the global torch
state is forked and restored around every step), so the same seed gives the
same result, whatever else the process does between steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    Subset,
    WeightedRandomSampler,
)

from atl_desktop.dist import SINGLE, DistContext
from atl_desktop.jobs import Progress
from atl_desktop.models.classifier import FEATURES, LOGITS, Classifier
from atl_desktop.store.keys import SCHEDULES
from atl_desktop.transfer.freeze import freeze_stages, layerwise_param_groups, unfreeze
from atl_desktop.transfer.methods import Method, RoleOutputs, StepOutputs, make_method

OPTIMIZERS = ("adamw", "sgd")
# "onecycle" (Smith & Topin 2019): the learning rate warms up from lr/25 to lr over the first
# 30 % of the steps, then anneals to nearly zero. With a few hundred steps on a few dozen
# labels it learns where a constant rate either crawls or overshoots.
# A labelled set is imbalanced when its largest class has more than IMBALANCE_RATIO times the
# images of its smallest (classes without any left out). A 3-to-2 split is the ordinary scatter
# of a few dozen labels and plain shuffling shows both classes in every batch; beyond it the
# larger class fills the batches, and with few labels the model drifts to predicting it alone.
IMBALANCE_RATIO = 1.5
BALANCED_CHOICES = (True, False, "auto")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; stored with each checkpoint."""

    backbone: str = "resnet18"
    weights: str | None = None  # None, "imagenet" or a local file
    method: str = "finetune"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    schedule: str = "constant"  # one of SCHEDULES
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    freeze: int = 0  # number of body stages kept fixed, from the input
    lr_decay: float = 1.0  # layer-wise: stage i of n gets lr * lr_decay ** (n - i)
    # Class-balanced sampling of labelled data: True, False, or "auto" (on for each labelled
    # set that is imbalanced, see is_imbalanced; projects train with "auto" by default).
    balanced: bool | str = False
    augment: str = "none"  # "none" | "natural" | "histology"
    patience: int = 3  # early stopping: epochs without validation gain (0 = never stop)
    seed: int = 0
    amp: bool = True  # automatic mixed precision on CUDA
    num_workers: int = 0
    input_size: int | None = None
    bottleneck_dim: int | None = None
    device: str = "auto"
    max_steps: int | None = None  # stop after this many steps in all (quick runs)
    # At least this many steps: a few labels make short epochs, so the epochs grow until a
    # round with 20 labels still gets enough optimisation to learn (None: epochs decide).
    min_steps: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs, batch size and learning rate must be positive")
        if self.balanced not in BALANCED_CHOICES:
            raise ValueError("balanced must be true, false or \"auto\"")
        object.__setattr__(self, "method_options", dict(self.method_options))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class TrainResult:
    steps: int
    epochs: int
    best_epoch: int | None
    stopped_early: bool
    history: tuple[dict[str, float], ...]
    metrics: dict[str, float]


@dataclass(frozen=True)
class EvalResult:
    """Evaluation of a classifier on labelled data; confusion rows are true classes."""

    n: int
    loss: float
    confusion: tuple[tuple[int, ...], ...]
    classes: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float:
        correct = sum(self.confusion[i][i] for i in range(len(self.confusion)))
        return correct / self.n if self.n else math.nan

    @property
    def per_class_recall(self) -> tuple[float | None, ...]:
        """Recall of each class; None for a class with no examples."""
        return tuple(row[i] / sum(row) if sum(row) else None for i, row in enumerate(self.confusion))

    @property
    def balanced_accuracy(self) -> float:
        recalls = [r for r in self.per_class_recall if r is not None]
        return sum(recalls) / len(recalls) if recalls else math.nan

    @property
    def headline(self) -> str:
        """The metric to read first: balanced accuracy where the evaluated classes are
        imbalanced (plain accuracy there mostly counts the largest class), else accuracy."""
        return "balanced_accuracy" if is_imbalanced([sum(row) for row in self.confusion]) else "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "headline": self.headline, "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy, "loss": self.loss,
            "per_class_recall": list(self.per_class_recall),
            "confusion": [list(r) for r in self.confusion], "classes": list(self.classes),
        }

    def report(self) -> str:
        names = list(self.classes) or [str(i) for i in range(len(self.confusion))]
        width = max(len(n) for n in names)
        plain, balanced = f"accuracy: {self.accuracy:.4f}", f"balanced accuracy: {self.balanced_accuracy:.4f}"
        if self.headline == "balanced_accuracy":
            counts = [sum(row) for row in self.confusion if sum(row)]
            head = (f"images: {self.n}   {balanced}   {plain}   loss: {self.loss:.4f}\n"
                    f"classes are imbalanced ({max(counts)} images against {min(counts)}): read balanced "
                    "accuracy, the mean of the per-class recalls below")
        else:
            head = f"images: {self.n}   {plain}   {balanced}   loss: {self.loss:.4f}"
        lines = [head, "", f"{'class':<{width}}  recall   n"]
        for name, recall, row in zip(names, self.per_class_recall, self.confusion, strict=True):
            shown = "   -  " if recall is None else f"{recall:.4f}"
            lines.append(f"{name:<{width}}  {shown}  {sum(row)}")
        lines += ["", "confusion (rows: true, columns: predicted)"]
        lines += [f"{name:<{width}}  " + " ".join(f"{v:5d}" for v in row)
                  for name, row in zip(names, self.confusion, strict=True)]
        return "\n".join(lines)


# ---- devices and randomness ----------------------------------------------------


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class PrivateRandomStream:
    """A torch random stream of our own for code that draws from the global one (dropout,
    augmentations): the global state is forked, set to ours, and restored after each use."""

    def __init__(self, seed: int, device: torch.device):
        self._cpu = torch.Generator().manual_seed(seed).get_state()
        self._cuda_index: int | None = None
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            self._cuda_index = index
            self._cuda = torch.Generator(device=f"cuda:{index}").manual_seed(seed).get_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        devices = [] if self._cuda_index is None else [self._cuda_index]
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self._cpu)
            if self._cuda_index is not None:
                torch.cuda.set_rng_state(self._cuda, self._cuda_index)
            yield
            self._cpu = torch.get_rng_state()
            if self._cuda_index is not None:
                self._cuda = torch.cuda.get_rng_state(self._cuda_index)


def derived_seeds(seed: int, n: int) -> list[int]:
    """n independent seeds from one (numpy's SeedSequence)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint64) >> 1]


# ---- data ------------------------------------------------------------------------


def dataset_labels(dataset: Dataset) -> list[int]:
    """Labels of a dataset without decoding images where the dataset exposes them."""
    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [y for d in dataset.datasets for y in dataset_labels(d)]
    for attribute in ("labels", "targets", "y"):
        values = getattr(dataset, attribute, None)
        if values is not None:
            return [int(v) for v in values]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def is_imbalanced(counts: Sequence[int]) -> bool:
    """Whether the largest class count is above IMBALANCE_RATIO times the smallest non-zero one."""
    present = [int(c) for c in counts if c > 0]
    return bool(present) and max(present) > IMBALANCE_RATIO * min(present)


def resolve_balanced(setting: bool | str, dataset: Dataset) -> bool:
    """TrainConfig.balanced for one labelled set: "auto" looks at the set's class counts."""
    if setting != "auto":
        return bool(setting)
    labels = [y for y in dataset_labels(dataset) if y >= 0]
    return is_imbalanced(np.bincount(labels)) if labels else False


def balanced_weights(labels: Sequence[int]) -> torch.Tensor:
    """Sampling weight 1 / (count of the item's class): every class is drawn equally often."""
    y = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(y)
    return 1.0 / counts[y].double()


def make_loader(
    dataset: Dataset, config: TrainConfig, seed: int, *, train: bool, balanced: bool, pin: bool,
    context: DistContext = SINGLE,
) -> DataLoader:
    """Batches of `dataset`; over several ranks, each rank's part of every batch.

    `config.batch_size` is the batch of the whole job: each of W ranks loads
    batch_size / W items of its DistributedSampler share (or, class-balanced, an
    independent 1/W of the draws), so a step sees as many images as in one process.
    """
    world = context.world_size
    generator = torch.Generator().manual_seed(seed)
    batch_size = config.batch_size // world
    sampler = None
    if train and balanced:
        if world > 1:  # draws with replacement: every rank draws its share independently
            generator = torch.Generator().manual_seed(derived_seeds(seed, world)[context.rank])
        sampler = WeightedRandomSampler(balanced_weights(dataset_labels(dataset)),
                                        num_samples=math.ceil(len(dataset) / world),
                                        replacement=True, generator=generator)
    elif world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=context.rank, shuffle=train,
                                     seed=seed % 2**63)
    n = len(sampler) if sampler is not None else len(dataset)
    # A last batch of one breaks batch norm in training mode; drop it then.
    drop_last = train and n > batch_size and n % batch_size == 1
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
        generator=generator, num_workers=config.num_workers, pin_memory=pin, drop_last=drop_last,
        persistent_workers=config.num_workers > 0,
    )


def _start_pass(loader: DataLoader, number: int) -> None:
    """A DistributedSampler shuffles by (seed, pass number): tell it which pass this is."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(number)


class _Cycle:
    """Endless iteration over a loader, reshuffled (by its generator) on every pass."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self._passes = 0
        self._it = iter(loader)

    def __next__(self):
        try:
            return next(self._it)
        except StopIteration:
            self._passes += 1
            _start_pass(self.loader, self._passes)
            self._it = iter(self.loader)
            return next(self._it)


# ---- training ----------------------------------------------------------------------


def make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total: int):
    """The learning-rate schedule over `total` steps (None: constant). Each parameter group
    peaks at its own rate, so layer-wise rates keep their ratios."""
    if config.schedule != "onecycle" or total < 2:
        return None
    peaks = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total)


@dataclass
class _Loop:
    """What one training step needs, gathered once."""

    model: Classifier
    method: Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    device: torch.device
    layers: tuple[str, ...]
    total: int
    context: DistContext = SINGLE
    ddp: nn.Module | None = None  # the model and the method under DistributedDataParallel
    scheduler: Any = None  # torch.optim.lr_scheduler, stepped after each optimiser step

    def autocast(self):
        if self.scaler is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.float16)

    def step(self, batches: dict[str, tuple[Tensor, Tensor | None]], step: int) -> dict[str, float]:
        inputs = {r: x.to(self.device, non_blocking=True) for r, (x, _) in batches.items()}
        labels = {r: (None if y is None else y.to(self.device, non_blocking=True))
                  for r, (_, y) in batches.items()}
        with self.autocast():
            terms, out = (self.losses if self.ddp is None else self.ddp)(inputs, labels, step)
            loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        metrics = self._metrics(loss, terms, out)  # the rate this step used
        if self.scheduler is not None:
            self.scheduler.step()
        self.method.after_step()
        return self._mean_over_ranks(metrics)

    def losses(self, inputs: dict[str, Tensor], labels: dict[str, Tensor | None],
               step: int) -> tuple[dict[str, Tensor], StepOutputs]:
        """The forward pass of a step and the method's loss terms."""
        layers = self._forward({r: x for r, x in inputs.items() if r in self.method.forward_roles})
        per_role = {r: RoleOutputs(layers.get(r, {}), labels[r], inputs[r]) for r in inputs}
        out = StepOutputs(per_role.get("labelled"), per_role.get("source"), per_role.get("target"),
                          step, self.total)
        return self.method.losses(out), out

    def _mean_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.context.world_size == 1:
            return metrics
        names = sorted(k for k in metrics if k != "lr")
        means = self.context.sum([metrics[k] for k in names]) / self.context.world_size
        return {**metrics, **{k: float(v) for k, v in zip(names, means, strict=True)}}

    def _forward(self, inputs: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        """One forward pass over the concatenated roles; the named layers split by role."""
        if not inputs:
            return {}
        roles, xs = list(inputs), list(inputs.values())
        sizes = [len(x) for x in xs]
        with self.method.batch_context(roles, sizes):
            x = torch.cat(xs) if len(xs) > 1 else xs[0]
            if self.layers == (FEATURES, LOGITS):
                f, logits = self.model.features_and_logits(x)
                outputs = {FEATURES: f, LOGITS: logits}
            else:
                outputs = self.model.intermediate(x, self.layers)
        split = {name: torch.split(t, sizes) for name, t in outputs.items()}
        return {r: {name: parts[i] for name, parts in split.items()} for i, r in enumerate(roles)}

    def _metrics(self, loss: Tensor, terms: dict[str, Tensor], out: StepOutputs) -> dict[str, float]:
        metrics = {"loss": float(loss.detach())}
        metrics.update({k: float(v.detach()) for k, v in terms.items()})
        graded = [r for r in (out.labelled, out.source) if r is not None and r.layers]
        if graded:
            hits = graded[0].logits.detach().argmax(1) == graded[0].labels
            metrics["accuracy"] = float(hits.float().mean())
        metrics["lr"] = self.optimizer.param_groups[-1]["lr"]
        return metrics


class _StepModule(nn.Module):
    """The model and the method's own modules (a domain discriminator...) as one module
    whose forward is a training step's losses, so that DistributedDataParallel
    averages the gradients of all of them."""

    def __init__(self, loop: _Loop):
        super().__init__()
        self.model = loop.model
        self.method = loop.method
        self._losses = loop.losses

    def forward(self, inputs, labels, step):
        return self._losses(inputs, labels, step)


def _distribute(loop: _Loop) -> nn.Module:
    devices = [loop.device] if loop.device.type == "cuda" else None
    # The same roles and losses every step; some methods leave parameters out (ADDA's head).
    return DistributedDataParallel(_StepModule(loop), device_ids=devices, static_graph=True)


def train(
    model: Classifier,
    train_set: Dataset | None,
    config: TrainConfig,
    *,
    val_set: Dataset | None = None,
    source_set: Dataset | None = None,
    target_set: Dataset | None = None,
    method: Method | None = None,
    context: DistContext = SINGLE,
) -> Generator[Progress, None, TrainResult]:
    """Train `model` in place; yields Progress every step, returns a TrainResult.

    train_set: labelled (target) images; source_set: labelled source images;
    target_set: unlabelled target images (labels ignored), for transfer methods.
    An epoch is one pass over train_set (or source_set when there is no
    train_set); the other sets are cycled. With val_set, training stops early
    after `config.patience` epochs without a better validation accuracy (ties
    broken by loss), and the best weights are restored at the end.
    The method may choose the source images first (`select_source`), acts on the model
    before the first step (`setup`), may work after the last one (`finish`, e.g. AdaBN),
    and always gets to undo its changes to the model at the end (`teardown`).

    With a `context` of several ranks (torch.distributed), every rank runs this with
    the same arguments: each loads its share of every batch (`make_loader`),
    DistributedDataParallel averages the gradients, validation is shared out, and
    the ranks end with rank 0's weights.
    """
    main = train_set if train_set is not None else source_set
    if main is None or len(main) == 0:
        raise ValueError("nothing to train on: give a labelled training or source set")
    if config.batch_size % context.world_size:
        raise ValueError(f"the batch size ({config.batch_size}) is split over {context.world_size} "
                         "processes: make it a multiple of that number")
    device = resolve_device(config.device)
    method = method if method is not None else make_method(config.method, config.method_options)
    layers = tuple(dict.fromkeys((*method.layers, FEATURES, LOGITS)))
    seeds = derived_seeds(config.seed, 4)
    use_cuda = device.type == "cuda"
    model.to(device)
    method.to(device)
    selected: dict[str, float] = {}
    if source_set is not None and len(source_set) > 0:
        chosen = method.select_source(source_set, [d for d in (train_set, target_set) if d is not None])
        if chosen is not source_set:
            source_set, selected = chosen, {"n_source_selected": len(chosen)}
    loaders = {}
    for role, ds, seed in (("labelled", train_set, seeds[0]), ("source", source_set, seeds[1]),
                           ("target", target_set, seeds[2])):
        if ds is not None and len(ds) > 0:
            balanced = role != "target" and resolve_balanced(config.balanced, ds)
            if role != "target":  # what "auto" chose, kept with the checkpoint's metrics
                selected[f"{role}_balanced_sampling"] = float(balanced)
            loaders[role] = make_loader(ds, config, seed, train=True, pin=use_cuda, balanced=balanced,
                                        context=context)
    main_role = "labelled" if "labelled" in loaders else "source"
    config = with_min_steps(config, len(loaders[main_role]))
    total = config.epochs * len(loaders[main_role])
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    freeze_stages(model, config.freeze)
    try:
        method.setup(model, total)
        groups = layerwise_param_groups(model, config.lr, config.lr_decay, config.weight_decay)
        groups += method.param_groups(config.lr, config.weight_decay)
        groups = [{**g, **method.optimizer_settings(config.optimizer)} for g in groups]
        optimizer = make_optimizer(config, groups)
        scaler = torch.amp.GradScaler("cuda") if use_cuda and config.amp else None
        loop = _Loop(model, method, optimizer, scaler, device, layers, total, context,
                     scheduler=make_scheduler(config, optimizer, total))
        if context.world_size > 1:
            loop.ddp = _distribute(loop)
        others = {r: _Cycle(ld) for r, ld in loaders.items() if r != main_role}
        # Each rank draws its own dropout masks and augmentations.
        stream_seed = seeds[3] if context.world_size == 1 else derived_seeds(seeds[3], context.world_size)[context.rank]
        result = yield from _epochs(loop, loaders[main_role], main_role, others, config, val_set,
                                    PrivateRandomStream(stream_seed, device))
        yield from _relay(method.finish(model, target_set, config.batch_size, device), result.steps,
                          total, "adapting")
        return dataclasses.replace(result, metrics={**result.metrics, **selected})
    finally:
        method.teardown(model)
        unfreeze(model)


def with_min_steps(config: TrainConfig, steps_per_epoch: int) -> TrainConfig:
    """The config with enough epochs for `config.min_steps` steps (never fewer epochs)."""
    if not config.min_steps or steps_per_epoch < 1:
        return config
    return dataclasses.replace(config, epochs=max(config.epochs, math.ceil(config.min_steps / steps_per_epoch)))


def _epochs(loop: _Loop, main_loader: DataLoader, main_role: str, others: dict[str, _Cycle],
            config: TrainConfig, val_set: Dataset | None, rng: PrivateRandomStream):
    model, step, history = loop.model, 0, []
    best_key: tuple[float, float] | None = None
    best_state: dict[str, Tensor] | None = None
    best_epoch, stale, stopped_early = None, 0, False
    seen = 0  # main-role images this rank trained on
    for epoch in range(1, config.epochs + 1):
        model.train()
        loop.method.train()
        losses = []
        _start_pass(main_loader, epoch)
        batches = iter(main_loader)
        while step < loop.total:
            with rng.active():
                batch = next(batches, None)
                if batch is None:
                    break
                roles = {main_role: _pair(batch), **{r: _pair(next(c)) for r, c in others.items()}}
                if "target" in roles:
                    roles["target"] = (roles["target"][0], None)
                metrics = loop.step(roles, step)
            step += 1
            seen += len(batch[0])
            losses.append(metrics["loss"])
            yield Progress(step, loop.total, f"epoch {epoch}/{config.epochs}", metrics)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else math.nan}
        if val_set is not None and len(val_set) > 0:
            # Each rank's batch-norm statistics follow its own batches: validate with rank 0's.
            loop.context.broadcast_state(model, buffers_only=True)
            evaluation = yield from _relay(
                evaluate(model, val_set, batch_size=config.batch_size, device=loop.device,
                         num_workers=config.num_workers, context=loop.context), step, loop.total,
                "validating")
            record.update(val_loss=evaluation.loss, val_accuracy=evaluation.accuracy,
                          val_balanced_accuracy=evaluation.balanced_accuracy)
            key = (evaluation.accuracy, -evaluation.loss)
            if best_key is None or key > best_key:
                best_key, best_epoch, stale = key, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            yield Progress(step, loop.total, f"epoch {epoch}/{config.epochs} validated", record)
        history.append(record)
        if step >= loop.total:
            break
        if config.patience and stale >= config.patience:
            stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    loop.context.broadcast_state(model, buffers_only=True)  # DDP keeps the parameters equal
    final = dict(history[-1]) if history else {}
    if best_epoch is not None:
        final.update({k: v for k, v in history[best_epoch - 1].items() if k.startswith("val_")})
        final["best_epoch"] = best_epoch
    final.pop("epoch", None)
    final["steps"] = step
    final["samples_seen"] = int(loop.context.sum([seen])[0])
    return TrainResult(step, len(history), best_epoch, stopped_early, tuple(history), final)


def _pair(batch) -> tuple[Tensor, Tensor | None]:
    x, y = batch[0], batch[1]
    return x, y


def _relay(job, done: int, total: int | None, message: str):
    """Re-yield a sub-job's progress as part of an outer job's (done fixed), returning its result."""
    try:
        while True:
            try:
                inner = next(job)
            except StopIteration as stop:
                return stop.value
            yield Progress(done, total, f"{message} {inner.done}/{inner.total}", {})
    finally:
        job.close()


# ---- evaluation ----------------------------------------------------------------------


def evaluate(
    model: Classifier,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = "auto",
    num_workers: int = 0,
    classes: Sequence[str] = (),
    context: DistContext = SINGLE,
) -> Generator[Progress, None, EvalResult]:
    """Accuracy, per-class recall and confusion matrix on labelled data (labels < 0 are skipped).

    Over several ranks each evaluates its block of `dataset` and all get the sums."""
    device = resolve_device(device)
    if context.world_size > 1:
        dataset = Subset(dataset, range(len(dataset))[context.shard(len(dataset))])
    was_training = model.training
    model.to(device).eval()
    c = model.num_classes
    confusion = torch.zeros(c * c, dtype=torch.long)
    loss_sum, n = 0.0, 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
                keep = y >= 0
                logits = model(x)[keep].float()
                y = y[keep]
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum")) if len(y) else 0.0
                n += len(y)
                confusion += torch.bincount((y * c + logits.argmax(1)).cpu(), minlength=c * c)
                yield Progress(i + 1, len(loader), "evaluating")
    finally:
        model.train(was_training)
    if context.world_size > 1:
        totals = context.sum([n, loss_sum, *confusion.tolist()])
        n, loss_sum = int(totals[0]), float(totals[1])
        confusion = torch.as_tensor(np.rint(totals[2:]), dtype=torch.long)
    matrix = confusion.view(c, c).tolist()
    return EvalResult(n, loss_sum / n if n else math.nan, tuple(tuple(r) for r in matrix), tuple(classes))


# ---- projects --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectTrainResult:
    checkpoint_ids: tuple[int, ...]  # one per phase, in order; the last is the new model
    phases: tuple[str, ...]
    metrics: dict[str, float]

    @property
    def checkpoint_id(self) -> int:
        return self.checkpoint_ids[-1]


def train_project(
    project, config: TrainConfig, *, from_scratch: bool = False, round: int | None = None
) -> Generator[Progress, None, ProjectTrainResult]:
    """Train on a project's labels and record a checkpoint after each finished phase.

    Unless `from_scratch`, training continues from the latest checkpoint
    (incremental fine-tuning, as in CEAL and AIFT); its backbone must match
    `config.backbone`, and classes added since get new head rows. Without a
    starting checkpoint, a method that uses source labels first pre-trains on the
    labelled source images; then it fine-tunes on the labelled target pool,
    stopping early on the labelled target validation split. A method that uses
    unlabelled target images trains in one phase on all of them.
    """
    from atl_desktop.models.checkpoints import save_checkpoint

    plan = plan_project_training(project, config, from_scratch=from_scratch)
    model, classes = plan.model, plan.classes
    parent, ids, metrics = (plan.start.id if plan.start else None), [], {}
    for name, method_name, sets in plan.phases:
        phase_method = plan.method(method_name)
        job = train(model, sets["train"], config, val_set=sets["val"], source_set=sets["source"],
                    target_set=sets["target"], method=phase_method)
        result = yield from _prefixed(job, name)
        recorded, metrics = phase_record(config, name, phase_method, result, sets)
        parent = save_checkpoint(project, model, classes=classes, parent_id=parent, round=round,
                                 config=recorded, metrics=metrics, seed=config.seed)
        ids.append(parent)
    return ProjectTrainResult(tuple(ids), tuple(name for name, _, _ in plan.phases), metrics)


@dataclass
class TrainingPlan:
    """What `train_project` trains: the starting model and the phases' data."""

    model: Classifier
    classes: list[str]
    start: Any  # the CheckpointRecord continued from, or None
    phases: list[tuple[str, str, dict]]  # (name, method name, {"train", "source", "target", "val"})
    config: TrainConfig

    def method(self, name: str) -> Method:
        """The phase's method, with the config's options when it is the config's method."""
        return make_method(name, self.config.method_options if name == self.config.method else None)


def plan_project_training(project, config: TrainConfig, *, from_scratch: bool = False) -> TrainingPlan:
    """Check the request and gather the model and data of `train_project` (nothing trained)."""
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.store.errors import ProjectError
    from atl_desktop.transfer.methods import METHODS

    classes = project.class_names()
    if len(classes) < 2:
        raise ProjectError("Training needs at least two classes; add classes first.")
    if config.method not in METHODS:
        raise ProjectError(f"Unknown method {config.method!r}; choose one of {', '.join(METHODS)}.")
    try:
        make_method(config.method, config.method_options)
    except ValueError as error:
        raise ProjectError(str(error)) from None
    start = None if from_scratch else project.latest_checkpoint()
    model = _starting_model(project, config, start, classes)
    # The project's stain normalisation, if chosen, becomes part of the model's input
    # (recorded in the checkpoint, so scoring normalises the same way).
    from atl_desktop.store.keys import STAIN_SETTING

    model.spec = dataclasses.replace(model.spec, stain=project.get_setting(STAIN_SETTING) or None)
    if not 0 <= config.freeze <= len(model.stages):
        raise ProjectError(f"{model.backbone_name} has {len(model.stages)} stages; "
                           f"freeze must be between 0 and {len(model.stages)}.")
    fit = input_transform(model.spec, train=True, augment=config.augment)
    phases = _phases(project, METHODS[config.method], start is None, fit, input_transform(model.spec))
    if not phases:
        raise ProjectError("Nothing to train on: label some images first.")
    return TrainingPlan(model, classes, start, phases, config)


def phase_record(config: TrainConfig, name: str, method: Method, result: TrainResult,
                 sets: Mapping[str, Dataset | None]) -> tuple[dict, dict]:
    """(config, metrics) recorded with a phase's checkpoint."""
    metrics = {**result.metrics, **{f"n_{k}": len(v) for k, v in sets.items() if v is not None}}
    recorded = {**config.to_dict(), "method": method.name,
                "method_options": method.hyperparameters(), "phase": name}
    return recorded, metrics


def _starting_model(project, config: TrainConfig, start, classes: list[str]) -> Classifier:
    from atl_desktop.models.checkpoints import load_checkpoint
    from atl_desktop.models.classifier import copy_head_rows
    from atl_desktop.models.registry import build_model
    from atl_desktop.store.errors import ProjectError

    if start is None:
        return build_model(config.backbone, len(classes), weights=config.weights,
                           input_size=config.input_size, bottleneck_dim=config.bottleneck_dim,
                           seed=config.seed)
    if start.backbone != config.backbone:
        raise ProjectError(
            f"The latest checkpoint is a {start.backbone}; to train a {config.backbone} instead, "
            "start over from scratch."
        )
    previous, record = load_checkpoint(project, start.id)
    if list(record.classes) == classes:
        return previous
    # Classes were added, removed or reordered: keep the body, carry over known head rows.
    model = build_model(record.backbone, len(classes), input_size=previous.spec.size,
                        bottleneck_dim=previous.bottleneck_dim, seed=config.seed)
    own = model.state_dict()
    own.update({k: v for k, v in previous.state_dict().items() if not k.startswith("head.")})
    model.load_state_dict(own)
    copy_head_rows(model, record.classes, previous.head, classes)
    return model


def _phases(project, method, fresh: bool, fit, plain) -> list[tuple[str, str, dict]]:
    from atl_desktop.data.datasets import project_dataset

    def data(domain: str, split: str, transform, labelled: bool | None = True):
        # Held-out audit images train nothing: their labels are left out (labelled sets),
        # and with labelled=None they stay in as unlabelled images, as any pool image would.
        ds = project_dataset(project, domain=domain, split=split, labelled=labelled,
                             transform=transform, for_training=True)
        return ds if len(ds) else None

    source = data("source", "pool", fit) if method.uses_source_labels else None
    labelled_target = data("target", "pool", fit) if method.uses_target_labels else None
    target_val = data("target", "val", plain)
    source_val = data("source", "val", plain)
    phases = []
    if method.uses_unlabelled_target:
        unlabelled = data("target", "pool", fit, labelled=None)
        if source is None and labelled_target is None:
            return []
        if getattr(method, "needs_source_model", False) and fresh and source is not None:
            # ADDA adapts a trained source model: train one first.
            phases.append(("source pre-training", "source_only",
                           {"train": None, "source": source, "target": None, "val": source_val}))
        phases.append(("adaptation", method.name, {"train": labelled_target, "source": source,
                                                   "target": unlabelled, "val": target_val}))
        return phases
    if source is not None and (fresh or labelled_target is None):
        phases.append(("source pre-training", method.name,
                       {"train": None, "source": source, "target": None, "val": source_val}))
    if labelled_target is not None:
        joint = source if method.joint_source else None
        phases.append(("fine-tuning", method.name, {"train": labelled_target, "source": joint,
                                                    "target": None, "val": target_val}))
    return phases


def _prefixed(job, prefix: str):
    """Re-yield a job's progress with `prefix` on its message; return its result."""
    try:
        while True:
            try:
                p = next(job)
            except StopIteration as stop:
                return stop.value
            yield dataclasses.replace(p, message=f"{prefix}: {p.message}")
    finally:
        job.close()


def project_eval_dataset(project, split: str = "test", transform=None, domain: str = "target"):
    """Target images of a split with their current labels; on the test split, images
    without a label take their hidden ground truth (simulations). Unlabelled: -1."""
    from atl_desktop.data.datasets import project_dataset

    dataset = project_dataset(project, domain=domain, split=split, labelled=None, transform=transform)
    if split == "test":
        truth = project.truth(domain, split)
        position = project.class_index()
        dataset.labels = [
            position.get(truth.get(image_id), -1) if label < 0 else label
            for image_id, label in zip(dataset.image_ids, dataset.labels, strict=True)
        ]
    return dataset


def evaluate_project(
    project, *, checkpoint_id: int | None = None, split: str = "test", batch_size: int = 64,
    device: str = "auto",
) -> Generator[Progress, None, EvalResult]:
    """Evaluate a checkpoint (default: the latest) on a target split of the project."""
    from atl_desktop.models.checkpoints import load_checkpoint
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.store.errors import ProjectError

    how = (f"import labelled images into it with `atl import {project.path.name} IMAGES --split {split}` "
           "(class folders, a CSV or an .npz)")
    if not project.image_ids("target", split):
        raise ProjectError(f"{project.path.name} has no target images in the {split} split: {how}.")
    classes = project.class_names()
    model, _record = load_checkpoint(project, checkpoint_id, classes=classes)
    dataset = project_eval_dataset(project, split, input_transform(model.spec))
    if not any(label >= 0 for label in dataset.labels):
        raise ProjectError(f"No labelled target images in the {split} split to evaluate on: label them, "
                           f"or {how}.")
    return (yield from evaluate(model, dataset, batch_size=batch_size, device=device, classes=classes))
