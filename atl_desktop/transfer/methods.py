"""Transfer methods: what a training step optimises besides classification.

The training loop runs one forward pass over the concatenation of the labelled
training batch, a labelled source batch and an unlabelled target batch (any of
them may be absent; a method may keep a role out of the pass with
`forward_roles`), splits the outputs by role into `StepOutputs`, and asks the
method for its loss terms: by default the cross-entropy of the labelled parts
plus `extra_losses`. A method is an `nn.Module`, so it may own parameters (a
domain discriminator) which get their own optimiser group; `layers` names the
intermediate layers it needs (see `Classifier.layer_names`).

Around the steps a method may act on the model (`setup`, `teardown`: AutoDIAL
swaps its alignment layers in and out, ADDA keeps a fixed copy of the source
model), choose its source data (`select_source`: selective joint fine-tuning),
mark the domains of a batch (`batch_context`) and work after training
(`finish`: AdaBN re-estimates batch-norm statistics on the target domain).

Each method's hyper-parameters are a frozen dataclass, `Options`, whose fields
(with their defaults) the CLI and the GUI list, and which checkpoints record.
Register a new method in `METHODS`; the CLI, the GUI and the benchmarks read it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from atl_desktop.jobs import Progress
from atl_desktop.models.classifier import FEATURES, LOGITS, Classifier
from atl_desktop.transfer import adabn, autodial, selective
from atl_desktop.transfer.grl import ReversalSchedule
from atl_desktop.transfer.losses import (
    DAN_ALPHAS,
    DiscriminatorLoss,
    DomainAdversarialLoss,
    DomainConfusionLoss,
    DomainDiscriminator,
    EntropyLoss,
    GaussianKernel,
    InvertedLabelLoss,
    JointMMD,
    MultipleKernelMMD,
    SoftLabelLoss,
    class_softmax_sums,
    kernel_family,
)

ROLES = ("labelled", "source", "target")


@dataclass(frozen=True)
class RoleOutputs:
    """Outputs of one role (labelled, source, target) of a step's forward pass.

    `layers` is empty for a role the method keeps out of the pass; `inputs` are
    the role's images either way.
    """

    layers: Mapping[str, Tensor]
    labels: Tensor | None
    inputs: Tensor | None = None

    @property
    def features(self) -> Tensor:
        return self.layers[FEATURES]

    @property
    def logits(self) -> Tensor:
        return self.layers[LOGITS]


@dataclass(frozen=True)
class StepOutputs:
    labelled: RoleOutputs | None
    source: RoleOutputs | None
    target: RoleOutputs | None
    step: int
    total_steps: int

    @property
    def progress(self) -> float:
        """Training progress in [0, 1], for schedules such as DANN's reversal coefficient."""
        return self.step / max(1, self.total_steps)


@dataclass(frozen=True)
class NoOptions:
    pass


