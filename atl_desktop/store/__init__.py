"""The project file: schema and migrations, the Project API, atomic file writes."""

from atl_desktop.store.errors import ClassError, NewerProjectError, ProjectError, ProjectLockedError
from atl_desktop.store.frames import FrameRef
from atl_desktop.store.project import (
    DOMAINS,
    LABEL_KINDS,
    SPLITS,
    CheckpointRecord,
    ClassRecord,
    GeneratorRecord,
    ImageRecord,
    LabelEvent,
    NewImage,
    Project,
    PseudoLabel,
    RoundRecord,
    SyntheticRecord,
)
from atl_desktop.store.schema import SCHEMA_VERSION
from atl_desktop.store.slides import PatchRef, PatchRow, SlideRecord

__all__ = [
    "DOMAINS", "LABEL_KINDS", "SPLITS", "SCHEMA_VERSION", "CheckpointRecord", "ClassError",
    "ClassRecord", "FrameRef", "GeneratorRecord", "ImageRecord", "LabelEvent", "NewImage", "NewerProjectError", "Project", "ProjectError",
    "ProjectLockedError", "PseudoLabel", "RoundRecord", "SyntheticRecord", "PatchRef", "PatchRow", "SlideRecord",
]
