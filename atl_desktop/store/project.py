"""The project: one SQLite file `NAME.atl` and a folder `NAME.atl.d/` beside it.

The store is the single owner of the file. Every change goes through a method
here, in a short transaction; a human label is durable (WAL with
synchronous=FULL) before `set_label` returns. Paths inside are relative, so a
project moved together with its images still opens.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from atl_desktop.store.errors import ClassError, ProjectError
from atl_desktop.store.files import atomic_write_bytes
from atl_desktop.store.frames import FrameRef, split_frame
from atl_desktop.store.lock import WriterLock
from atl_desktop.store.schema import (
    SCHEMA_VERSION,
    check_not_newer,
    file_version,
    migrate,
    refuse_newer,
)
from atl_desktop.store.slides import PatchRef, SlideStore, file_state

DOMAINS = ("source", "target")
SPLITS = ("pool", "val", "test")
LABEL_KINDS = ("human", "import", "accepted-pseudo")
PROJECT_SUFFIX = ".atl"
BUSY_TIMEOUT_S = 30.0
# The project's own files beside NAME.atl: SQLite's journals and the data folder.
SIDE_SUFFIXES = ("-wal", "-shm", "-journal", ".d")
# Left by a process killed while writing into data_dir/checkpoints: a temporary file of
# atomic_write_bytes (".NAME.XXXXXXXX.tmp") or a final file not recorded yet.
_TEMP_FILE = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")
_CHECKPOINT_FILE = re.compile(r"[0-9a-f]{64}\.safetensors")

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
_ROWS_PER_INSERT = 500


@functools.lru_cache(maxsize=4)
def _insert_images_sql(rows: int) -> str:
    """Insert `rows` images (NewImage's fields and the time added, each); an existing content
    hash is left as it is. Returns (sha256, id) of each row inserted."""
    row = f"({', '.join('?' * (len(NewImage._fields) + 1))})"
    return (
        f"INSERT INTO images ({', '.join(NewImage._fields)}, added) VALUES {', '.join([row] * rows)}"
        " ON CONFLICT (sha256) DO NOTHING RETURNING sha256, id"
    )


def _check_new_image(domain: str, split: str, stored: str) -> None:
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


def data_dir_for(path: Path) -> Path:
    return path.with_name(path.name + ".d")


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    else:
        db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return db


def _peek_version(path: Path) -> int:
    """The file's schema version, read without changing anything beside it.

    A plain connection would, on closing, merge a leftover -wal file into the main file
    (a checkpoint), and create an empty -wal/-shm pair. `immutable` reads the main file
    alone and creates nothing: right while no -wal holds newer pages. Otherwise a
    read-only connection reads through the WAL, and read-only never checkpoints.
    """
    wal = Path(f"{path}-wal")
    pending = wal.exists() and wal.stat().st_size > 0
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("" if pending else "&immutable=1")
    try:
        db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as error:
        raise ProjectError(f"{path} cannot be opened ({error}).") from None
    try:
        return file_version(db)
    except sqlite3.DatabaseError as error:
        raise ProjectError(f"{path} cannot be read as a project ({error}).") from None
    finally:
        db.close()


def _remove_empty_wal(path: Path) -> None:
    """Remove the empty -wal/-shm pair a read-only connection leaves (it may not delete
    them). SQLite removes them when the last connection of any kind closes, under its
    own locks, so a short ordinary connection does it safely, and leaves them while
    another process still has the file open."""
    try:
        if Path(f"{path}-wal").stat().st_size:
            return
        db = sqlite3.connect(path, timeout=0)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            db.close()
    except (OSError, sqlite3.Error):
        pass  # a read-only disk, or someone else has it: harmless leftovers


def _is_sqlite_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


class Project(SlideStore):
    """An open project. Use `Project.create` or `Project.open`; close it (or use `with`)."""

    def __init__(self, path: Path, db: sqlite3.Connection, readonly: bool, lock: WriterLock | None):
        self.path = path
        self.data_dir = data_dir_for(path)
        self.readonly = readonly
        self._db = db
        self._lock = lock
        self._owns_lock = lock is not None
        self._depth = 0
        self._thread = threading.get_ident()
        self._slide_cache = {}  # slide rows by id, for resolving patch references
        self._tidy_wal = False  # remove an empty -wal/-shm pair on close (see _remove_empty_wal)

    # ---- opening and closing -------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike) -> Project:
        path = Path(path).absolute()
        if path.suffix != PROJECT_SUFFIX:
            path = path.with_name(path.name + PROJECT_SUFFIX)
        if path.exists():
            raise ProjectError(f"{path} already exists; open it, or choose another name.")
        if not path.parent.is_dir():
            raise ProjectError(f"Folder {path.parent} does not exist.")
        lock = WriterLock(data_dir_for(path) / "lock", path.name)
        lock.acquire()
        try:
            db = _connect(path, readonly=False)
            cls._configure(db)
            migrate(db, path.name)
        except BaseException:
            lock.release()
            raise
        project = cls(path, db, readonly=False, lock=lock)
        project.set_setting("created", time.time())
        return project

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False) -> Project:
        path = Path(path).absolute()
        if not path.exists():
            raise ProjectError(f"No project at {path}.")
        if not _is_sqlite_file(path):
            raise ProjectError(f"{path} is not an ATL Desktop project file.")
        # A newer file is refused before anything (a lock, a connection) touches it.
        refuse_newer(_peek_version(path), path.name)
        had_wal = Path(f"{path}-wal").exists()
        lock = None
        if not readonly:
            lock = WriterLock(data_dir_for(path) / "lock", path.name)
            lock.acquire()
        db = None
        try:
            db = _connect(path, readonly)
            version = check_not_newer(db, path.name)  # again, on the connection to be used
            if not readonly:
                cls._configure(db)
                migrate(db, path.name)
            elif version < SCHEMA_VERSION:
                raise ProjectError(
                    f"{path.name} uses an older project format ({version}); upgrade it once with "
                    f"`atl upgrade {path}` or by opening it in ATL Desktop."
                )
        except BaseException:
            if db is not None:
                db.close()
            if lock is not None:
                lock.release()
            raise
        project = cls(path, db, readonly=readonly, lock=lock)
        project._tidy_wal = readonly and not had_wal
        if not readonly:
            project._remove_interrupted_writes()
        return project

    def _remove_interrupted_writes(self) -> None:
        """Files a killed process left in data_dir/checkpoints: temporary files of an
        atomic write, and checkpoint files never recorded. Only names of our own making,
        only in our own folder, and only by the one writer (it holds the lock)."""
        folder = self.data_dir / "checkpoints"
        if not folder.is_dir():
            return
        recorded = {Path(r[0]).name for r in self.db.execute("SELECT file FROM checkpoints")}
        for entry in os.scandir(folder):
            if not entry.is_file(follow_symlinks=False):
                continue
            if _TEMP_FILE.fullmatch(entry.name) or (
                    _CHECKPOINT_FILE.fullmatch(entry.name) and entry.name not in recorded):
                Path(entry.path).unlink(missing_ok=True)

    @staticmethod
    def _configure(db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")  # a label must survive a power cut
        db.execute("PRAGMA foreign_keys = ON")

    def another_connection(self) -> Project:
        """A handle on the same project for another thread (SQLite connections are per thread).

        It shares this handle's writer lock and never releases it.
        """
        db = _connect(self.path, self.readonly)
        if not self.readonly:
            self._configure(db)
        twin = Project(self.path, db, readonly=self.readonly, lock=self._lock)
        twin._owns_lock = False
        return twin

    def close(self) -> None:
        if self._db is None:
            return
        self._db.close()
        self._db = None
        if self._owns_lock and self._lock is not None:
            self._lock.release()
        if self._tidy_wal:
            _remove_empty_wal(self.path)

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._db is None

    # ---- transactions --------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise ProjectError(f"{self.path.name} is closed.")
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested uses join the outermost one."""
        if self.readonly:
            raise ProjectError(f"{self.path.name} is open read-only.")
        db = self.db
        if self._depth:
            self._depth += 1
            try:
                yield db
            finally:
                self._depth -= 1
            return
        db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield db
        except BaseException:
            self._depth = 0
            db.execute("ROLLBACK")
            raise
        self._depth = 0
        db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.db.execute(sql, params).fetchall()

    # ---- settings ------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_setting(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

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
            _check_new_image(domain, split, stored)  # all before anything is written
        added = time.time()
        results = []
        with self.transaction() as db:
            new_ids: dict[str, int] = {}  # sha256 -> id, of the rows inserted
            for start in range(0, len(images), _ROWS_PER_INSERT):  # many rows a statement: faster
                chunk = images[start : start + _ROWS_PER_INSERT]
                values = [value for image in chunk for value in (*image, added)]
                new_ids.update(db.execute(_insert_images_sql(len(chunk)), values).fetchall())
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

    # ---- classes -------------------------------------------------------------

    def _row_to_class(self, row: sqlite3.Row) -> ClassRecord:
        return ClassRecord(row["id"], row["name"], row["colour"], row["key"], row["position"])

    def classes(self) -> list[ClassRecord]:
        rows = self._query("SELECT * FROM classes WHERE deleted = 0 ORDER BY position, id")
        return [self._row_to_class(r) for r in rows]

    def class_names(self) -> list[str]:
        """Class names in model order: a model's output k is `class_names()[k]`."""
        return [c.name for c in self.classes()]

    def class_index(self) -> dict[int, int]:
        """Class id -> position in `class_names()` (the model's output index)."""
        return {c.id: i for i, c in enumerate(self.classes())}

    def class_by_name(self, name: str) -> ClassRecord | None:
        row = self.db.execute(
            "SELECT * FROM classes WHERE name = ? AND deleted = 0", (name,)
        ).fetchone()
        return None if row is None else self._row_to_class(row)

    def add_class(self, name: str, colour: str | None = None, key: str | None = None) -> int:
        name = name.strip()
        if not name:
            raise ClassError("A class needs a name.")
        with self.transaction() as db:
            row = db.execute("SELECT id, deleted FROM classes WHERE name = ?", (name,)).fetchone()
            if row is not None and not row["deleted"]:
                raise ClassError(f"There is already a class called {name!r}.")
            position = db.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM classes WHERE deleted = 0"
            ).fetchone()[0]
            colour = colour or DEFAULT_COLOURS[position % len(DEFAULT_COLOURS)]
            if key is None and position < 9:
                key = str(position + 1)
            if row is not None:  # a deleted class of that name comes back
                db.execute(
                    "UPDATE classes SET deleted = 0, colour = ?, key = ?, position = ? WHERE id = ?",
                    (colour, key, position, row["id"]),
                )
                return row["id"]
            cursor = db.execute(
                "INSERT INTO classes (name, colour, key, position) VALUES (?, ?, ?, ?)",
                (name, colour, key, position),
            )
            return cursor.lastrowid

    def ensure_class(self, name: str) -> int:
        existing = self.class_by_name(name.strip())
        return existing.id if existing is not None else self.add_class(name)

    def rename_class(self, class_id: int, new_name: str) -> None:
        new_name = new_name.strip()
        if not new_name:
            raise ClassError("A class needs a name.")
        with self.transaction() as db:
            clash = db.execute(
                "SELECT id FROM classes WHERE name = ? AND id != ?", (new_name, class_id)
            ).fetchone()
            if clash is not None:
                raise ClassError(f"There is already a class called {new_name!r}.")
            db.execute("UPDATE classes SET name = ? WHERE id = ?", (new_name, class_id))

    def update_class(self, class_id: int, *, colour: str | None = None, key: str | None = None) -> None:
        with self.transaction() as db:
            if colour is not None:
                db.execute("UPDATE classes SET colour = ? WHERE id = ?", (colour, class_id))
            if key is not None:
                db.execute("UPDATE classes SET key = ? WHERE id = ?", (key or None, class_id))

    def delete_class(self, class_id: int, *, annotator: str = "") -> list[int]:
        """Remove a class: its images become unlabelled (recorded as events). Returns those images."""
        return self._retire_class(class_id, None, annotator)

    def merge_classes(self, source_id: int, into_id: int, *, annotator: str = "") -> list[int]:
        """Relabel every image of `source_id` as `into_id` and remove `source_id`."""
        if source_id == into_id:
            raise ClassError("A class cannot be merged into itself.")
        return self._retire_class(source_id, into_id, annotator)

    def _retire_class(self, class_id: int, relabel_as: int | None, annotator: str) -> list[int]:
        """Give the class's images `relabel_as` (None: no label), as label events, and mark it deleted."""
        with self.transaction():
            affected = self.images_with_label(class_id)
            for image_id in affected:
                self._append_label(image_id, relabel_as, kind="human", annotator=annotator)
            self.db.execute("UPDATE classes SET deleted = 1 WHERE id = ?", (class_id,))
            self._renumber_classes()
        return affected

    def restore_class(self, record: ClassRecord) -> None:
        """Bring a deleted class back exactly as it was: same id, colour, key and position."""
        with self.transaction() as db:
            db.execute(
                "UPDATE classes SET position = position + 1 WHERE deleted = 0 AND position >= ?",
                (record.position,),
            )
            db.execute(
                "UPDATE classes SET deleted = 0, name = ?, colour = ?, key = ?, position = ?"
                " WHERE id = ?",
                (record.name, record.colour, record.key, record.position, record.id),
            )
            self._renumber_classes()

    def _renumber_classes(self) -> None:
        for position, record in enumerate(self.classes()):
            self.db.execute("UPDATE classes SET position = ? WHERE id = ?", (position, record.id))

    # ---- labels --------------------------------------------------------------

    def set_label(
        self,
        image_id: int,
        class_id: int | None,
        *,
        kind: str = "human",
        annotator: str = "",
        round: int | None = None,
        confidence: float | None = None,
        suggestion: int | None = None,
        suggestion_confidence: float | None = None,
        checkpoint_id: int | None = None,
        strategy: str | None = None,
    ) -> int:
        """Append a label event (class_id None clears the label). Durable when this returns."""
        with self.transaction():
            return self._append_label(
                image_id, class_id, kind=kind, annotator=annotator, round=round,
                confidence=confidence, suggestion=suggestion,
                suggestion_confidence=suggestion_confidence, checkpoint_id=checkpoint_id,
                strategy=strategy,
            )

    def _append_label(
        self,
        image_id: int,
        class_id: int | None,
        *,
        kind: str,
        annotator: str,
        round: int | None = None,
        confidence: float | None = None,
        suggestion: int | None = None,
        suggestion_confidence: float | None = None,
        checkpoint_id: int | None = None,
        strategy: str | None = None,
    ) -> int:
        if kind not in LABEL_KINDS:
            raise ProjectError(f"Unknown label kind {kind!r}; use one of {', '.join(LABEL_KINDS)}.")
        try:
            cursor = self.db.execute(
                "INSERT INTO label_events (image_id, class_id, kind, annotator, round_id,"
                " confidence, suggestion_class_id, suggestion_confidence, checkpoint_id,"
                " strategy, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (image_id, class_id, kind, annotator, round, confidence, suggestion,
                 suggestion_confidence, checkpoint_id, strategy, time.time()),
            )
        except sqlite3.IntegrityError as error:
            raise ProjectError(
                f"Cannot label image {image_id} as class {class_id}: no such image or class."
            ) from error
        return cursor.lastrowid

    _CURRENT = (
        "SELECT e.image_id, e.class_id FROM label_events e"
        " JOIN (SELECT image_id, MAX(id) AS id FROM label_events GROUP BY image_id) newest"
        " ON e.id = newest.id JOIN images i ON i.id = e.image_id"
    )

    def current_labels(self, domain: str | None = None, split: str | None = None, *,
                       for_training: bool = False) -> dict[int, int]:
        """image id -> class id for every labelled image (its newest label event).

        for_training: without the audit images still held out (they never train a model)."""
        where, params = self._image_filter(domain, split)
        where = (where + " AND" if where else "WHERE") + " e.class_id IS NOT NULL"
        if for_training:
            where += " AND e.image_id NOT IN (SELECT image_id FROM audit_images WHERE released IS NULL)"
        return {r[0]: r[1] for r in self._query(f"{self._CURRENT} {where}", params)}

    def label_of(self, image_id: int) -> int | None:
        row = self.db.execute(
            "SELECT class_id FROM label_events WHERE image_id = ? ORDER BY id DESC LIMIT 1",
            (image_id,),
        ).fetchone()
        return None if row is None else row[0]

    def labels_of(self, image_ids: Sequence[int]) -> dict[int, int | None]:
        """image id -> its current class id (None when unlabelled), in one query: for the
        window, which re-reads a batch of tiles after every label."""
        ids = [int(i) for i in image_ids]
        labels: dict[int, int | None] = dict.fromkeys(ids)
        for start in range(0, len(ids), 500):  # under SQLite's limit on bound parameters
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                "SELECT e.image_id, e.class_id FROM label_events e JOIN (SELECT MAX(id) AS id"
                f" FROM label_events WHERE image_id IN ({marks}) GROUP BY image_id) newest"
                " ON e.id = newest.id", chunk)
            labels.update(dict(rows))
        return labels

    def images_with_label(self, class_id: int) -> list[int]:
        rows = self._query(f"{self._CURRENT} WHERE e.class_id = ? ORDER BY e.image_id", (class_id,))
        return [r[0] for r in rows]

    def label_history(self, image_id: int | None = None) -> list[LabelEvent]:
        if image_id is None:
            rows = self._query("SELECT * FROM label_events ORDER BY id")
        else:
            rows = self._query(
                "SELECT * FROM label_events WHERE image_id = ? ORDER BY id", (image_id,)
            )
        return [LabelEvent(**dict(r)) for r in rows]

    def set_truth(self, image_id: int, class_id: int) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO truth (image_id, class_id) VALUES (?, ?)"
                " ON CONFLICT (image_id) DO UPDATE SET class_id = excluded.class_id",
                (image_id, class_id),
            )

    def truth(self, domain: str | None = None, split: str | None = None) -> dict[int, int]:
        where, params = self._image_filter(domain, split)
        rows = self._query(f"SELECT t.image_id, t.class_id FROM truth t JOIN images i ON i.id = t.image_id {where}", params)
        return {r[0]: r[1] for r in rows}

    # ---- the audit sample ----------------------------------------------------

    def mark_audit(self, image_ids: Iterable[int], *, round: int | None = None,
                   seed: int | None = None) -> None:
        """Mark images as drawn for the audit sample (held out of training until released)."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO audit_images (image_id, round_id, seed, drawn) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (image_id) DO NOTHING",
                [(int(i), round, seed, now) for i in image_ids])
            # A pending pseudo-label on an audit image would make the model's guess its label.
            db.execute("UPDATE pseudo_labels SET status = 'expired', decided = ? WHERE status = 'pending'"
                       " AND image_id IN (SELECT image_id FROM audit_images)", (now,))

    def audit_images(self, *, held_out: bool | None = None) -> list[AuditRecord]:
        """Audit images in the order drawn; held_out True/False: only unreleased/released ones."""
        where = {None: "", True: " WHERE released IS NULL", False: " WHERE released IS NOT NULL"}[held_out]
        rows = self._query(f"SELECT * FROM audit_images{where} ORDER BY drawn, image_id")
        return [AuditRecord(**dict(r)) for r in rows]

    def audit_ids(self, *, held_out: bool | None = None) -> set[int]:
        return {r.image_id for r in self.audit_images(held_out=held_out)}

    def release_audit(self, image_ids: Iterable[int] | None = None) -> list[int]:
        """Let held-out audit images (default: all) train models from now on; returns their ids."""
        wanted = self.audit_ids(held_out=True)
        if image_ids is not None:
            wanted &= {int(i) for i in image_ids}
        ids = sorted(wanted)
        now = time.time()
        with self.transaction() as db:
            db.executemany("UPDATE audit_images SET released = ? WHERE image_id = ?", [(now, i) for i in ids])
        return ids

    def unrelease_audit(self, image_ids: Iterable[int]) -> None:
        """Hold released audit images out again (undo of a release)."""
        with self.transaction() as db:
            db.executemany("UPDATE audit_images SET released = NULL WHERE image_id = ?",
                           [(int(i),) for i in image_ids])

    # ---- pseudo-labels (CEAL) ------------------------------------------------

    def add_pseudo_labels(
        self,
        items: Iterable[tuple[int, int, float | None, float | None]],
        round: int | None = None,
    ) -> list[int]:
        """Propose (image id, class id, confidence, entropy) pseudo-labels; older pending ones expire."""
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE pseudo_labels SET status = 'expired', decided = ? WHERE status = 'pending'", (now,))
            ids = []
            for image_id, class_id, confidence, entropy in items:
                cursor = db.execute(
                    "INSERT INTO pseudo_labels (image_id, class_id, round_id, confidence, entropy,"
                    " created) VALUES (?, ?, ?, ?, ?, ?)",
                    (image_id, class_id, round, confidence, entropy, now),
                )
                ids.append(cursor.lastrowid)
            return ids

    def pseudo_labels(self, status: str | None = "pending") -> list[PseudoLabel]:
        sql = "SELECT id, image_id, class_id, round_id, confidence, entropy, status, created FROM pseudo_labels"
        rows = self._query(sql + " WHERE status = ? ORDER BY id", (status,)) if status else self._query(sql + " ORDER BY id")
        return [PseudoLabel(**dict(r)) for r in rows]

    def pending_pseudo_count(self) -> int:
        return self._query("SELECT count(*) FROM pseudo_labels WHERE status = 'pending'")[0][0]

    def accept_pseudo(self, pseudo_ids: Iterable[int], *, annotator: str = "") -> None:
        """Accepted pseudo-labels become labels of kind 'accepted-pseudo'."""
        now = time.time()
        with self.transaction() as db:
            for pid in pseudo_ids:
                row = db.execute("SELECT * FROM pseudo_labels WHERE id = ?", (pid,)).fetchone()
                if row is None:
                    raise ProjectError(f"No pseudo-label {pid}.")
                self._append_label(
                    row["image_id"], row["class_id"], kind="accepted-pseudo", annotator=annotator,
                    round=row["round_id"], confidence=row["confidence"],
                    suggestion=row["class_id"], suggestion_confidence=row["confidence"],
                )
                db.execute(
                    "UPDATE pseudo_labels SET status = 'accepted', decided = ?, annotator = ? WHERE id = ?",
                    (now, annotator, pid),
                )

    def reject_pseudo(self, pseudo_ids: Iterable[int], *, annotator: str = "") -> None:
        """Rejected pseudo-labels go back to the pool, remembered as wrong for that class."""
        now = time.time()
        with self.transaction() as db:
            for pid in pseudo_ids:
                db.execute(
                    "UPDATE pseudo_labels SET status = 'rejected', decided = ?, annotator = ? WHERE id = ?",
                    (now, annotator, pid),
                )

    def undo_pseudo_decision(self, pseudo_ids: Iterable[int]) -> None:
        """Put decided pseudo-labels back to pending (an accepted one's label is cleared again)."""
        with self.transaction() as db:
            for pid in pseudo_ids:
                row = db.execute("SELECT * FROM pseudo_labels WHERE id = ?", (pid,)).fetchone()
                if row is None:
                    continue
                if row["status"] == "accepted":
                    self._append_label(row["image_id"], None, kind="human", annotator=row["annotator"] or "")
                db.execute(
                    "UPDATE pseudo_labels SET status = 'pending', decided = NULL, annotator = NULL WHERE id = ?",
                    (pid,),
                )

    def rejected_pseudo(self) -> set[tuple[int, int]]:
        rows = self._query("SELECT image_id, class_id FROM pseudo_labels WHERE status = 'rejected'")
        return {(r[0], r[1]) for r in rows}

    # ---- generators and synthetic images (GAAL) ------------------------------

    def add_generator(self, *, file: str, sha256: str, architecture: str,
                      config: dict | None = None, metrics: dict | None = None) -> int:
        """Record a generator whose file (under data_dir) is already written."""
        with self.transaction() as db:
            return db.execute(
                "INSERT INTO generators (file, sha256, architecture, config, metrics, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (file, sha256, architecture, json.dumps(config or {}), json.dumps(metrics or {}), time.time()),
            ).lastrowid

    def generators(self) -> list[GeneratorRecord]:
        return self._records("generators", GeneratorRecord)

    def generator(self, generator_id: int) -> GeneratorRecord:
        return self._record("generators", generator_id, GeneratorRecord, "generator")

    def latest_generator(self) -> GeneratorRecord | None:
        return self._newest_record("generators", GeneratorRecord)

    def add_synthetic_image(
        self,
        data: bytes,
        *,
        sha256: str,
        generator_id: int,
        latent: Sequence[float],
        width: int,
        height: int,
        mode: str,
        round: int | None = None,
        strategy: str | None = None,
        score: float | None = None,
        suffix: str = ".png",
    ) -> int:
        """Store a generated image (encoded bytes) as a target pool image flagged synthetic,
        with its latent code; returns its image id. The file is written before the rows."""
        location = self.store_media(data, sha256, suffix)
        latent_bytes = struct.pack(f"<{len(latent)}f", *latent)
        with self.transaction() as db:
            image_id, new = self.add_image(sha256=sha256, location=location, stored="media", width=width,
                                           height=height, mode=mode, bit_depth=8, file_size=len(data))
            if new:
                db.execute("UPDATE images SET synthetic = 1 WHERE id = ?", (image_id,))
                db.execute(
                    "INSERT INTO synthetic_images (image_id, generator_id, latent, round_id, strategy, score,"
                    " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (image_id, generator_id, latent_bytes, round, strategy, score, time.time()),
                )
            return image_id

    def set_synthetic_round(self, image_ids: Iterable[int], round_id: int) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE synthetic_images SET round_id = ? WHERE image_id = ?",
                           [(round_id, i) for i in image_ids])

    def synthetic_record(self, image_id: int) -> SyntheticRecord | None:
        row = self.db.execute("SELECT * FROM synthetic_images WHERE image_id = ?", (image_id,)).fetchone()
        if row is None:
            return None
        values = dict(row)
        blob = values["latent"]
        values["latent"] = struct.unpack(f"<{len(blob) // 4}f", blob)
        return SyntheticRecord(**values)

    # ---- checkpoints and rounds ----------------------------------------------

    def add_checkpoint(
        self,
        *,
        file: str,
        sha256: str,
        backbone: str,
        classes: Sequence[str],
        parent_id: int | None = None,
        round: int | None = None,
        metrics: dict | None = None,
        config: dict | None = None,
    ) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO checkpoints (file, sha256, backbone, classes, parent_id, round_id,"
                " metrics, config, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (file, sha256, backbone, json.dumps(list(classes)), parent_id, round,
                 json.dumps(metrics or {}), json.dumps(config or {}), time.time()),
            )
            # A new checkpoint supersedes a rolled-back choice: it becomes the current one.
            db.execute("DELETE FROM settings WHERE key = 'active_checkpoint'")
            return cursor.lastrowid

    def checkpoints(self) -> list[CheckpointRecord]:
        return self._records("checkpoints", CheckpointRecord)

    def checkpoint(self, checkpoint_id: int) -> CheckpointRecord:
        return self._record("checkpoints", checkpoint_id, CheckpointRecord, "checkpoint")

    def latest_checkpoint(self) -> CheckpointRecord | None:
        """The active checkpoint: the one chosen by rollback, else the newest."""
        chosen = self.get_setting("active_checkpoint")
        if chosen is not None:
            return self.checkpoint(chosen)
        return self._newest_record("checkpoints", CheckpointRecord)

    # The JSON columns of the tables read through _records, _record and _newest_record.
    _JSON_COLUMNS = {"checkpoints": ("classes", "metrics", "config"),
                     "generators": ("config", "metrics")}

    def _decoded(self, table: str, kind: type, row: sqlite3.Row):
        values = dict(row)
        for key in self._JSON_COLUMNS[table]:
            values[key] = json.loads(values[key])
        return kind(**values)

    def _records(self, table: str, kind: type) -> list:
        return [self._decoded(table, kind, r) for r in self._query(f"SELECT * FROM {table} ORDER BY id")]

    def _record(self, table: str, record_id: int, kind: type, what: str):
        row = self.db.execute(f"SELECT * FROM {table} WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise ProjectError(f"No {what} with id {record_id} in {self.path.name}.")
        return self._decoded(table, kind, row)

    def _newest_record(self, table: str, kind: type):
        row = self.db.execute(f"SELECT * FROM {table} ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else self._decoded(table, kind, row)

    def start_round(self, strategy: str, params: dict | None = None, checkpoint_id: int | None = None) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO rounds (strategy, params, checkpoint_id, started) VALUES (?, ?, ?, ?)",
                (strategy, json.dumps(params or {}), checkpoint_id, time.time()),
            )
            return cursor.lastrowid

    def finish_round(self, round_id: int, metrics: dict | None = None, checkpoint_id: int | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE rounds SET finished = ?, metrics = ?,"
                " checkpoint_id = COALESCE(?, checkpoint_id) WHERE id = ?",
                (time.time(), json.dumps(metrics or {}), checkpoint_id, round_id),
            )

    def rounds(self) -> list[RoundRecord]:
        records = []
        for row in self._query("SELECT * FROM rounds ORDER BY id"):
            values = dict(row)
            values["params"] = json.loads(values["params"])
            values["metrics"] = json.loads(values["metrics"])
            records.append(RoundRecord(**values))
        return records

    # ---- summaries -----------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """What `atl info` and the project panel show."""
        images = {
            f"{r[0]}/{r[1]}": r[2]
            for r in self._query("SELECT domain, split, COUNT(*) FROM images GROUP BY domain, split")
        }
        names = {c.id: c.name for c in self.classes()}
        newest = (
            "SELECT e.class_id, e.kind, e.annotator FROM label_events e"
            " JOIN (SELECT image_id, MAX(id) AS id FROM label_events GROUP BY image_id) n"
            " ON e.id = n.id WHERE e.class_id IS NOT NULL"
        )
        by_class: dict[str, int] = {name: 0 for name in names.values()}
        by_who: dict[str, int] = {}
        labelled = 0
        for class_id, kind, annotator in self._query(newest):
            labelled += 1
            name = names.get(class_id, f"(deleted class {class_id})")
            by_class[name] = by_class.get(name, 0) + 1
            who = f"{kind}:{annotator}" if annotator else kind
            by_who[who] = by_who.get(who, 0) + 1
        total = sum(images.values())
        pending = self.db.execute(
            "SELECT COUNT(*) FROM pseudo_labels WHERE status = 'pending'"
        ).fetchone()[0]
        return {
            "images": images,
            "total": total,
            "labelled": labelled,
            "unlabelled": total - labelled,
            "by_class": by_class,
            "by_who": by_who,
            "truth": self.db.execute("SELECT COUNT(*) FROM truth").fetchone()[0],
            "pending_pseudo": pending,
            "rounds": self.db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0],
            "checkpoints": self.db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0],
            "synthetic": self.db.execute("SELECT COUNT(*) FROM images WHERE synthetic = 1").fetchone()[0],
            "audit": self._audit_counts(),
        }

    def _audit_counts(self) -> dict[str, int]:
        """Audit images drawn, held out, and those held out that carry a label (one indexed
        look-up per audit image, not a scan of every label: counts() serves `atl info`)."""
        drawn, held = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(released IS NULL), 0) FROM audit_images").fetchone()
        labelled = self.db.execute(
            "SELECT COUNT(*) FROM audit_images a WHERE a.released IS NULL AND (SELECT class_id FROM"
            " label_events WHERE image_id = a.image_id ORDER BY id DESC LIMIT 1) IS NOT NULL").fetchone()[0]
        return {"drawn": drawn, "held_out": held, "labelled": labelled}

    def integrity_ok(self) -> bool:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
