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

CHECKPOINT = "checkpoint"
UNTRAINED = "untrained:"
COLD_START_BACKBONE = "resnet18"  # what "untrained:" uses when no backbone is named
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
        if self.name == CHECKPOINT:
            return "the current checkpoint" if self.checkpoint_id is None else f"checkpoint {self.checkpoint_id}"
        if self.name.startswith(UNTRAINED):
            return f"an untrained {self.name[len(UNTRAINED):] or COLD_START_BACKBONE} (no weights)"
        return f"{self.name} ({self.weights or 'random weights'})"


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
