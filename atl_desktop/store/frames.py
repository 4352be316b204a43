"""Frames of multi-frame files (DICOM): one image row per frame, each a reference.

A frame is an ordinary row of `images` whose `location` (and `original_path`)
is the file's, followed by a frame suffix:

    scans/cine.dcm#frame=3

Frame numbers start at 1, as DICOM counts them. `Project.image_path` gives a
`FrameRef` for such a row and `load_image` reads that one frame, so thumbnails,
the query view, datasets and exports all decode it the same way. A single-frame
file is recorded as a plain path. The row's sha256 is that of the file's bytes
followed by the suffix, so importing the same file again merges every frame.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

FRAME_MARK = "#frame="


@dataclass(frozen=True)
class FrameRef:
    """Where a frame's pixels are: frame `frame` (from 1) of the file `path`."""

    path: Path
    frame: int

    @property
    def name(self) -> str:
        return f"{self.path.name}{FRAME_MARK}{self.frame}"

    @property
    def suffix(self) -> str:
        return self.path.suffix

    def exists(self) -> bool:
        return self.path.exists()

    def is_file(self) -> bool:
        return self.path.is_file()

    def __str__(self) -> str:
        return f"{self.path}{FRAME_MARK}{self.frame}"


def frame_location(location: str, frame: int) -> str:
    return f"{location}{FRAME_MARK}{frame}"


def split_frame(location: str) -> tuple[str, int | None]:
    """(file location, frame number) of a frame location; (location, None) for anything else."""
    cut = location.rfind(FRAME_MARK)
    if cut < 0:
        return location, None
    number = location[cut + len(FRAME_MARK):]
    if not number.isdigit() or int(number) < 1:
        return location, None
    return location[:cut], int(number)


def frame_sha256(file_sha256: str, frame: int) -> str:
    return hashlib.sha256(f"{file_sha256}{FRAME_MARK}{frame}".encode()).hexdigest()
