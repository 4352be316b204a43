"""Setting keys and defaults shared by the engine and the interfaces, importable without torch."""

from __future__ import annotations

TRAIN_SETTING = "train_config"  # the project's TrainConfig fields, as JSON
# A new project's fine-tunes take at least this many steps, however few the labels (20 labels
# make one step an epoch): the plain recipe that learns from 40 labels needs a few hundred,
# with a one-cycle learning rate and flips and 90-degree rotations (microscopy, the tool's
# main use, has no up or down; set augment to "natural" or "none" where orientation matters).
DEFAULT_MIN_STEPS = 200
NEW_PROJECT_TRAINING = {"min_steps": DEFAULT_MIN_STEPS, "schedule": "onecycle", "augment": "histology"}


def init_training_defaults(project) -> None:
    """Give a new project NEW_PROJECT_TRAINING (projects made before keep epochs-only training)."""
    saved = dict(project.get_setting(TRAIN_SETTING, {}))
    project.set_setting(TRAIN_SETTING, {**NEW_PROJECT_TRAINING, **saved})

# Possible label errors (session.check_labels_job): the last check's suspects, most suspicious
# first, as [{image_id, given, likely, margin, probability, given_probability}], and the labels
# the expert kept as they are, {str(image id): class id}, never flagged again while unchanged.
LABEL_CHECK_SETTING = "label_check"
LABELS_KEPT_SETTING = "labels_kept"
