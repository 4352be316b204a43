"""The project: one SQLite file `NAME.atl` and a folder `NAME.atl.d/` beside it.

The store is the single owner of the file. Every change goes through a method
of `Project`, in a short transaction. `Project` joins one part per concern:
images (`images.py`), classes (`classes.py`), labels with the audit sample and
CEAL pseudo-labels (`labels.py`), generators, checkpoints and rounds
(`artifacts.py`) and slides (`slides.py`); this module opens and closes the
file and holds transactions, settings and summaries; a human label is durable (WAL with
synchronous=FULL) before `set_label` returns. Paths inside are relative, so a
project moved together with its images still opens.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atl_desktop.store.artifacts import ArtifactStore
from atl_desktop.store.classes import ClassStore
from atl_desktop.store.errors import ProjectError
from atl_desktop.store.images import ImageStore
from atl_desktop.store.labels import LabelStore
from atl_desktop.store.lock import WriterLock
from atl_desktop.store.records import (  # noqa: F401  (re-exported)
    BUSY_TIMEOUT_S,
    CHECKPOINT_FILE,
    DEFAULT_COLOURS,
    DOMAINS,
    LABEL_KINDS,
    PROJECT_SUFFIX,
    ROWS_PER_INSERT,
    SIDE_SUFFIXES,
    SPLITS,
    TEMP_FILE,
    AuditRecord,
    CheckpointRecord,
    ClassRecord,
    GeneratorRecord,
    ImageRecord,
    LabelEvent,
    NewImage,
    PseudoLabel,
    RoundRecord,
    SyntheticRecord,
    check_new_image,
    insert_images_sql,
)
from atl_desktop.store.schema import (
    SCHEMA_VERSION,
    check_not_newer,
    file_version,
    migrate,
    refuse_newer,
)
from atl_desktop.store.slides import SlideStore


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


class Project(ImageStore, ClassStore, LabelStore, ArtifactStore, SlideStore):
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
            if TEMP_FILE.fullmatch(entry.name) or (
                    CHECKPOINT_FILE.fullmatch(entry.name) and entry.name not in recorded):
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
