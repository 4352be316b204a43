"""Whole slides in the project: a slide row per file, and its patches as references.

A patch is an ordinary row of `images` (so labels, rounds, scores and exports
treat it like any image) whose `location` is a reference instead of a path:

    slide:<slide id>/<level>/<x>/<y>/<size>/<out size>

x and y are the top-left corner in level-0 pixels, `size` is the side read at
`level` (in that level's pixels) and `out size` the side handed to models. The
same numbers are kept in the `patches` table, indexed by slide and position,
for the slide view and exports. No pixel is copied: they are read from the
slide when needed. The slide's own location is relative to the project's
folder (with the absolute original as a fallback), so a project moved
together with its slides still opens.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from atl_desktop.store.errors import ProjectError

PATCH_SCHEME = "slide:"


@dataclass(frozen=True)
class SlideRecord:
    id: int
    fingerprint: str
    location: str
    original_path: str | None
    file_size: int | None
    mtime: float | None
    width: int
    height: int
    mpp: float | None
    objective: float | None
    backend: str
    levels: list  # [[width, height, downsample], ...] from level 0 down
    tiling: dict
    added: float

    @property
    def name(self) -> str:
        return Path(self.original_path or self.location).name


@dataclass(frozen=True)
class PatchRef:
    """Where a patch's pixels are: a square of a slide. What `Project.image_path` gives for a patch.

    `slide` is the slide file's path as resolved now; `downsample` is the level's
    factor to level 0, so the patch covers size * downsample level-0 pixels.
    """

    slide: Path
    slide_id: int
    level: int
    x: int
    y: int
    size: int
    out_size: int
    downsample: float = 1.0

    @property
    def extent(self) -> int:
        """The patch's side in level-0 pixels."""
        return int(round(self.size * self.downsample))

    @property
    def name(self) -> str:
        return f"{self.slide.name} ({self.x}, {self.y})"

    def exists(self) -> bool:
        return self.slide.exists()

    def __str__(self) -> str:
        return f"{self.slide}#level={self.level}&x={self.x}&y={self.y}&size={self.size}"


@dataclass(frozen=True)
class PatchRow:
    image_id: int
    level: int
    x: int
    y: int
    size: int
    out_size: int
    tissue: float | None


