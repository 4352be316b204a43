"""A backbone with a replaceable linear head, its stages and its input specification.

Every model the application trains is a `Classifier`: a body that maps an image
batch to bottleneck features (N, D), an optional bottleneck block (Linear, BN,
ReLU, as domain-adaptation classifiers usually add), and a linear head (N, C).
The body is divided into named stages, ordered from the input, which are the
units of freezing and of layer-wise learning rates, and whose outputs are the
named intermediate layers that multi-layer losses and active learning read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

FEATURES = "features"
LOGITS = "logits"


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: square images of `size` pixels, `channels`, normalised per channel."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Stain normalisation applied before everything else (`data.stain.StainConfig` as JSON);
    # part of the input, so a checkpoint scores images the way it was trained on them.
    stain: dict | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        values = asdict(self)
        if values["stain"] is None:
            del values["stain"]  # files without it stay as they were
        return values

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(
            size=int(data["size"]),
            channels=int(data["channels"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            stain=data.get("stain") or None,
        )


@dataclass(frozen=True)
class Stage:
    """A group of consecutive body parts.

    `prefixes` name modules or parameters of the body (a parameter belongs to
    the stage when its name equals a prefix or starts with prefix + ".");
    `output` is the module whose output is this stage's intermediate layer.
    """

    name: str
    prefixes: tuple[str, ...]
    output: str

    def owns(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)


class Classifier(nn.Module):
    """body -> (bottleneck) -> head; see the module docstring."""

    def __init__(
        self,
        backbone_name: str,
        body: nn.Module,
        body_dim: int,
        num_classes: int,
        spec: InputSpec,
        stages: Sequence[Stage],
        bottleneck_dim: int | None = None,
    ):
        super().__init__()
        self.backbone_name = backbone_name
        self.spec = spec
        self.stages = tuple(stages)
        self.body_dim = body_dim
        self.bottleneck_dim = bottleneck_dim
        self.body = body
        if bottleneck_dim is None:
            self.bottleneck = None
            self.feature_dim = body_dim
        else:
            self.bottleneck = nn.Sequential(
                nn.Linear(body_dim, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU()
            )
            self.feature_dim = bottleneck_dim
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.frozen_stages = 0

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, x: Tensor) -> Tensor:
        f = self.body(x)
        return f if self.bottleneck is None else self.bottleneck(f)

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x)
        return f, self.head(f)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def layer_names(self) -> tuple[str, ...]:
        """Names accepted by `intermediate`, from the input to the output."""
        return (*(s.name for s in self.stages), FEATURES, LOGITS)

    def intermediate(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """Outputs of the named layers (stage names, "features", "logits") for one forward pass."""
        wanted = set(layers)
        unknown = wanted - set(self.layer_names())
        if unknown:
            raise KeyError(
                f"{self.backbone_name} has no layer {sorted(unknown)}; it has {list(self.layer_names())}"
            )
        captured: dict[str, Tensor] = {}
        handles = []
        modules = dict(self.body.named_modules())
        for stage in self.stages:
            if stage.name in wanted:
                handles.append(modules[stage.output].register_forward_hook(_capture(captured, stage.name)))
        try:
            f, logits = self.features_and_logits(x)
        finally:
            for h in handles:
                h.remove()
        captured[FEATURES] = f
        captured[LOGITS] = logits
        return {name: captured[name] for name in layers}

    def stage_of(self, parameter_name: str) -> int | None:
        """Index of the body stage owning a parameter of `self.body`, or None."""
        for i, stage in enumerate(self.stages):
            if stage.owns(parameter_name):
                return i
        return None

    def stage_parameters(self) -> Iterator[tuple[str, list[nn.Parameter]]]:
        """(name, parameters) per body stage in input order, then "bottleneck" and "head"."""
        per_stage: list[list[nn.Parameter]] = [[] for _ in self.stages]
        for name, p in self.body.named_parameters():
            i = self.stage_of(name)
            if i is None:
                raise RuntimeError(f"{self.backbone_name}: parameter body.{name} is in no stage")
            per_stage[i].append(p)
        for stage, params in zip(self.stages, per_stage, strict=True):
            yield stage.name, params
        if self.bottleneck is not None:
            yield "bottleneck", list(self.bottleneck.parameters())
        yield "head", list(self.head.parameters())

    def frozen_modules(self) -> Iterator[nn.Module]:
        """Body modules inside the first `frozen_stages` stages."""
        frozen = self.stages[: self.frozen_stages]
        for name, module in self.body.named_modules():
            if name and any(s.owns(name) for s in frozen):
                yield module

    def train(self, mode: bool = True) -> Classifier:
        # Frozen stages are a fixed feature extractor: their batch-norm statistics
        # and dropout stay in inference mode while the rest trains.
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
        return self


def _capture(store: dict[str, Tensor], name: str):
    def hook(module: nn.Module, inputs, output: Tensor) -> None:
        # A clone, because the next module may apply an in-place activation.
        store[name] = output.clone()

    return hook


def head_input_width(model: nn.Module) -> tuple[str, int]:
    """Find a torchvision classifier's final layer: (its name, its input width).

    The final layer is the last Linear, or 1x1 Conv2d (SqueezeNet), in module order.
    """
    found: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module.in_features)
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            found = (name, module.in_channels)
    if found is None:
        raise ValueError(f"no linear classifier layer in {type(model).__name__}")
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def strip_head(model: nn.Module) -> tuple[str, int]:
    """Replace the final classifier layer of `model` by Identity: (its name, the feature width)."""
    name, width = head_input_width(model)
    replace_module(model, name, nn.Identity())
    return name, width


@torch.no_grad()
def copy_head_rows(
    model: Classifier, old_classes: Sequence[str], old_head: nn.Linear, new_classes: Sequence[str]
) -> None:
    """Carry the head rows of classes kept from `old_classes` into `model.head` (new order)."""
    position = {name: i for i, name in enumerate(old_classes)}
    for j, name in enumerate(new_classes):
        i = position.get(name)
        if i is not None:
            model.head.weight[j] = old_head.weight[i]
            model.head.bias[j] = old_head.bias[i]


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over parameter and buffer names and bytes: a cache key for a model with no checkpoint."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
