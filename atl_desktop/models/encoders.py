"""Encoders of the embedding-first loop: one registry for the window, `atl`, rounds and simulations.

An encoder turns an image into an embedding; the loop caches the embeddings of
every pool image once per (encoder, input transform) and fits a light head on
them after each label (`active.heads`). Four kinds, chosen by name:

- a **torchvision backbone** ("resnet18", ...) with local ImageNet weights
  ("imagenet") or a weights file;
- a **foundation model** ("dinov2_vits14", "uni_vitl16", ...) from a file or
  folder the user already has (`models.foundation`);
- a **project checkpoint** ("checkpoint"): the self-supervised encoder trained on
  the project's own images (`transfer.selfsup`), a source-domain model, or a
  fine-tuned one;
- **no weights at all** ("untrained:<backbone>"): a backbone with a fixed random
  initialisation. Its features are weak but free; the cold start uses them when
  nothing better exists, until the user pre-trains an encoder.

Every encoder is returned as a `Classifier` (the body is the encoder, the head a
placeholder), so the scoring pass and its memory-mapped cache serve as the
embedding cache: `encoder_key` names the cache folder, and changes exactly when
the weights or the input transform change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from atl_desktop.models.weights import WeightsError
from atl_desktop.store.keys import (  # kept torch-free there for the window; re-exported here
    CHECKPOINT,
    COLD_START_BACKBONE,
    UNTRAINED,
    describe_encoder,
)

COLD_START_SIZE = 64
UNTRAINED_SEED = 0


@dataclass(frozen=True)
class EncoderChoice:
    """Which encoder: `name` is a backbone, a foundation model, "checkpoint" or "untrained:<backbone>"."""

    name: str = CHECKPOINT
    weights: str | None = None  # "imagenet", a file or folder; None for checkpoints and untrained
    checkpoint_id: int | None = None  # with name "checkpoint"; None = the current one
    input_size: int | None = None  # torchvision and untrained backbones only

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> EncoderChoice:
        data = dict(data or {})
        return cls(**{k: data[k] for k in ("name", "weights", "checkpoint_id", "input_size") if k in data})

    def describe(self) -> str:
        return describe_encoder(self.to_json())


# How an encoder takes weights: EncoderOption.weights.
NO_WEIGHTS, OPTIONAL_WEIGHTS, REQUIRED_WEIGHTS = "none", "optional", "required"


@dataclass(frozen=True)
class EncoderOption:
    """One encoder a user can choose, as the window's Choose encoder dialog lists it."""

    name: str  # an EncoderChoice name
    kind: str  # "untrained" | "torchvision" | "foundation" | "checkpoint"
    description: str  # one line
    weights: str = NO_WEIGHTS  # NO_WEIGHTS, OPTIONAL_WEIGHTS ("imagenet" when none) or REQUIRED_WEIGHTS
    weights_hint: str = ""  # what the weights path should hold
    sized: bool = False  # the input size is the user's to choose
    checkpoint_id: int | None = None  # kind "checkpoint" only


def encoder_options(checkpoints=()) -> list[EncoderOption]:
    """Every encoder a user can choose: an untrained backbone, `checkpoints` (the project's
    CheckpointRecords), the foundation models, then the torchvision backbones."""
    from atl_desktop.models.foundation import FOUNDATION_MODELS
    from atl_desktop.models.registry import BACKBONES

    untrained = EncoderOption(
        UNTRAINED + COLD_START_BACKBONE, "untrained",
        f"{COLD_START_BACKBONE}, fixed random initialisation: no weights needed, weak features",
        sized=True)
    backbones = [
        EncoderOption(name, "torchvision",
                      f"torchvision {name} with ImageNet weights from the local torch cache, or a weights file",
                      OPTIONAL_WEIGHTS, "imagenet (the local torch cache), or a .pth/.safetensors file",
                      sized=True)
        for name, backbone in BACKBONES.items() if backbone.torchvision
    ]
    foundation = [
        EncoderOption(name, "foundation", f"{model.description}: needs its weights file or snapshot folder",
                      REQUIRED_WEIGHTS, f"{' or '.join(model.expected_files)} (from {model.source}), "
                      "or the folder that holds it")
        for name, model in FOUNDATION_MODELS.items()
    ]
    # The project's own encoders first, then the models that need a file: the likelier choices on top.
    return [untrained, *(checkpoint_option(r) for r in checkpoints), *foundation, *backbones]


def checkpoint_option(record) -> EncoderOption:
    """A project checkpoint as an encoder: a self-supervised encoder (`transfer.selfsup`) or a trained model."""
    config = record.config or {}
    what = config.get("phase") or config.get("method") or "trained"
    return EncoderOption(CHECKPOINT, "checkpoint", f"checkpoint #{record.id}: {record.backbone}, {what}",
                         checkpoint_id=record.id)


def encoder_names() -> list[str]:
    """Every encoder name a user can give (checkpoints aside)."""
    from atl_desktop.models.foundation import FOUNDATION_MODELS
    from atl_desktop.models.registry import BACKBONES

    return [*BACKBONES, *FOUNDATION_MODELS, f"{UNTRAINED}{COLD_START_BACKBONE}"]


def build_encoder(choice: EncoderChoice, num_classes: int):
    """A `Classifier` whose features are the encoder's embeddings (its head untrained)."""
    from atl_desktop.models.foundation import FOUNDATION_MODELS
    from atl_desktop.models.registry import BACKBONES, build_model

    name = choice.name
    n = max(1, num_classes)
    if name.startswith(UNTRAINED):
        backbone = name[len(UNTRAINED):] or COLD_START_BACKBONE
        return build_model(backbone, n, input_size=choice.input_size or COLD_START_SIZE, seed=UNTRAINED_SEED)
    if name in BACKBONES:
        return build_model(name, n, weights=choice.weights, input_size=choice.input_size, seed=0)
    if name in FOUNDATION_MODELS:
        if not choice.weights:
            raise WeightsError(f"{name} needs its weights: pass the file or folder you have (--weights PATH).")
        return _foundation_classifier(name, choice.weights, n)
    raise WeightsError(f"Unknown encoder {name!r}; choose one of {', '.join(encoder_names())} or a checkpoint.")


def _foundation_classifier(name: str, weights: str, num_classes: int):
    from atl_desktop.models.classifier import Classifier, Stage
    from atl_desktop.models.foundation import build_foundation_encoder

    encoder = build_foundation_encoder(name, weights)
    children = tuple(child for child, _ in encoder.named_children())
    stage = Stage("encoder", children, children[-1])
    model = Classifier(name, encoder, encoder.dim, num_classes, encoder.spec, [stage])
    model.weights_sha256 = encoder.weights_sha256
    return model.eval()


def encoder_key(model) -> str:
    """Cache key of an encoder without a checkpoint file: its weights and its input transform.

    Foundation models hash their weights file once at load (`weights_sha256`); other
    models hash the tensors that make the features (`models.classifier.model_fingerprint`
    of the body and bottleneck; the placeholder head does not change an embedding).
    """
    from atl_desktop.models.classifier import model_fingerprint

    weights = getattr(model, "weights_sha256", None)
    if weights is None:
        parts = [model.body] + ([] if model.bottleneck is None else [model.bottleneck])
        weights = "-".join(model_fingerprint(part) for part in parts)
    spec = json.dumps(model.spec.to_dict(), sort_keys=True)
    return hashlib.sha256(f"{model.backbone_name}|{weights}|{spec}".encode()).hexdigest()
