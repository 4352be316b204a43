"""Copies of a project to run its jobs elsewhere (`atl pack`): the database copied with
SQLite's online backup (a consistent snapshot even while the project is open), and
the places of its images and slides rewritten in the copy."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path


def copy_database(project, target: str | Path) -> None:
    """Write a consistent copy of `project`'s database to `target` (a new file)."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists.")
    copy = sqlite3.connect(target)
    try:
        project.db.backup(copy)
    finally:
        copy.close()


def relocate(project, images: Mapping[int, tuple[str, str, str | None]],
             slides: Mapping[int, tuple[str, str | None]]) -> None:
    """Point images (id -> (location, "ref" or "media", original path)) and slides
    (id -> (location, original path)) at new places, in one transaction. Sizes and
    modification times stay as recorded: the files are the same, elsewhere."""
    with project.transaction() as db:
        db.executemany("UPDATE images SET location = ?, stored = ?, original_path = ? WHERE id = ?",
                       [(loc, stored, original, i) for i, (loc, stored, original) in images.items()])
        db.executemany("UPDATE slides SET location = ?, original_path = ? WHERE id = ?",
                       [(loc, original, i) for i, (loc, original) in slides.items()])
