"""Qt item models over the store: classes, the queried batch, pseudo-label groups.

The models read the store on the GUI thread (small indexed queries) and hold
only what the store knows plus view state (which tile the expert marked).
Tile models load their rows lazily with `canFetchMore`/`fetchMore`, so a large
group shows at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from PySide6.QtCore import QAbstractListModel, QAbstractTableModel, QModelIndex, Qt
from PySide6.QtGui import QColor

from atl_desktop.store import ClassRecord, Project, PseudoLabel

TileRole = Qt.ItemDataRole.UserRole + 1  # the row's dataclass
ImageIdRole = Qt.ItemDataRole.UserRole + 2
LabelRole = Qt.ItemDataRole.UserRole + 3  # ClassRecord of the current label, or None
StateRole = Qt.ItemDataRole.UserRole + 4  # "labelled" | "skipped" | "wrong" | ""

FETCH_CHUNK = 120


@dataclass(frozen=True)
class ClassBook:
    """A snapshot of the classes, looked up by id, model position or shortcut key."""

    classes: tuple[ClassRecord, ...]

    @classmethod
    def load(cls, project: Project) -> ClassBook:
        return cls(tuple(project.classes()))

    def by_id(self, class_id: int | None) -> ClassRecord | None:
        return next((c for c in self.classes if c.id == class_id), None)

    def by_name(self, name: str) -> ClassRecord | None:
        return next((c for c in self.classes if c.name == name), None)

    def by_key(self, text: str) -> ClassRecord | None:
        if not text:
            return None
        return next((c for c in self.classes if c.key and c.key.lower() == text.lower()), None)


@dataclass(frozen=True)
class Prediction:
    class_id: int | None
    name: str
    probability: float


@dataclass(frozen=True)
class QueryTile:
    """One queried image with the model's top predictions and why it was chosen."""

    image_id: int
    score: float
    reason: str
    top: tuple[Prediction, ...] = field(default_factory=tuple)
    synthetic: bool = False  # made by a GAN (GAAL): shown with a badge


def class_colour(record: ClassRecord | None) -> QColor:
    return QColor(record.colour) if record is not None and record.colour else QColor("#888888")


# ---- classes -------------------------------------------------------------------