class Method(nn.Module):
    """Plain supervised training; subclasses add transfer losses."""

    name: ClassVar[str] = "finetune"
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    layers: tuple[str, ...] = (FEATURES, LOGITS)
    # Which data a project run gives the method (see transfer.train.train_project).
    uses_source_labels: ClassVar[bool] = True
    uses_target_labels: ClassVar[bool] = True
    uses_unlabelled_target: ClassVar[bool] = False
    # Fine-tune on labelled target images together with (selected) labelled source images.
    joint_source: ClassVar[bool] = False
    # Roles whose images go through the model being trained.
    forward_roles: ClassVar[tuple[str, ...]] = ROLES

    def __init__(self, **options: Any):
        super().__init__()
        self.options = self.Options(**options)

    @classmethod
    def needs_source(cls) -> bool:
        """Whether the method is pointless without labelled source images: it aligns them with
        the target, trains on them alone, or joins them to the target labels. Plain
        fine-tuning is the one method that learns from target labels alone."""
        return cls.uses_source_labels and (cls.uses_unlabelled_target or not cls.uses_target_labels
                                           or cls.joint_source)

    def hyperparameters(self) -> dict[str, Any]:
        """The options in force, defaults included (JSON-ready), for checkpoint metadata."""
        return _jsonable(dataclasses.asdict(self.options))

    # ---- around training ----

    def setup(self, model: Classifier, total_steps: int) -> None:
        """Called once before the optimiser is built (the model is on its device)."""

    def select_source(self, source: Dataset, targets: Sequence[Dataset]) -> Dataset:
        """The source images to train on (all of them unless the method chooses)."""
        return source

    def finish(self, model: Classifier, target: Dataset | None, batch_size: int,
               device: torch.device) -> Generator[Progress, None, None]:
        """Work after the last step (a job), e.g. re-estimating statistics."""
        yield from ()

    def teardown(self, model: Classifier) -> None:
        """Called when training ends, finished or not: leave a plain `Classifier`."""

    # ---- every step ----

    def batch_context(self, roles: Sequence[str], sizes: Sequence[int]) -> contextlib.AbstractContextManager:
        """Entered around the forward pass of a batch made of `roles` of `sizes`, in order."""
        return contextlib.nullcontext()

    def losses(self, out: StepOutputs) -> dict[str, Tensor]:
        """All loss terms of a step: cross-entropy of the labelled roles, then `extra_losses`."""
        terms: dict[str, Tensor] = {}
        if out.labelled is not None and out.labelled.layers:
            terms["ce"] = F.cross_entropy(out.labelled.logits.float(), out.labelled.labels)
        if out.source is not None and out.source.layers:
            terms["ce_source"] = F.cross_entropy(out.source.logits.float(), out.source.labels)
        terms.update(self.extra_losses(out))
        return terms

    def extra_losses(self, out: StepOutputs) -> dict[str, Tensor]:
        """Loss terms (already weighted) added to the classification loss."""
        return {}

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"params": params, "lr": lr, "weight_decay": weight_decay, "name": f"method.{self.name}"}]

    def optimizer_settings(self, optimizer: str) -> dict[str, Any]:
        """Settings every optimiser group takes for this method (e.g. Adam's betas)."""
        return {}

    def after_step(self) -> None:
        """Called after every optimiser step (schedules)."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _aligned(out: StepOutputs) -> tuple[RoleOutputs, RoleOutputs]:
    """The source and target outputs an alignment loss compares."""
    if out.source is None or out.target is None:
        raise ValueError("this method needs labelled source and unlabelled target images")
    return out.source, out.target


# ---- supervised ----------------------------------------------------------------------


class FineTune(Method):
    name = "finetune"
    description = "Supervised training: source pre-training, then fine-tuning on labelled target images."


class SourceOnly(FineTune):
    name = "source_only"
    description = "Train on labelled source images only (the domain-adaptation baseline)."
    uses_target_labels = False


# ---- discrepancy-based ------------------------------------------------------------------


@dataclass(frozen=True)
class DDCOptions:
    trade_off: float = 0.25  # DDC's lambda
    estimator: str = "biased"  # "biased" | "unbiased" | "linear"
    alpha: float = 1.0  # bandwidth: sigma^2 = alpha * mean squared distance
    layer: str = FEATURES


class DDC(Method):
    """Squared MMD between the source and target features of one layer, weighted lambda,
    added to the classification loss. DaNN computes it with a Gaussian kernel, as here;
    DDC writes it as the distance between the domains' mean representations (a linear
    kernel) on an adaptation layer before the classifier (our features)."""

    name = "ddc"
    description = "MMD with one Gaussian kernel between source and target features (also DaNN)."
    paper = "Tzeng et al. 2014 (DDC); Ghifary et al. 2014 (DaNN)"
    Options = DDCOptions
    uses_unlabelled_target = True

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        self.layers = (o.layer, FEATURES, LOGITS)
        self.mmd = MultipleKernelMMD([GaussianKernel(alpha=o.alpha)], o.estimator)

    def extra_losses(self, out: StepOutputs) -> dict[str, Tensor]:
        s, t = _aligned(out)
        layer = self.options.layer
        return {"mmd": self.options.trade_off * self.mmd(s.layers[layer], t.layers[layer])}


@dataclass(frozen=True)
class DANOptions:
    trade_off: float = 1.0
    layers: tuple[str, ...] = (FEATURES, LOGITS)  # DAN adapts the last layers (fc6-fc8)
    alphas: tuple[float, ...] = DAN_ALPHAS
    estimator: str = "unbiased"  # "linear" is DAN's linear-time estimator


class DAN(Method):
    name = "dan"
    description = "Multi-kernel MMD summed over several layers."
    paper = "Long et al. 2015"
    Options = DANOptions
    uses_unlabelled_target = True

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        self.options = dataclasses.replace(o, layers=tuple(o.layers), alphas=tuple(o.alphas))
        self.layers = tuple(dict.fromkeys((*self.options.layers, FEATURES, LOGITS)))
        self.mmds = nn.ModuleList(MultipleKernelMMD(kernel_family(self.options.alphas), o.estimator)
                                  for _ in self.options.layers)

    def extra_losses(self, out: StepOutputs) -> dict[str, Tensor]:
        s, t = _aligned(out)
        total = sum(mmd(s.layers[name], t.layers[name])
                    for mmd, name in zip(self.mmds, self.options.layers, strict=True))
        return {"mk_mmd": self.options.trade_off * total}


@dataclass(frozen=True)
class JANOptions:
    trade_off: float = 1.0
    layer: str = FEATURES  # joint with the softmax predictions
    alphas: tuple[float, ...] = DAN_ALPHAS
    prediction_alpha: float = 1.0  # one kernel on the predictions
    estimator: str = "unbiased"


class JAN(Method):
    name = "jan"
    description = "Joint MMD over features and softmax predictions (product kernel)."
    paper = "Long et al. 2017"
    Options = JANOptions
    uses_unlabelled_target = True

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        self.options = dataclasses.replace(o, alphas=tuple(o.alphas))
        self.layers = (o.layer, FEATURES, LOGITS)
        self.jmmd = JointMMD([kernel_family(o.alphas), [GaussianKernel(alpha=o.prediction_alpha)]],
                             o.estimator)

    def extra_losses(self, out: StepOutputs) -> dict[str, Tensor]:
        s, t = _aligned(out)
        layer = self.options.layer
        jmmd = self.jmmd([s.layers[layer], F.softmax(s.logits.float(), 1)],
                         [t.layers[layer], F.softmax(t.logits.float(), 1)])
        return {"jmmd": self.options.trade_off * jmmd}


# ---- adversarial ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DANNOptions:
    trade_off: float = 1.0
    gamma: float = 10.0  # reversal coefficient 2 / (1 + exp(-gamma p)) - 1
    hidden: int = 500
    dropout: float = 0.0


class DANN(Method):
    name = "dann"
    description = "Domain classifier behind a gradient reversal layer with the usual schedule."
    paper = "Ganin & Lempitsky 2015"
    Options = DANNOptions
    uses_unlabelled_target = True

    def setup(self, model: Classifier, total_steps: int) -> None:
        o = self.options
        device = next(model.parameters()).device
        self.adversarial = DomainAdversarialLoss(
            DomainDiscriminator(model.feature_dim, o.hidden, o.dropout)).to(device)
        self.schedule = ReversalSchedule(total_steps, o.gamma)

    def extra_losses(self, out: StepOutputs) -> dict[str, Tensor]:
        s, t = _aligned(out)
        loss = self.adversarial(s.features, t.features, self.schedule.value)
        return {"domain": self.options.trade_off * loss}

    def after_step(self) -> None:
        self.schedule.step()


@dataclass(frozen=True)
class ConfusionOptions:
    confusion_weight: float = 0.01  # the paper's lambda
    soft_label_weight: float = 0.1  # the paper's nu
    temperature: float = 2.0
    hidden: int = 500


class DomainConfusion(Method):
    """Tzeng et al. 2015. The discriminator learns to tell the domains apart while the
    features learn to leave it at 1/2 (one step updates both, each with its own loss).
    Soft labels, the per-class average source softmax at a temperature, are running
    averages over all source batches seen; they teach labelled target images (when
    there are any) how the classes relate."""

    name = "confusion"
    description = "Domain confusion and soft-label transfer."
    paper = "Tzeng et al. 2015"
    Options = ConfusionOptions
    uses_unlabelled_target = True

    def setup(self, model: Classifier, total_steps: int) -> None:
        o = self.options
        device = next(model.parameters()).device
        discriminator = DomainDiscriminator(model.feature_dim, o.hidden).to(device)
        self.discriminator_loss = DiscriminatorLoss(discriminator)
        self.confusion = DomainConfusionLoss(discriminator)
        self.soft_label = SoftLabelLoss(o.temperature)
        c = model.num_classes
        self.register_buffer("softmax_sums", torch.zeros(c, c, device=device))
        self.register_buffer("class_counts", torch.zeros(c, device=device))

    def extra_losses(self, out: StepOutputs) -> dict[str, Tensor]:
        s, t = _aligned(out)
        o = self.options
        terms = {"discriminator": self.discriminator_loss(s.features, t.features),
                 "confusion": o.confusion_weight * self.confusion(s.features, t.features)}
        sums, counts = class_softmax_sums(s.logits, s.labels, len(self.class_counts), o.temperature)
        self.softmax_sums += sums
        self.class_counts += counts
        labelled = out.labelled
        if labelled is not None and labelled.layers and o.soft_label_weight:
            known = self.class_counts[labelled.labels] > 0
            if known.any():
                soft = self.softmax_sums / self.class_counts.clamp_min(1)[:, None]
                loss = self.soft_label(labelled.logits[known], labelled.labels[known], soft)
                terms["soft_label"] = o.soft_label_weight * loss
        return terms


@dataclass(frozen=True)
class ADDAOptions:
    hidden: int = 500
    layer: str = LOGITS  # what the discriminator sees: "logits" (authors' code) or "features"
    adam_beta1: float = 0.5  # the paper's Adam momentum for encoder and discriminator
    discriminator_lr: float = 1.0  # the discriminator's learning rate, relative to the encoder's


class ADDA(Method):
    """Tzeng et al. 2017. Starts from a model trained on the source domain (train with
    source_only first; `train_project` does). That model stays fixed as the source
    mapping; the model being trained becomes the target mapping, initialised from it,
    and learns to fool a discriminator (the GAN loss with inverted labels) on target
    images only. The discriminator and the target mapping are updated in the same step,
    each by its own loss.

    layer "logits": the discriminator compares the networks' outputs and the whole
    target network adapts, as in the authors' released code (erictzeng/adda, LeNet's
    fc4). layer "features": it compares the features and the source classifier stays
    fixed, as the paper's text describes. Adam runs with beta1 = 0.5 as in the paper
    (and DCGAN): with the usual 0.9 the adversarial game oscillates and the target
    mapping collapses to one class (measured on MNIST->USPS, see README)."""

    name = "adda"
    description = "Adversarial adaptation of a separate target mapping; source model fixed."
    paper = "Tzeng et al. 2017"
    Options = ADDAOptions
    uses_target_labels = False
    uses_unlabelled_target = True
    needs_source_model: ClassVar[bool] = True
    forward_roles = ("target",)

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options.layer not in (LOGITS, FEATURES):
            raise ValueError(f"adda: layer must be {LOGITS!r} or {FEATURES!r}")
        if not 0 <= self.options.adam_beta1 < 1:
            raise ValueError("adda: adam_beta1 must be in [0, 1)")

    def setup(self, model: Classifier, total_steps: int) -> None:
        device = next(model.parameters()).device
        self.source_model = copy.deepcopy(model).eval().requires_grad_(False)
        if self.options.layer == FEATURES:
            model.head.requires_grad_(False)  # the classifier stays the source one
            width = model.feature_dim
        else:
            width = model.num_classes
        discriminator = DomainDiscriminator(width, self.options.hidden).to(device)
        self.discriminator_loss = DiscriminatorLoss(discriminator)
        self.inverted = InvertedLabelLoss(discriminator)

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr * self.options.discriminator_lr, "weight_decay": weight_decay,
                 "name": "method.adda.discriminator"}]

    def optimizer_settings(self, optimizer: str) -> dict[str, Any]:
        return {"betas": (self.options.adam_beta1, 0.999)} if optimizer == "adamw" else {}

    def train(self, mode: bool = True) -> ADDA:
        # The source model's statistics stay fixed, but it drops out as the target mapping
        # does, or the discriminator could tell the domains apart by the dropout alone.
        super().train(mode)
        if hasattr(self, "source_model"):
            self.source_model.eval()
            for module in self.source_model.modules():
                if isinstance(module, nn.Dropout):
                    module.train(mode)
        return self

    def losses(self, out: StepOutputs) -> dict[str, Tensor]:
        s, t = _aligned(out)
        with torch.no_grad():
            f_s, logits_s = self.source_model.features_and_logits(s.inputs)
        if self.options.layer == LOGITS:
            f_s, f_t = logits_s, t.logits
        else:
            f_t = t.features
        return {"discriminator": self.discriminator_loss(f_s, f_t), "inverted": self.inverted(f_t)}

    def teardown(self, model: Classifier) -> None:
        if hasattr(self, "source_model"):
            del self.source_model


class AdaBN(Method):
    """Li et al. 2016: train on the source domain, then replace every batch-norm layer's
    statistics by the target domain's (the weights stay)."""

    name = "adabn"
    description = "Batch-norm statistics re-estimated on target images after source training."
    paper = "Li et al. 2016"
    uses_target_labels = False
    uses_unlabelled_target = True
    forward_roles = ("labelled", "source")

    def finish(self, model: Classifier, target: Dataset | None, batch_size: int,
               device: torch.device) -> Generator[Progress, None, None]:
        if target is None or len(target) == 0:
            raise ValueError("AdaBN needs unlabelled target images")
        yield from adabn.reestimate_batch_norm(model, target, batch_size=batch_size, device=device)


