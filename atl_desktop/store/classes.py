"""The project's classes: add, rename, colour, key, order, delete, merge."""

from __future__ import annotations

import sqlite3

from atl_desktop.store.errors import ClassError
from atl_desktop.store.records import (
    DEFAULT_COLOURS,
    ClassRecord,
)


class ClassStore:
    """Project's methods for its classes (Project joins the parts; they share its connection)."""

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
