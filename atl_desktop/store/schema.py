"""The project file's schema as numbered migrations.

`MIGRATIONS[n]` takes a file from version n to n + 1. They are applied in one
exclusive transaction, so a file is either fully migrated or left as it was.
Never edit a published migration: add a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from atl_desktop.store.errors import NewerProjectError


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the open migration transaction first, so
    # statements are run one by one inside it instead.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement!r}")


def _v0_to_v1(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE images (
            id            INTEGER PRIMARY KEY,
            sha256        TEXT NOT NULL UNIQUE,
            location      TEXT NOT NULL,
            stored        TEXT NOT NULL CHECK (stored IN ('ref', 'media')),
            original_path TEXT,
            file_size     INTEGER,
            mtime         REAL,
            width         INTEGER,
            height        INTEGER,
            mode          TEXT,
            bit_depth     INTEGER,
            domain        TEXT NOT NULL CHECK (domain IN ('source', 'target')),
            split         TEXT NOT NULL CHECK (split IN ('pool', 'val', 'test')),
            added         REAL NOT NULL
        );
        CREATE INDEX images_domain_split ON images (domain, split);

        CREATE TABLE classes (
            id       INTEGER PRIMARY KEY,
            name     TEXT NOT NULL UNIQUE,
            colour   TEXT,
            key      TEXT,
            position INTEGER NOT NULL
        );

        CREATE TABLE checkpoints (
            id        INTEGER PRIMARY KEY,
            file      TEXT NOT NULL,
            sha256    TEXT NOT NULL,
            backbone  TEXT NOT NULL,
            classes   TEXT NOT NULL,
            parent_id INTEGER REFERENCES checkpoints (id),
            round_id  INTEGER REFERENCES rounds (id),
            metrics   TEXT NOT NULL DEFAULT '{}',
            config    TEXT NOT NULL DEFAULT '{}',
            created   REAL NOT NULL
        );

        CREATE TABLE rounds (
            id            INTEGER PRIMARY KEY,
            strategy      TEXT NOT NULL,
            params        TEXT NOT NULL DEFAULT '{}',
            checkpoint_id INTEGER REFERENCES checkpoints (id),
            started       REAL NOT NULL,
            finished      REAL,
            metrics       TEXT NOT NULL DEFAULT '{}'
        );

        -- Append-only: the current label of an image is its newest event.
        CREATE TABLE label_events (
            id                    INTEGER PRIMARY KEY,
            image_id              INTEGER NOT NULL REFERENCES images (id),
            class_id              INTEGER REFERENCES classes (id),
            kind                  TEXT NOT NULL
                                  CHECK (kind IN ('human', 'import', 'accepted-pseudo')),
            annotator             TEXT NOT NULL DEFAULT '',
            round_id              INTEGER REFERENCES rounds (id),
            confidence            REAL,
            suggestion_class_id   INTEGER REFERENCES classes (id),
            suggestion_confidence REAL,
            checkpoint_id         INTEGER REFERENCES checkpoints (id),
            strategy              TEXT,
            time                  REAL NOT NULL
        );
        CREATE INDEX label_events_image ON label_events (image_id, id);

        -- Hidden ground truth for simulations and demos; never shown as a label.
        CREATE TABLE truth (
            image_id INTEGER PRIMARY KEY REFERENCES images (id),
            class_id INTEGER NOT NULL REFERENCES classes (id)
        );

        CREATE TABLE settings (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """
    )


def _v1_to_v2(db: sqlite3.Connection) -> None:
    # CEAL pseudo-labels live apart from the label history: they are proposals
    # until the expert accepts them (then an 'accepted-pseudo' label event is
    # appended) or rejects them (remembered, so the same class is not proposed
    # again). Classes gain a soft-delete flag, since label history refers to them.
    _run_script(
        db,
        """
        CREATE TABLE pseudo_labels (
            id         INTEGER PRIMARY KEY,
            image_id   INTEGER NOT NULL REFERENCES images (id),
            class_id   INTEGER NOT NULL REFERENCES classes (id),
            round_id   INTEGER REFERENCES rounds (id),
            confidence REAL,
            entropy    REAL,
            status     TEXT NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'accepted', 'rejected', 'expired')),
            created    REAL NOT NULL,
            decided    REAL,
            annotator  TEXT
        );
        CREATE INDEX pseudo_labels_status ON pseudo_labels (status, image_id);
        ALTER TABLE classes ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
        """
    )