@dataclass(frozen=True)
class AutoDIALOptions:
    entropy_weight: float = 0.1  # the paper's lambda
    alpha_init: float = 1.0


class AutoDIAL(Method):
    """Carlucci et al. 2017: every batch-norm layer becomes a domain-alignment layer
    whose source/target mixing alpha in [0.5, 1] is learned, plus the entropy of the
    target predictions. After training the layers fold back into batch norm with the
    target domain's (mixed) statistics, so the result is a plain model for the target."""

    name = "autodial"
    description = "Domain-alignment layers with learned mixing, and target entropy."
    paper = "Carlucci et al. 2017"
    Options = AutoDIALOptions
    uses_unlabelled_target = True

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.entropy = EntropyLoss()
        self._layers: list[autodial.DomainAlignment] = []

    def setup(self, model: Classifier, total_steps: int) -> None:
        self._layers = autodial.add_alignment_layers(model, self.options.alpha_init)
        if not self._layers:
            raise ValueError(f"{model.backbone_name} has no batch-norm layers for AutoDIAL to replace")

    def batch_context(self, roles: Sequence[str], sizes: Sequence[int]) -> contextlib.AbstractContextManager:
        # Labelled images of a project are target images too.
        flags = [role != "source" for role in roles]
        return autodial.domains(self._layers, flags, sizes)

    def extra_losses(self, out: StepOutputs) -> dict[str, Tensor]:
        _, t = _aligned(out)
        return {"entropy": self.options.entropy_weight * self.entropy(t.logits)}

    def after_step(self) -> None:
        autodial.clamp_alphas(self._layers)

    def alphas(self) -> list[float]:
        return [float(layer.alpha.detach()) for layer in self._layers]

    def teardown(self, model: Classifier) -> None:
        autodial.remove_alignment_layers(model)
        self._layers = []


