"""Backbones with replaceable heads, input transforms, weights and checkpoints."""

from atl_desktop.models.classifier import FEATURES, LOGITS, Classifier, InputSpec, Stage
from atl_desktop.models.registry import BACKBONES, available_backbones, backbone_info, build_model
from atl_desktop.models.weights import WeightsError

__all__ = [
    "BACKBONES", "FEATURES", "LOGITS", "Classifier", "InputSpec", "Stage", "WeightsError",
    "available_backbones", "backbone_info", "build_model",
]