class ClassTableModel(QAbstractTableModel):
    """Key, class (with its colour) and how many images carry it."""

    HEADERS = ("Key", "Class", "Labelled")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._classes: list[ClassRecord] = []
        self._counts: dict[str, int] = {}

    def reload(self, classes: list[ClassRecord], counts_by_name: dict[str, int]) -> None:
        self.beginResetModel()
        self._classes = list(classes)
        self._counts = dict(counts_by_name)
        self.endResetModel()

    def class_at(self, row: int) -> ClassRecord | None:
        return self._classes[row] if 0 <= row < len(self._classes) else None

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._classes)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        record = self.class_at(index.row())
        if record is None:
            return None
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return (record.key or "", record.name, str(self._counts.get(record.name, 0)))[column]
        if role == Qt.ItemDataRole.DecorationRole and column == 1:
            return class_colour(record)
        if role == Qt.ItemDataRole.TextAlignmentRole and column != 1:
            return int(Qt.AlignmentFlag.AlignCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            key = f"key {record.key}" if record.key else "no key"
            return f"{record.name} ({key}, colour {record.colour})"
        if role == TileRole:
            return record
        return None


# ---- tiles ---------------------------------------------------------------------


class _LazyTileModel(QAbstractListModel):
    """Rows shown in chunks: `fetchMore` adds the next chunk when the view needs it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._rows: list = []
        self._shown = 0

    def _reset_rows(self, rows: list) -> None:
        self.beginResetModel()
        self._rows = rows
        self._shown = min(len(rows), FETCH_CHUNK)
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else self._shown

    def canFetchMore(self, parent=QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and self._shown < len(self._rows)

    def fetchMore(self, parent=QModelIndex()) -> None:  # noqa: B008
        more = min(FETCH_CHUNK, len(self._rows) - self._shown)
        if more <= 0:
            return
        self.beginInsertRows(QModelIndex(), self._shown, self._shown + more - 1)
        self._shown += more
        self.endInsertRows()

    def row_data(self, row: int):
        return self._rows[row] if 0 <= row < self._shown else None

    def all_rows(self) -> list:
        return list(self._rows)

    def _changed(self, row: int) -> None:
        if 0 <= row < self._shown:
            index = self.index(row)
            self.dataChanged.emit(index, index)


class QueryBatchModel(_LazyTileModel):
    """The queried batch; each tile knows its current label and whether it was skipped."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._labels: dict[int, ClassRecord | None] = {}
        self._skipped: set[int] = set()

    def set_batch(self, tiles: list[QueryTile]) -> None:
        self._reset_rows(list(tiles))

    def tiles(self) -> list[QueryTile]:
        return self.all_rows()

    def row_of(self, image_id: int) -> int:
        return next((i for i, t in enumerate(self._rows) if t.image_id == image_id), -1)

    def refresh_state(self, project: Project, book: ClassBook, skipped: set[int]) -> None:
        """Re-read every tile's label from the store; only tiles that changed are repainted."""
        current = project.labels_of([t.image_id for t in self._rows])
        labels = {t.image_id: book.by_id(current[t.image_id]) for t in self._rows}
        skipped = set(skipped)
        changed = [row for row, t in enumerate(self._rows[: self._shown])
                   if labels[t.image_id] != self._labels.get(t.image_id)
                   or (t.image_id in skipped) != (t.image_id in self._skipped)]
        self._labels, self._skipped = labels, skipped
        for row in changed:
            self._changed(row)

    def set_tile_state(self, image_id: int, label: ClassRecord | None, skipped: bool) -> None:
        self._labels[image_id] = label
        (self._skipped.add if skipped else self._skipped.discard)(image_id)
        self._changed(self.row_of(image_id))

    def label(self, image_id: int) -> ClassRecord | None:
        return self._labels.get(image_id)

    def update_predictions(self, top: dict[int, tuple[Prediction, ...]]) -> None:
        """New suggestions for some tiles (the live head refitted after a label)."""
        for row, tile in enumerate(self._rows):
            new = top.get(tile.image_id)
            if new is not None and new != tile.top:
                self._rows[row] = dataclasses.replace(tile, top=new)
                if row < self._shown:
                    self._changed(row)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        tile: QueryTile | None = self.row_data(index.row())
        if tile is None:
            return None
        if role == TileRole:
            return tile
        if role == ImageIdRole:
            return tile.image_id
        if role == LabelRole:
            return self._labels.get(tile.image_id)
        if role == StateRole:
            if self._labels.get(tile.image_id) is not None:
                return "labelled"
            return "skipped" if tile.image_id in self._skipped else ""
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"Image {tile.image_id}: {tile.reason}"
        return None


class PseudoGroupModel(_LazyTileModel):
    """Pending pseudo-labels of one predicted class, most confident first."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.class_record: ClassRecord | None = None
        self._wrong: set[int] = set()

    def set_group(self, record: ClassRecord | None, pseudo: list[PseudoLabel]) -> None:
        same_group = self.class_record is not None and record is not None and self.class_record.id == record.id
        self.class_record = record
        # Marks survive a reload of the same group (another change elsewhere in the window).
        self._wrong = self._wrong & {p.id for p in pseudo} if same_group else set()
        ordered = sorted(pseudo, key=lambda p: (-(p.confidence or 0.0), p.id))
        self._reset_rows(ordered)

    def pseudo(self) -> list[PseudoLabel]:
        return self.all_rows()

    def toggle_wrong(self, row: int) -> None:
        item: PseudoLabel | None = self.row_data(row)
        if item is None:
            return
        self._wrong.symmetric_difference_update({item.id})
        self._changed(row)

    def wrong_ids(self) -> list[int]:
        return [p.id for p in self._rows if p.id in self._wrong]

    def right_ids(self) -> list[int]:
        return [p.id for p in self._rows if p.id not in self._wrong]

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        item: PseudoLabel | None = self.row_data(index.row())
        if item is None:
            return None
        if role == TileRole:
            return item
        if role == ImageIdRole:
            return item.image_id
        if role == LabelRole:
            return self.class_record
        if role == StateRole:
            return "wrong" if item.id in self._wrong else ""
        if role == Qt.ItemDataRole.ToolTipRole:
            confidence = f"{item.confidence:.1%}" if item.confidence is not None else "unknown"
            return f"Image {item.image_id}: confidence {confidence}. Click to mark it wrong."
        return None
