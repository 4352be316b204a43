"""The project's images: import, look-up, paths and counts."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from atl_desktop.store.errors import ProjectError
from atl_desktop.store.files import atomic_write_bytes
from atl_desktop.store.frames import FrameRef, split_frame
from atl_desktop.store.records import (
    ROWS_PER_INSERT,
    ImageRecord,
    NewImage,
    check_new_image,
    insert_images_sql,
)
from atl_desktop.store.slides import PatchRef, file_state


class ImageStore:
    """Project's methods for its images (Project joins the parts; they share its connection)."""

    # ---- images --------------------------------------------------------------

    def relative_location(self, path: str | os.PathLike) -> str:
        """Where `path` is, relative to the folder holding the project file (absolute if impossible)."""
        absolute = Path(path).resolve()
        try:
            return Path(os.path.relpath(absolute, self.path.parent.resolve())).as_posix()
        except ValueError:  # another drive on Windows
            return str(absolute)

    def store_media(self, data: bytes, sha256: str, suffix: str = ".png",
                    written: list[Path] | None = None) -> str:
        """Copy bytes into the content-addressed media folder; return their location.
        A new file is appended to `written` (so that a failed batch can remove it)."""
        location = f"media/{sha256[:2]}/{sha256}{suffix}"
        target = self.data_dir / location
        if not target.exists():
            atomic_write_bytes(target, data)
            if written is not None:
                written.append(target)
        return location

    def add_image(
        self,
        *,
        sha256: str,
        location: str,
        stored: str = "ref",
        original_path: str | None = None,
        width: int | None = None,
        height: int | None = None,
        mode: str | None = None,
        bit_depth: int | None = None,
        domain: str = "target",
        split: str = "pool",
        file_size: int | None = None,
        mtime: float | None = None,
    ) -> tuple[int, bool]:
        """Record an image; an image with the same content is merged: (existing id, False).

        `file_size` and `mtime` (to notice a changed file later) are read from the
        file when not given; importers that already read it pass them and save a stat.
        """
        image = NewImage(sha256, location, stored, original_path, file_size, mtime, width, height,
                         mode, bit_depth, domain, split)
        return self.add_images([image])[0]

    def add_images(self, images: Iterable[NewImage]) -> list[tuple[int, bool]]:
        """`add_image` for each of `images`, in order, in one transaction: (id, is new) each.

        A duplicate of an image recorded before, or earlier in `images`, gets that image's id.
        """
        images = [image if image.file_size is not None else self._with_stat(image) for image in images]
        for domain, split, stored in {(i.domain, i.split, i.stored) for i in images}:
            check_new_image(domain, split, stored)  # all before anything is written
        added = time.time()
        results = []
        with self.transaction() as db:
            new_ids: dict[str, int] = {}  # sha256 -> id, of the rows inserted
            for start in range(0, len(images), ROWS_PER_INSERT):  # many rows a statement: faster
                chunk = images[start : start + ROWS_PER_INSERT]
                values = [value for image in chunk for value in (*image, added)]
                new_ids.update(db.execute(insert_images_sql(len(chunk)), values).fetchall())
            for image in images:
                image_id = new_ids.pop(image.sha256, None)  # popped: an equal image later is no longer new
                if image_id is not None:
                    results.append((image_id, True))
                else:
                    row = db.execute("SELECT id FROM images WHERE sha256 = ?", (image.sha256,)).fetchone()
                    results.append((row[0], False))
        return results

    def _with_stat(self, image: NewImage) -> NewImage:
        file_size, mtime = self._stat(split_frame(image.location)[0], image.stored)
        return image._replace(file_size=file_size, mtime=mtime)

    def _stat(self, location: str, stored: str) -> tuple[int | None, float | None]:
        try:
            st = self._resolve(location, stored).stat()
        except OSError:
            return None, None
        return st.st_size, st.st_mtime

    def _resolve(self, location: str, stored: str) -> Path:
        base = self.data_dir if stored == "media" else self.path.parent
        return base / location

    def image(self, image_id: int) -> ImageRecord:
        row = self.db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise ProjectError(f"No image with id {image_id} in {self.path.name}.")
        return ImageRecord(**dict(row))

    def images(self, domain: str | None = None, split: str | None = None, *,
               synthetic: bool | None = None) -> list[ImageRecord]:
        where, params = self._image_filter(domain, split, synthetic)
        rows = self._query(f"SELECT * FROM images i {where} ORDER BY id", params)
        return [ImageRecord(**dict(r)) for r in rows]

    def image_ids(self, domain: str | None = None, split: str | None = None, *,
                  synthetic: bool | None = None) -> list[int]:
        """Ids in ascending order; `synthetic` False/True keeps only real/generated images."""
        where, params = self._image_filter(domain, split, synthetic)
        return [r[0] for r in self._query(f"SELECT id FROM images i {where} ORDER BY id", params)]

    @staticmethod
    def _image_filter(domain: str | None, split: str | None,
                      synthetic: bool | None = None) -> tuple[str, list[str]]:
        clauses, params = [], []
        if synthetic is not None:
            clauses.append("i.synthetic = 1" if synthetic else "i.synthetic = 0")
        if domain is not None:
            clauses.append("i.domain = ?")
            params.append(domain)
        if split is not None:
            clauses.append("i.split = ?")
            params.append(split)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    def image_path(self, record: ImageRecord) -> Path | PatchRef | FrameRef:
        """Where the pixels are now: the stored relative location first, then the original path.

        For a patch of a slide, a `PatchRef`; for a frame of a multi-frame file, a
        `FrameRef` (`load_image` reads both).
        """
        patch = self.patch_ref(record.location) if record.stored == "ref" else None
        if patch is not None:
            return patch
        location, frame = split_frame(record.location)
        path = self._resolve(location, record.stored)
        if record.stored == "ref" and not path.exists() and record.original_path:
            original = Path(split_frame(record.original_path)[0])
            if original.exists():
                path = original
        return path if frame is None else FrameRef(path, frame)

    def image_id_for_path(self, path: str | os.PathLike) -> int | None:
        absolute = str(Path(path).resolve())
        row = self.db.execute(
            "SELECT id FROM images WHERE (stored = 'ref' AND location = ?) OR original_path = ?"
            " ORDER BY id LIMIT 1",
            (self.relative_location(absolute), absolute),
        ).fetchone()
        return None if row is None else row[0]

    def check_files(self) -> dict[str, list[int]]:
        """Images whose file is gone, or whose size or modification time changed since import."""
        missing, changed = [], []
        slides = self.check_slides()
        for record in self.images():
            patch = self.patch_ref(record.location) if record.stored == "ref" else None
            if patch is not None:  # a patch is as good as its slide
                if patch.slide_id in slides["missing"]:
                    missing.append(record.id)
                elif patch.slide_id in slides["changed"]:
                    changed.append(record.id)
                continue
            where = self.image_path(record)
            state = file_state(where.path if isinstance(where, FrameRef) else where,
                               record.file_size, record.mtime)
            if state != "ok":
                (missing if state == "missing" else changed).append(record.id)
        return {"missing": missing, "changed": changed}
