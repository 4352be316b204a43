"""What the project file holds, as records, and the names its columns take."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import NamedTuple

from atl_desktop.store.errors import ProjectError

DOMAINS = ("source", "target")
SPLITS = ("pool", "val", "test")
LABEL_KINDS = ("human", "import", "accepted-pseudo")
PROJECT_SUFFIX = ".atl"
BUSY_TIMEOUT_S = 30.0
# The project's own files beside NAME.atl: SQLite's journals and the data folder.
SIDE_SUFFIXES = ("-wal", "-shm", "-journal", ".d")
# Left by a process killed while writing into data_dir/checkpoints: a temporary file of
# atomic_write_bytes (".NAME.XXXXXXXX.tmp") or a final file not recorded yet.
TEMP_FILE = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")
CHECKPOINT_FILE = re.compile(r"[0-9a-f]{64}\.safetensors")

# Distinct, colour-blind-friendly defaults (Okabe-Ito, then Tableau) for new classes.
DEFAULT_COLOURS = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#999999", "#8C564B", "#17BECF", "#BCBD22", "#7F7F7F",
)


@dataclass(frozen=True)
class ImageRecord:
    id: int
    sha256: str
    location: str
    stored: str
    original_path: str | None
    file_size: int | None
    mtime: float | None
    width: int | None
    height: int | None
    mode: str | None
    bit_depth: int | None
    domain: str
    split: str
    added: float
    synthetic: int = 0  # 1: made by a generator (GAAL), see synthetic_images


class NewImage(NamedTuple):
    """An image to record (`Project.add_images`); the fields are columns of the images table."""

    sha256: str
    location: str
    stored: str = "ref"  # "ref": a path relative to the project file; "media": in NAME.atl.d/
    original_path: str | None = None
    file_size: int | None = None  # None: read from the file
    mtime: float | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    bit_depth: int | None = None
    domain: str = "target"
    split: str = "pool"


# Rows per INSERT statement in add_images: 13 values each stays well under SQLite's
# limit of 32,766 bound values (since 3.32; RETURNING needs 3.35 anyway).
ROWS_PER_INSERT = 500


@functools.lru_cache(maxsize=4)
def insert_images_sql(rows: int) -> str:
    """Insert `rows` images (NewImage's fields and the time added, each); an existing content
    hash is left as it is. Returns (sha256, id) of each row inserted."""
    row = f"({', '.join('?' * (len(NewImage._fields) + 1))})"
    return (
        f"INSERT INTO images ({', '.join(NewImage._fields)}, added) VALUES {', '.join([row] * rows)}"
        " ON CONFLICT (sha256) DO NOTHING RETURNING sha256, id"
    )


def check_new_image(domain: str, split: str, stored: str) -> None:
    if domain not in DOMAINS:
        raise ProjectError(f"Unknown domain {domain!r}; use one of {', '.join(DOMAINS)}.")
    if split not in SPLITS:
        raise ProjectError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if stored not in ("ref", "media"):
        raise ProjectError(f"Unknown storage {stored!r}.")


@dataclass(frozen=True)
class ClassRecord:
    id: int
    name: str
    colour: str | None
    key: str | None
    position: int


@dataclass(frozen=True)
class LabelEvent:
    id: int
    image_id: int
    class_id: int | None
    kind: str
    annotator: str
    round_id: int | None
    confidence: float | None
    suggestion_class_id: int | None
    suggestion_confidence: float | None
    checkpoint_id: int | None
    strategy: str | None
    time: float


@dataclass(frozen=True)
class CheckpointRecord:
    id: int
    file: str
    sha256: str
    backbone: str
    classes: list
    parent_id: int | None
    round_id: int | None
    metrics: dict
    config: dict
    created: float


@dataclass(frozen=True)
class RoundRecord:
    id: int
    strategy: str
    params: dict
    checkpoint_id: int | None
    started: float
    finished: float | None
    metrics: dict


@dataclass(frozen=True)
class PseudoLabel:
    id: int
    image_id: int
    class_id: int
    round_id: int | None
    confidence: float | None
    entropy: float | None
    status: str
    created: float


@dataclass(frozen=True)
class AuditRecord:
    image_id: int
    round_id: int | None
    seed: int | None
    drawn: float
    released: float | None  # None: held out of training


@dataclass(frozen=True)
class GeneratorRecord:
    id: int
    file: str
    sha256: str
    architecture: str
    config: dict
    metrics: dict
    created: float


@dataclass(frozen=True)
class SyntheticRecord:
    image_id: int
    generator_id: int
    latent: tuple[float, ...]
    round_id: int | None
    strategy: str | None
    score: float | None
    created: float
