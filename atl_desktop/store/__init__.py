"""The project file: schema and migrations, the Project API, atomic file writes."""

from atl_desktop.store.errors import ClassError, NewerProjectError, ProjectError, ProjectLockedError
from atl_desktop.store.project import (
    DOMAINS,
    LABEL_KINDS,
    SPLITS,
    CheckpointRecord,
    ClassRecord,
    ImageRecord,
    LabelEvent,
    Project,
    PseudoLabel,
    RoundRecord,
)
from atl_desktop.store.schema import SCHEMA_VERSION

__all__ = [
    "DOMAINS", "LABEL_KINDS", "SPLITS", "SCHEMA_VERSION", "CheckpointRecord", "ClassError",
    "ClassRecord", "ImageRecord", "LabelEvent", "NewerProjectError", "Project", "ProjectError",
    "ProjectLockedError", "PseudoLabel", "RoundRecord",
]