@dataclass(frozen=True)
class SelectiveOptions:
    neighbours: int = 5  # source images borrowed per target image
    bins: int = 16
    filters: str = "gabor"
    distance: str = "kl"  # between filter-response histograms: "kl" (the paper's) or "l1"


class SelectiveJointFineTuning(Method):
    """Ge & Yu 2017: fine-tune on the target images together with the source images
    whose low-level filter-bank responses (histograms of Gabor responses) are nearest
    to theirs. Source and target share the classifier here, as they share the classes
    of a project (the paper gives the source task its own head)."""

    name = "selective"
    description = "Joint fine-tuning with the source images nearest in filter-bank response."
    paper = "Ge & Yu 2017"
    Options = SelectiveOptions
    joint_source = True

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        if o.filters not in selective.FILTER_BANKS or o.distance not in selective.DISTANCES:
            raise ValueError(f"selective: filters must be one of {selective.FILTER_BANKS} and distance "
                             f"one of {selective.DISTANCES}")

    def select_source(self, source: Dataset, targets: Sequence[Dataset]) -> Dataset:
        o = self.options
        return selective.nearest_source_subset(source, targets, neighbours=o.neighbours, bins=o.bins,
                                               filters=o.filters, distance=o.distance)


METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (FineTune, SourceOnly, DDC, DAN, JAN, DANN, DomainConfusion, ADDA, AdaBN, AutoDIAL,
              SelectiveJointFineTuning)
}


def make_method(name: str, options: Mapping[str, object] | None = None) -> Method:
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
    try:
        return cls(**dict(options or {}))
    except TypeError as error:
        fields = [f.name for f in dataclasses.fields(cls.Options)]
        raise ValueError(f"{name}: bad options {dict(options or {})} ({error}); "
                         f"it takes {', '.join(fields) or 'none'}") from None


def method_options(name: str) -> dict[str, Any]:
    """A method's hyper-parameters and their defaults, for the CLI and the GUI."""
    return METHODS[name]().hyperparameters()
