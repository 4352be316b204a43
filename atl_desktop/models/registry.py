"""The backbone registry: every architecture a user can pick, by name.

Each entry knows how to build the torchvision (or own) network, how its body
divides into stages, and what input it expects. The classifier layer is found
generically (`strip_head`) and replaced by a new linear head.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from atl_desktop.models.classifier import Classifier, InputSpec, Stage, strip_head
from atl_desktop.models.smallcnn import FEATURE_DIM as SMALLCNN_FEATURES
from atl_desktop.models.smallcnn import SMALLCNN_STAGES, SmallCNN
from atl_desktop.models.weights import WeightsError, load_imagenet_state, load_weights_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    name: str
    spec: InputSpec
    stages: Callable[[nn.Module], list[Stage]]
    torchvision: bool = True
    description: str = ""


def _indexed(prefix: str, *groups: Sequence[int], names: Sequence[str] | None = None) -> list[Stage]:
    """Stages made of index groups of a Sequential called `prefix`."""
    stages = []
    for k, group in enumerate(groups):
        prefixes = tuple(f"{prefix}.{i}" for i in group)
        name = names[k] if names else f"stage{k}"
        stages.append(Stage(name, prefixes, prefixes[-1]))
    return stages


def _split_at_pooling(model: nn.Module, prefix: str = "features") -> list[Stage]:
    """Stages of a Sequential split after each max-pooling layer (VGG, AlexNet, SqueezeNet)."""
    seq = model.get_submodule(prefix)
    groups: list[list[int]] = [[]]
    for i, layer in enumerate(seq):
        groups[-1].append(i)
        if isinstance(layer, nn.MaxPool2d):
            groups.append([])
    return _indexed(prefix, *[g for g in groups if g], names=None)


def _resnet(model: nn.Module) -> list[Stage]:
    stem = Stage("stem", ("conv1", "bn1"), "maxpool")
    return [stem, *(Stage(f"layer{i}", (f"layer{i}",), f"layer{i}") for i in range(1, 5))]


def _mobilenet_v3_small(model: nn.Module) -> list[Stage]:
    # Grouped by spatial resolution, from the stride-2 stem to the last 1x1 convolution.
    stages = _indexed("features", [0], [1], [2, 3], [4, 5, 6, 7, 8], [9, 10, 11, 12])
    return [*stages, Stage("pre_logits", ("classifier.0",), "classifier.2")]


def _mobilenet_v3_large(model: nn.Module) -> list[Stage]:
    stages = _indexed("features", [0, 1], [2, 3], [4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16])
    return [*stages, Stage("pre_logits", ("classifier.0",), "classifier.2")]


def _efficientnet(model: nn.Module) -> list[Stage]:
    return _indexed("features", [0, 1], [2], [3], [4, 5], [6, 7], [8])


def _densenet(model: nn.Module) -> list[Stage]:
    f = "features"
    stages = [Stage("stem", (f"{f}.conv0", f"{f}.norm0"), f"{f}.pool0")]
    for i in range(1, 4):
        stages.append(Stage(f"block{i}", (f"{f}.denseblock{i}", f"{f}.transition{i}"), f"{f}.transition{i}"))
    stages.append(Stage("block4", (f"{f}.denseblock4", f"{f}.norm5"), f"{f}.norm5"))
    return stages


def _vgg_like(fc6: int, fc7: int) -> Callable[[nn.Module], list[Stage]]:
    # The fully connected layers fc6 and fc7 are the layers DAN adapts.
    def stages(model: nn.Module) -> list[Stage]:
        return [
            *_split_at_pooling(model),
            Stage("fc6", (f"classifier.{fc6}",), f"classifier.{fc6 + 1}"),
            Stage("fc7", (f"classifier.{fc7}",), f"classifier.{fc7 + 1}"),
        ]

    return stages


def _convnext(model: nn.Module) -> list[Stage]:
    stages = _indexed("features", [0, 1], [2, 3], [4, 5])
    return [*stages, Stage("stage3", ("features.6", "features.7", "classifier.0"), "classifier.0")]


def _vit(model: nn.Module) -> list[Stage]:
    embed = Stage("embed", ("conv_proj", "class_token", "encoder.pos_embedding"), "conv_proj")
    blocks = [
        Stage(f"block{i}", (f"encoder.layers.encoder_layer_{i}",), f"encoder.layers.encoder_layer_{i}")
        for i in range(len(model.encoder.layers))
    ]
    blocks[-1] = Stage(blocks[-1].name, (*blocks[-1].prefixes, "encoder.ln"), "encoder.ln")
    return [embed, *blocks]


def _imagenet_spec(size: int = 224) -> InputSpec:
    return InputSpec(size=size, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        Backbone("smallcnn", InputSpec(28, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                 lambda m: list(SMALLCNN_STAGES), torchvision=False,
                 description="LeNet-style CNN for 28x28 images"),
        Backbone("resnet18", _imagenet_spec(), _resnet),
        Backbone("resnet34", _imagenet_spec(), _resnet),
        Backbone("resnet50", _imagenet_spec(), _resnet),
        Backbone("mobilenet_v3_small", _imagenet_spec(), _mobilenet_v3_small),
        Backbone("mobilenet_v3_large", _imagenet_spec(), _mobilenet_v3_large),
        Backbone("efficientnet_b0", _imagenet_spec(), _efficientnet),
        Backbone("densenet121", _imagenet_spec(), _densenet),
        Backbone("vgg16_bn", _imagenet_spec(), _vgg_like(0, 3)),
        Backbone("alexnet", _imagenet_spec(), _vgg_like(1, 4)),
        Backbone("squeezenet1_1", _imagenet_spec(), _split_at_pooling),
        Backbone("convnext_tiny", _imagenet_spec(), _convnext),
        Backbone("vit_b_16", _imagenet_spec(), _vit),
    ]
}


def available_backbones() -> list[str]:
    return list(BACKBONES)


def backbone_info(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise WeightsError(
            f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}."
        ) from None


def build_model(
    backbone: str,
    num_classes: int,
    *,
    weights: str | os.PathLike | None = None,
    input_size: int | None = None,
    bottleneck_dim: int | None = None,
    seed: int | None = None,
) -> Classifier:
    """A `Classifier` with a new `num_classes` head.

    weights: None (random init), "imagenet" (torchvision's default weights, from
    the local torch hub cache only) or the path of a local weights file (a
    backbone state dict, or an ATL checkpoint whose body is reused).
    input_size overrides the backbone's usual input size (e.g. small images).
    seed makes the random initialisation reproducible without touching the
    global random state.
    """
    info = backbone_info(backbone)
    if num_classes < 1:
        raise ValueError("a classifier needs at least one class")
    spec = info.spec
    if input_size is not None:
        spec = InputSpec(input_size, spec.channels, spec.mean, spec.std)
    devices: list[int] = []
    with torch.random.fork_rng(devices=devices):
        # Random init draws from the global generator; the fork keeps it untouched.
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
        body = _build_body(info, spec, weights)
        head_name, body_dim = strip_head(body) if info.torchvision else ("", SMALLCNN_FEATURES)
        model = Classifier(backbone, body, body_dim, num_classes, spec, info.stages(body), bottleneck_dim)
    if weights is not None and str(weights) != "imagenet":
        _load_body_from_file(model, Path(weights), head_name)
    return model


def _build_body(info: Backbone, spec: InputSpec, weights: str | os.PathLike | None) -> nn.Module:
    if not info.torchvision:
        if weights == "imagenet":
            raise WeightsError(f"There are no ImageNet weights for {info.name}.")
        return SmallCNN(in_channels=spec.channels)
    from torchvision.models import get_model

    kwargs = {}
    if info.name.startswith("vit_"):
        kwargs["image_size"] = spec.size
    body = get_model(info.name, weights=None, **kwargs)
    if weights == "imagenet":
        if info.name.startswith("vit_") and spec.size != info.spec.size:
            raise WeightsError(f"{info.name} with ImageNet weights needs input size {info.spec.size}.")
        _load_checked(body, load_imagenet_state(info.name), f"ImageNet weights for {info.name}")
    return body


def _load_body_from_file(model: Classifier, path: Path, head_name: str) -> None:
    state = load_weights_file(path)
    if any(k.startswith("body.") for k in state):
        # An ATL checkpoint: reuse the body (and bottleneck); the head is new.
        state = {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}
    else:
        # A torchvision-style state dict: its own classifier layer (e.g. "fc.") is dropped.
        if head_name:
            state = {k: v for k, v in state.items() if not k.startswith(head_name + ".")}
    _load_checked(model.body, state, path.name)


def _load_checked(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    problems = state_dict_mismatch(module, state)
    if problems:
        raise WeightsError(f"{what} do not fit this model: {problems}")
    module.load_state_dict(state, strict=True)


def state_dict_mismatch(module: nn.Module, state: dict[str, Tensor]) -> str:
    """A readable list of missing/unexpected keys, shape and number-type mismatches; "" when they fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = sorted(k for k in state if k not in own)
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    dtypes = [
        f"{k} {str(state[k].dtype).removeprefix('torch.')} vs {str(own[k].dtype).removeprefix('torch.')}"
        for k in own
        if k in state and not _dtype_fits(state[k].dtype, own[k].dtype)
    ]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches (file vs model)", shapes),
                         ("wrong number types (file vs model)", dtypes)):
        if items:
            parts.append(f"{label}: {_abbreviated(items)}")
    return "; ".join(parts)


# Half precision widens exactly into float32, so such weights load as they were trained;
# integers (a quantised model) or float64 would be converted silently into other values.
_FLOATS_FOR_FLOAT32 = (torch.float32, torch.float16, torch.bfloat16)


def _dtype_fits(stored: torch.dtype, wanted: torch.dtype) -> bool:
    if wanted == torch.float32:
        return stored in _FLOATS_FOR_FLOAT32
    return stored == wanted


def _abbreviated(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