def _v2_to_v3(db: sqlite3.Connection) -> None:
    # GAN sampling (GAAL): generators trained on the pool are recorded like
    # checkpoints (safetensors files beside the project). A synthetic image is an
    # ordinary target pool image flagged `synthetic`, so it is labelled and used for
    # fine-tuning like any other; its latent code (float32, little-endian) and
    # generator are kept so that it can be traced and regenerated.
    _run_script(
        db,
        """
        CREATE TABLE generators (
            id           INTEGER PRIMARY KEY,
            file         TEXT NOT NULL,
            sha256       TEXT NOT NULL,
            architecture TEXT NOT NULL,
            config       TEXT NOT NULL DEFAULT '{}',
            metrics      TEXT NOT NULL DEFAULT '{}',
            created      REAL NOT NULL
        );
        CREATE TABLE synthetic_images (
            image_id     INTEGER PRIMARY KEY REFERENCES images (id),
            generator_id INTEGER NOT NULL REFERENCES generators (id),
            latent       BLOB NOT NULL,
            round_id     INTEGER REFERENCES rounds (id),
            strategy     TEXT,
            score        REAL,
            created      REAL NOT NULL
        );
        ALTER TABLE images ADD COLUMN synthetic INTEGER NOT NULL DEFAULT 0;
        """
    )


def _v3_to_v4(db: sqlite3.Connection) -> None:
    # Whole slides: one row per slide file, and each patch as an image whose
    # location is a reference "slide:<id>/<level>/<x>/<y>/<size>/<out size>";
    # `patches` repeats the numbers, indexed by slide and position for the slide
    # view. x, y are level-0 pixels; size is the side read at `level`.
    _run_script(
        db,
        """
        CREATE TABLE slides (
            id            INTEGER PRIMARY KEY,
            fingerprint   TEXT NOT NULL UNIQUE,
            location      TEXT NOT NULL,
            original_path TEXT,
            file_size     INTEGER,
            mtime         REAL,
            width         INTEGER NOT NULL,
            height        INTEGER NOT NULL,
            mpp           REAL,
            objective     REAL,
            backend       TEXT NOT NULL,
            levels        TEXT NOT NULL DEFAULT '[]',
            tiling        TEXT NOT NULL DEFAULT '{}',
            added         REAL NOT NULL
        );
        CREATE TABLE patches (
            image_id INTEGER PRIMARY KEY REFERENCES images (id),
            slide_id INTEGER NOT NULL REFERENCES slides (id),
            level    INTEGER NOT NULL,
            x        INTEGER NOT NULL,
            y        INTEGER NOT NULL,
            size     INTEGER NOT NULL,
            out_size INTEGER NOT NULL,
            tissue   REAL
        );
        CREATE INDEX patches_slide ON patches (slide_id, y, x);
        """
    )


def _v4_to_v5(db: sqlite3.Connection) -> None:
    # The audit sample: target pool images drawn uniformly at random (never by a strategy)
    # when a query was made, to estimate the model's accuracy. They never train a model
    # while `released` is NULL; releasing one records when.
    _run_script(
        db,
        """
        CREATE TABLE audit_images (
            image_id INTEGER PRIMARY KEY REFERENCES images (id),
            round_id INTEGER REFERENCES rounds (id),
            seed     INTEGER,
            drawn    REAL NOT NULL,
            released REAL
        );
        """
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v0_to_v1, _v1_to_v2, _v2_to_v3, _v3_to_v4, _v4_to_v5,
]
SCHEMA_VERSION = len(MIGRATIONS)


def file_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def check_not_newer(db: sqlite3.Connection, name: str) -> int:
    return refuse_newer(file_version(db), name)


def refuse_newer(version: int, name: str) -> int:
    """`version`, unless it is newer than this code knows: then a NewerProjectError."""
    if version > SCHEMA_VERSION:
        raise NewerProjectError(
            f"{name} was written by a newer version of ATL Desktop (project format {version}; "
            f"this version reads up to {SCHEMA_VERSION}). Update ATL Desktop to open it; "
            "the file has not been changed."
        )
    return version


def migrate(db: sqlite3.Connection, name: str, target: int = SCHEMA_VERSION) -> int:
    """Bring the file up to `target` in one exclusive transaction; return the old version."""
    db.execute("BEGIN EXCLUSIVE")
    try:
        version = check_not_newer(db, name)
        for step in range(version, target):
            MIGRATIONS[step](db)
        if version < target:
            db.execute(f"PRAGMA user_version = {int(target)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return version
