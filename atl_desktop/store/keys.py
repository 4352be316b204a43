"""Setting keys and defaults shared by the engine and the interfaces, importable without torch."""

from __future__ import annotations

TRAIN_SETTING = "train_config"  # the project's TrainConfig fields, as JSON
# A new project's fine-tunes take at least this many steps, however few the labels (20 labels
# make one step an epoch): the plain recipe that learns from 40 labels needs a few hundred.
DEFAULT_MIN_STEPS = 200
NEW_PROJECT_TRAINING = {"min_steps": DEFAULT_MIN_STEPS}


def init_training_defaults(project) -> None:
    """Give a new project NEW_PROJECT_TRAINING (projects made before keep epochs-only training)."""
    saved = dict(project.get_setting(TRAIN_SETTING, {}))
    project.set_setting(TRAIN_SETTING, {**NEW_PROJECT_TRAINING, **saved})

# The audit sample (active.audit): this share of the images a query puts before the expert is
# drawn uniformly at random from the unlabelled target pool, never by the strategy.
AUDIT_SHARE_SETTING = "audit_share"
DEFAULT_AUDIT_SHARE = 0.1
# The stopping rule (active.audit.stop_rule): {"width": W, "target": T or null}.
STOP_RULE_SETTING = "stop_rule"
DEFAULT_STOP_WIDTH = 0.10
