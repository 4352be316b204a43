"""What training makes: generators, synthetic images, checkpoints and rounds."""

from __future__ import annotations

import json
import sqlite3
import struct
import time
from collections.abc import Iterable, Sequence

from atl_desktop.store.errors import ProjectError
from atl_desktop.store.records import (
    CheckpointRecord,
    GeneratorRecord,
    RoundRecord,
    SyntheticRecord,
)


class ArtifactStore:
    """Project's methods for its generators, synthetic images, checkpoints and rounds (one part)."""

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
