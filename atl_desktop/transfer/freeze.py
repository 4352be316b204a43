"""Freezing the first stages and layer-wise learning rates.

Yosinski et al. (2014, "How transferable are features in deep neural
networks?") found the first layers general and the last ones specific to the
source task. So fine-tuning may keep the first k stages fixed and give the
remaining stages learning rates that shrink towards the input:
stage i of n gets lr * decay ** (n - i), the bottleneck and head get lr.
"""

from __future__ import annotations

from atl_desktop.models.classifier import Classifier


def freeze_stages(model: Classifier, k: int) -> None:
    """Fix the parameters (and batch-norm statistics) of the first `k` body stages."""
    n = len(model.stages)
    if not 0 <= k <= n:
        raise ValueError(f"{model.backbone_name} has {n} stages; freeze must be between 0 and {n}.")
    for i, (_, params) in enumerate(model.stage_parameters()):
        for p in params:
            p.requires_grad_(i >= k)
    model.frozen_stages = k
    model.train(model.training)


def unfreeze(model: Classifier) -> None:
    freeze_stages(model, 0)


def stage_learning_rates(model: Classifier, lr: float, decay: float = 1.0) -> dict[str, float]:
    """Learning rate per stage name ("bottleneck" and "head" included)."""
    n = len(model.stages)
    rates = {stage.name: lr * decay ** (n - i) for i, stage in enumerate(model.stages)}
    if model.bottleneck is not None:
        rates["bottleneck"] = lr
    rates["head"] = lr
    return rates


def layerwise_param_groups(
    model: Classifier, lr: float, decay: float = 1.0, weight_decay: float = 0.0
) -> list[dict]:
    """Optimiser parameter groups, one per stage with trainable parameters, each named."""
    if not 0.0 < decay <= 1.0:
        raise ValueError("layer-wise learning-rate decay must be in (0, 1]")
    rates = stage_learning_rates(model, lr, decay)
    groups = []
    for name, params in model.stage_parameters():
        trainable = [p for p in params if p.requires_grad]
        if trainable:
            groups.append({"params": trainable, "lr": rates[name], "weight_decay": weight_decay,
                           "name": name})
    return groups
