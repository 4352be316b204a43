"""Labels as events, the audit sample and CEAL pseudo-labels."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence

from atl_desktop.store.errors import ProjectError
from atl_desktop.store.records import (
    LABEL_KINDS,
    AuditRecord,
    LabelEvent,
    PseudoLabel,
)


class LabelStore:
    """Project's methods for its labels, audit sample and pseudo-labels (one part of Project)."""

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
