"""Transfer methods: what a training step optimises besides classification.

The training loop runs one forward pass over the concatenation of the labelled
training batch, a labelled source batch and an unlabelled target batch (any of
them may be absent), splits the outputs by role into `StepOutputs`, adds the
cross-entropy of the labelled parts, and asks the method for extra loss terms.
A method is an `nn.Module`, so it may own parameters (a domain discriminator,
kernels) which get their own optimiser groups; `layers` names the intermediate
layers it needs (see `Classifier.layer_names`), e.g. several for DAN/JAN.

Register a new method in `METHODS`; the CLI, the GUI and the benchmarks read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from atl_desktop.models.classifier import FEATURES, LOGITS


@dataclass(frozen=True)
class RoleOutputs:
    """Outputs of one role (labelled, source, target) of a step's forward pass."""

    layers: Mapping[str, Tensor]
    labels: Tensor | None

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


class Method(nn.Module):
    """Plain supervised training; subclasses add transfer losses."""

    name: ClassVar[str] = "finetune"
    description: ClassVar[str] = ""
    layers: ClassVar[tuple[str, ...]] = (FEATURES, LOGITS)
    # Which data a project run gives the method (see transfer.train.train_project).
    uses_source_labels: ClassVar[bool] = True
    uses_target_labels: ClassVar[bool] = True
    uses_unlabelled_target: ClassVar[bool] = False

    def extra_losses(self, out: StepOutputs) -> dict[str, Tensor]:
        """Loss terms (already weighted) added to the classification loss."""
        return {}

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"params": params, "lr": lr, "weight_decay": weight_decay, "name": f"method.{self.name}"}]

    def after_step(self) -> None:
        """Called after every optimiser step (schedules)."""


class FineTune(Method):
    name = "finetune"
    description = "Supervised training: source pre-training, then fine-tuning on labelled target images."


class SourceOnly(FineTune):
    name = "source_only"
    description = "Train on labelled source images only (the domain-adaptation baseline)."
    uses_target_labels = False


METHODS: dict[str, type[Method]] = {m.name: m for m in (FineTune, SourceOnly)}


def make_method(name: str, options: Mapping[str, object] | None = None) -> Method:
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
    return cls(**dict(options or {}))
