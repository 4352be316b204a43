"""The pool browser's item model: every image of the project, a page at a time.

Rows come from paged read-only SQL (`PoolQuery.page`), so a 100,000-image
project shows its first rows at once: `canFetchMore`/`fetchMore` add a page when
the view scrolls near the end. Sorting by the model's score or confidence needs
the cached scores of the current checkpoint; that ordering is computed off the
GUI thread (`scored_order`) and then paged the same way.

The SQL here reads the store's tables directly (read-only), because the store
has no paged query yet; it belongs in `Project` once the schema settles.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, Qt

from atl_desktop.gui.models import ImageIdRole, LabelRole, StateRole, TileRole
from atl_desktop.store import ImageRecord, Project

PAGE = 400
SORTS = ("added", "score", "confidence")
LABEL_ANY, LABEL_NONE, LABEL_SOME = "any", "unlabelled", "labelled"

# The newest label event of image i decides its label and who gave it (as in Project.counts).
_NEWEST = "(SELECT {col} FROM label_events e WHERE e.image_id = i.id ORDER BY e.id DESC LIMIT 1)"
_LABEL = _NEWEST.format(col="class_id")
_WHO = _NEWEST.format(col="CASE WHEN annotator != '' THEN kind || ':' || annotator ELSE kind END")


@dataclass(frozen=True)
class PoolQuery:
    """What the browser shows: filters (None = any) and the order."""

    domain: str | None = None
    split: str | None = None
    label: str | int = LABEL_ANY  # LABEL_ANY, LABEL_NONE, LABEL_SOME or a class id
    who: str | None = None  # "human:alice", "import:data.csv", "accepted-pseudo:bob"...
    sort: str = "added"

    def where(self) -> tuple[str, list]:
        clauses, params = [], []
        for column in ("domain", "split"):
            if getattr(self, column) is not None:
                clauses.append(f"i.{column} = ?")
                params.append(getattr(self, column))
        if self.label == LABEL_NONE:
            clauses.append(f"{_LABEL} IS NULL")
        elif self.label == LABEL_SOME:
            clauses.append(f"{_LABEL} IS NOT NULL")
        elif self.label != LABEL_ANY:
            clauses.append(f"{_LABEL} = ?")
            params.append(int(self.label))
        if self.who is not None:
            clauses.append(f"{_WHO} = ?")
            params.append(self.who)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


@dataclass(frozen=True)
class PoolRow:
    record: ImageRecord
    label_id: int | None
    who: str | None
    score: float | None = None  # entropy under the current checkpoint (nats)
    confidence: float | None = None  # its top class probability

    @property
    def image_id(self) -> int:
        return self.record.id


_COLUMNS = f"i.*, {_LABEL} AS label_id, {_WHO} AS who"


def _rows(db: sqlite3.Connection, sql: str, params) -> list[PoolRow]:
    rows = []
    for row in db.execute(sql, params):
        values = dict(row)
        label, who = values.pop("label_id"), values.pop("who")
        rows.append(PoolRow(ImageRecord(**values), label, who))
    return rows


def page_in_order(db: sqlite3.Connection, query: PoolQuery, offset: int, limit: int) -> list[PoolRow]:
    where, params = query.where()
    return _rows(db, f"SELECT {_COLUMNS} FROM images i {where} ORDER BY i.id LIMIT ? OFFSET ?",
                 [*params, limit, offset])


def rows_for_ids(db: sqlite3.Connection, ids: list[int]) -> list[PoolRow]:
    """Rows for `ids`, in that order."""
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    found = {r.image_id: r for r in _rows(db, f"SELECT {_COLUMNS} FROM images i WHERE i.id IN ({marks})", ids)}
    return [found[i] for i in ids if i in found]


def count(db: sqlite3.Connection, query: PoolQuery) -> int:
    where, params = query.where()
    return db.execute(f"SELECT COUNT(*) FROM images i {where}", params).fetchone()[0]


def annotators(db: sqlite3.Connection) -> list[str]:
    """Everyone (and every import) that gave a label, as the who filter names them."""
    rows = db.execute("SELECT DISTINCT CASE WHEN annotator != '' THEN kind || ':' || annotator"
                      " ELSE kind END FROM label_events WHERE class_id IS NOT NULL ORDER BY 1")
    return [r[0] for r in rows]


def read_only(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    return db


def scored_order(path: Path, query: PoolQuery) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, entropy, confidence) of the images matching `query`, most uncertain (or least
    confident) first; images without cached scores come last with NaN. Slow: runs off the
    GUI thread on its own connection."""
    from atl_desktop.active.scores import entropy
    from atl_desktop.active.scoring import MissingScores, ScoringConfig, load_scores, scores_dir

    with Project.open(path, readonly=True) as project:
        where, params = query.where()
        ids = np.asarray([r[0] for r in project.db.execute(
            f"SELECT i.id FROM images i {where} ORDER BY i.id", params)], dtype=np.int64)
        pool_ids = np.asarray(project.image_ids(domain="target", split="pool"), dtype=np.int64)
        checkpoint = project.latest_checkpoint()
        data_dir = project.data_dir
    ent = np.full(len(ids), np.nan)
    conf = np.full(len(ids), np.nan)
    if checkpoint is not None and len(ids):
        cache = scores_dir(data_dir, checkpoint.sha256, ScoringConfig())
        scored = _scored_subset(cache, ids, pool_ids, load_scores, MissingScores)
        if scored is not None:
            mask, probs = scored
            ent[mask] = entropy(probs)
            conf[mask] = probs.max(axis=1)
    key = -ent if query.sort == "score" else conf
    order = np.lexsort((ids, np.where(np.isnan(key), np.inf, key)))
    return ids[order], ent[order], conf[order]