def file_state(path: Path, file_size: int | None, mtime: float | None) -> str:
    """'missing', 'changed' (size or modification time differ from those recorded at import;
    nothing recorded means nothing to compare) or 'ok'."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    if file_size is not None and (
        st.st_size != file_size or (mtime is not None and abs(st.st_mtime - mtime) > 1e-3)
    ):
        return "changed"
    return "ok"


def patch_location(slide_id: int, level: int, x: int, y: int, size: int, out_size: int) -> str:
    return f"{PATCH_SCHEME}{slide_id}/{level}/{x}/{y}/{size}/{out_size}"


def parse_patch_location(location: str) -> tuple[int, int, int, int, int, int] | None:
    """(slide id, level, x, y, size, out size) of a patch location; None for a file location."""
    if not location.startswith(PATCH_SCHEME):
        return None
    parts = location[len(PATCH_SCHEME):].split("/")
    if len(parts) != 6:
        raise ProjectError(f"Damaged patch reference {location!r}.")
    slide_id, level, x, y, size, out_size = (int(p) for p in parts)
    return slide_id, level, x, y, size, out_size


def patch_sha256(fingerprint: str, level: int, x: int, y: int, size: int, out_size: int) -> str:
    """The key that makes the same patch of the same slide one image, however often it is added."""
    text = f"patch:{fingerprint}:{level}:{x}:{y}:{size}:{out_size}"
    return hashlib.sha256(text.encode()).hexdigest()


class SlideStore:
    """The slide methods of `Project` (mixed in; uses its connection and transactions)."""

    _slide_cache: dict[int, SlideRecord]

    def add_slide(
        self,
        *,
        fingerprint: str,
        location: str,
        original_path: str | None,
        width: int,
        height: int,
        backend: str,
        levels: Sequence[Sequence[float]],
        mpp: float | None = None,
        objective: float | None = None,
        file_size: int | None = None,
        mtime: float | None = None,
    ) -> tuple[int, bool]:
        """Record a slide file; the same file (by fingerprint) again gives (existing id, False)."""
        with self.transaction() as db:
            row = db.execute(
                "INSERT INTO slides (fingerprint, location, original_path, file_size, mtime, width,"
                " height, mpp, objective, backend, levels, added)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
                (fingerprint, location, original_path, file_size, mtime, width, height, mpp,
                 objective, backend, json.dumps([list(v) for v in levels]), time.time()),
            ).fetchone()
            if row is not None:
                return row[0], True
            existing = db.execute("SELECT id FROM slides WHERE fingerprint = ?", (fingerprint,))
            return existing.fetchone()[0], False

    def set_slide_tiling(self, slide_id: int, tiling: dict) -> None:
        with self.transaction() as db:
            db.execute("UPDATE slides SET tiling = ? WHERE id = ?", (json.dumps(tiling), slide_id))
        self._slide_cache.pop(slide_id, None)

    def add_patches(
        self,
        slide_id: int,
        patches: Iterable[tuple[int, int, int, int, int, float | None]],
        *,
        domain: str = "target",
        split: str = "pool",
    ) -> tuple[list[int], int]:
        """Add (level, x, y, size, out size, tissue fraction) patches as images of `domain`/`split`.

        Returns (image ids in order, how many were new); one transaction.
        """
        slide = self.slide(slide_id)
        ids, added = [], 0
        with self.transaction() as db:
            for level, x, y, size, out_size, tissue in patches:
                image_id, new = self.add_image(
                    sha256=patch_sha256(slide.fingerprint, level, x, y, size, out_size),
                    location=patch_location(slide_id, level, x, y, size, out_size),
                    stored="ref", original_path=None, width=out_size, height=out_size,
                    mode="RGB", bit_depth=8, domain=domain, split=split, file_size=0, mtime=None,
                )
                if new:
                    db.execute(
                        "INSERT INTO patches (image_id, slide_id, level, x, y, size, out_size, tissue)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (image_id, slide_id, level, x, y, size, out_size, tissue),
                    )
                ids.append(image_id)
                added += new
        return ids, added

    def _row_to_slide(self, row) -> SlideRecord:
        values = dict(row)
        values["levels"] = json.loads(values["levels"])
        values["tiling"] = json.loads(values["tiling"])
        return SlideRecord(**values)

    def slides(self) -> list[SlideRecord]:
        return [self._row_to_slide(r) for r in self._query("SELECT * FROM slides ORDER BY id")]

    def slide(self, slide_id: int) -> SlideRecord:
        cached = self._slide_cache.get(slide_id)
        if cached is not None:
            return cached
        row = self.db.execute("SELECT * FROM slides WHERE id = ?", (slide_id,)).fetchone()
        if row is None:
            raise ProjectError(f"No slide with id {slide_id} in {self.path.name}.")
        record = self._slide_cache[slide_id] = self._row_to_slide(row)
        return record

    def slide_path(self, record: SlideRecord) -> Path:
        """Where the slide is now: its location relative to the project, then its original path."""
        path = self.path.parent / record.location
        if not path.exists() and record.original_path and Path(record.original_path).exists():
            return Path(record.original_path)
        return path

    def patch_ref(self, location: str) -> PatchRef | None:
        """The patch a location names (None if it names a file)."""
        parsed = parse_patch_location(location)
        if parsed is None:
            return None
        slide_id, level, x, y, size, out_size = parsed
        slide = self.slide(slide_id)
        downsample = float(slide.levels[level][2]) if level < len(slide.levels) else 1.0
        return PatchRef(self.slide_path(slide), slide_id, level, x, y, size, out_size, downsample)

    def patches(self, slide_id: int) -> list[PatchRow]:
        rows = self._query(
            "SELECT image_id, level, x, y, size, out_size, tissue FROM patches"
            " WHERE slide_id = ? ORDER BY y, x", (slide_id,),
        )
        return [PatchRow(*r) for r in rows]

    def slide_of_image(self, image_id: int) -> int | None:
        row = self.db.execute("SELECT slide_id FROM patches WHERE image_id = ?", (image_id,)).fetchone()
        return None if row is None else row[0]

    def patch_counts(self) -> dict[int, int]:
        """slide id -> number of patches."""
        return {r[0]: r[1] for r in self._query("SELECT slide_id, COUNT(*) FROM patches GROUP BY slide_id")}

    def relocate_slide(self, slide_id: int, new_path: str | os.PathLike) -> None:
        """Point a slide at its file's new place (after it was moved on its own)."""
        new_path = Path(new_path)
        if not new_path.is_file():
            raise ProjectError(f"{new_path}: no such file.")
        st = new_path.stat()
        with self.transaction() as db:
            db.execute(
                "UPDATE slides SET location = ?, original_path = ?, file_size = ?, mtime = ? WHERE id = ?",
                (self.relative_location(new_path), str(new_path.absolute()), st.st_size, st.st_mtime,
                 slide_id),
            )
        self._slide_cache.pop(slide_id, None)

    def check_slides(self) -> dict[str, list[int]]:
        """Slides whose file is gone, or whose size or modification time changed since import."""
        missing, changed = [], []
        for record in self.slides():
            state = file_state(self.slide_path(record), record.file_size, record.mtime)
            if state != "ok":
                (missing if state == "missing" else changed).append(record.id)
        return {"missing": missing, "changed": changed}
