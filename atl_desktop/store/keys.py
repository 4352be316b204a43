"""Setting keys and defaults shared by the engine and the interfaces, importable without torch."""

from __future__ import annotations

from collections.abc import Mapping

TRAIN_SETTING = "train_config"  # the project's TrainConfig fields, as JSON
# The values TrainConfig takes for these fields, named here so that the window and the command
# line can offer them without importing torch (transfer.train and models.transforms use them).
SCHEDULES = ("constant", "onecycle")
AUGMENTATIONS = ("none", "natural", "histology", "hed")
# A new project's fine-tunes take at least this many steps of 64 images, however few the labels
# (20 labels made one step an epoch), with a one-cycle learning rate and flips and 90-degree
# rotations: the recipe benchmarks/recipe_pbc.py chose on a validation split of real photographs
# (200 or 400 steps, batches of 32 or 64, peak rate 1e-3 or 3e-3). Microscopy, the tool's main
# use, has no up or down; set augment to "natural" or "none" where orientation matters.
DEFAULT_MIN_STEPS = 400
NEW_PROJECT_TRAINING = {"min_steps": DEFAULT_MIN_STEPS, "batch_size": 64, "schedule": "onecycle",
                        "augment": "histology"}


def init_training_defaults(project) -> None:
    """Give a new project NEW_PROJECT_TRAINING (projects made before keep epochs-only training)."""
    saved = dict(project.get_setting(TRAIN_SETTING, {}))
    project.set_setting(TRAIN_SETTING, {**NEW_PROJECT_TRAINING, **saved})


# The encoder queries embed images with while the project has no checkpoint
# (models.encoders.EncoderChoice as JSON; written by `atl encoder` and Model ▸ Choose encoder).
ENCODER_SETTING = "encoder"
CHECKPOINT = "checkpoint"  # the encoder name of a project checkpoint
UNTRAINED = "untrained:"  # prefix of a backbone with a fixed random initialisation
COLD_START_BACKBONE = "resnet18"  # what "untrained:" uses when no backbone is named


def describe_encoder(saved: Mapping | None) -> str:
    """An encoder setting in words, without importing torch (the window's project panel shows it)."""
    name = (saved or {}).get("name") or UNTRAINED + COLD_START_BACKBONE
    if name == CHECKPOINT:
        checkpoint_id = saved.get("checkpoint_id")
        return "the current checkpoint" if checkpoint_id is None else f"checkpoint {checkpoint_id}"
    if name.startswith(UNTRAINED):
        return f"an untrained {name[len(UNTRAINED):] or COLD_START_BACKBONE} (no weights)"
    return f"{name} ({saved.get('weights') or 'random weights'})"


# The audit sample (active.audit): this share of the images a query puts before the expert is
# drawn uniformly at random from the unlabelled target pool, never by the strategy.
AUDIT_SHARE_SETTING = "audit_share"
DEFAULT_AUDIT_SHARE = 0.1
# The stopping rule (active.audit.stop_rule): {"width": W, "target": T or null}.
STOP_RULE_SETTING = "stop_rule"
DEFAULT_STOP_WIDTH = 0.10
# Possible label errors (session.check_labels_job): the last check's suspects, most suspicious
# first, as [{image_id, given, likely, margin, probability, given_probability}], and the labels
# the expert kept as they are, {str(image id): class id}, never flagged again while unchanged.
LABEL_CHECK_SETTING = "label_check"
LABELS_KEPT_SETTING = "labels_kept"

# The rest of the project's settings, named once here (the engine and the window both read them).
BASELINE_SETTING = "random_baseline"  # {"strategy": "random", "labels": [...], "accuracy": [...], "how": ...}
SOURCE_SETTING = "source_model"  # {"accuracy": test accuracy of the source-trained model, "labels": 0}
SKIPPED_SETTING = "skipped_images"  # images the expert marked unsure (the window's x key)
PSEUDO_SETTING = "pseudo_labels"  # the project's PseudoLabelConfig fields, as JSON
GAN_SETTING = "gan_config"  # GanConfig fields the project overrides, as JSON
STAIN_SETTING = "stain_normalisation"  # a data.stain.StainConfig as JSON
IMPORTED_SETTING = "imported_bundles"  # the result bundles already merged (scale.bundle)
ROUND_STATE = "round_state"  # {"round": id, "step": ..., more per step}: a round's progress
LAST_QUERY = "last_query"  # [{image_id, score, reason, top: [[class position, p], ...]}, ...]
LAST_QUERY_ROUND = "last_query_round"  # the round LAST_QUERY belongs to