def _scored_subset(cache: Path, ids: np.ndarray, pool_ids: np.ndarray, load_scores, missing):
    """(mask of ids with scores, their probabilities), or None when they are not cached.

    The scoring job scores the target pool; when not every image shown has scores
    (a source image, a newly imported one), those of the target pool are used.
    """
    if not cache.exists():
        return None
    for mask in (np.ones(len(ids), dtype=bool), np.isin(ids, pool_ids)):
        if not mask.any():
            continue
        try:
            table = load_scores(cache, ids[mask])
        except missing:
            continue
        return mask, np.asarray(table.probs[table.rows(ids[mask])], dtype=np.float64)
    return None


class PoolModel(QAbstractListModel):
    """Images matching a PoolQuery, loaded a page at a time."""

    def __init__(self, project: Project, parent=None):
        super().__init__(parent)
        self.project = project
        self.query = PoolQuery()
        self._db = read_only(project.path)
        self._rows: list[PoolRow] = []
        self._order: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # for score sorts
        self._exhausted = False
        self._paths: dict[int, object] = {}
        self.book = None  # a ClassBook, for label colours

    def close(self) -> None:
        self._db.close()

    # ---- what is shown ---------------------------------------------------------

    def set_query(self, query: PoolQuery, order: tuple | None = None) -> None:
        """Show `query`; score sorts need `order` from `scored_order`."""
        self.beginResetModel()
        self.query = query
        self._order = order if query.sort != "added" else None
        self._rows = []
        self._exhausted = False
        self.endResetModel()
        if self.canFetchMore():
            self.fetchMore()

    def reload(self) -> None:
        """Re-read the rows shown so far (labels changed), keeping how many are shown."""
        shown = len(self._rows)
        self.beginResetModel()
        self._rows, self._exhausted = [], False
        while len(self._rows) < shown and not self._exhausted:
            self._rows += self._page(len(self._rows))
        self.endResetModel()

    def _page(self, offset: int) -> list[PoolRow]:
        if self._order is None:
            rows = page_in_order(self._db, self.query, offset, PAGE)
        else:
            ids, ent, conf = self._order
            part = slice(offset, offset + PAGE)
            rows = rows_for_ids(self._db, [int(i) for i in ids[part]])
            values = {int(i): (e, c) for i, e, c in zip(ids[part], ent[part], conf[part], strict=True)}
            rows = [replace(r, score=_num(values[r.image_id][0]), confidence=_num(values[r.image_id][1]))
                    for r in rows]
            if offset + PAGE >= len(ids):
                self._exhausted = True
        if len(rows) < PAGE:
            self._exhausted = True
        return rows

    def path_of(self, row: PoolRow):
        """Where a row's pixels are; resolved when a tile is first drawn (it checks the
        file), not for every row of a page."""
        path = self._paths.get(row.image_id)
        if path is None:
            path = self._paths[row.image_id] = self.project.image_path(row.record)
        return path

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def canFetchMore(self, parent=QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and not self._exhausted

    def fetchMore(self, parent=QModelIndex()) -> None:  # noqa: B008
        rows = self._page(len(self._rows))
        if rows:
            self.beginInsertRows(QModelIndex(), len(self._rows), len(self._rows) + len(rows) - 1)
            self._rows += rows
            self.endInsertRows()

    def row_data(self, row: int) -> PoolRow | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def total(self) -> int:
        """How many images match (a COUNT over the whole table; not on every repaint)."""
        return len(self._order[0]) if self._order is not None else count(self._db, self.query)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        row = self.row_data(index.row())
        if row is None:
            return None
        if role == TileRole:
            return row
        if role == ImageIdRole:
            return row.image_id
        if role == LabelRole:
            return self.book.by_id(row.label_id) if self.book is not None else None
        if role == StateRole:
            return "labelled" if row.label_id is not None else ""
        if role == Qt.ItemDataRole.ToolTipRole:
            return tooltip(row, self.data(index, LabelRole))
        return None


def _num(value) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def tooltip(row: PoolRow, label) -> str:
    record = row.record
    parts = [f"Image {record.id}: {Path(record.original_path or record.location).name}",
             f"{record.domain} / {record.split}, {record.width} × {record.height} {record.mode or ''}"]
    parts.append(f"label: {label.name} (by {row.who})" if label is not None else "not labelled")
    if row.score is not None:
        parts.append(f"entropy {row.score:.2f} nats, top class {row.confidence:.0%}")
    return "\n".join(parts)
