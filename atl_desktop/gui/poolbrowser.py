"""The pool browser: every image of the project in a grid, filtered and sorted.

Filter by domain, split, label and who labelled; sort by the order added, the
model's uncertainty or its confidence. Select images (Ctrl/Shift-click, Ctrl+A)
to label or relabel them (a class key or the Label button; one undoable step),
clear their labels, or send them to the query view to label one by one.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent, QPainter, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QSizePolicy,
    QStackedWidget,
    QStyle,
    QStyledItemDelegate,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.gui.background import Background
from atl_desktop.gui.models import ImageIdRole, LabelRole, TileRole, class_colour
from atl_desktop.gui.poolmodel import (
    LABEL_ANY,
    LABEL_NONE,
    LABEL_SOME,
    PoolModel,
    PoolQuery,
    annotators,
    scored_order,
)
from atl_desktop.gui.thumbnails import ThumbnailCache
from atl_desktop.gui.tiles import add_similar_menu
from atl_desktop.gui.undo import SetLabel
from atl_desktop.gui.workspace import Workspace
from atl_desktop.store import ProjectError

SORT_CHOICES = (("Order added", "added"), ("Most uncertain first", "score"),
                ("Least confident first", "confidence"))
DEFAULT_SIDE = 96


class PoolTileDelegate(QStyledItemDelegate):
    """A small tile: the thumbnail framed in its label's colour, the id and label under it."""

    def __init__(self, thumbs: ThumbnailCache, parent=None):
        super().__init__(parent)
        self.thumbs = thumbs

    def sizeHint(self, option, index) -> QSize:
        side = self.thumbs.side
        return QSize(side + 10, side + 10 + option.fontMetrics.lineSpacing())

    def paint(self, painter: QPainter, option, index) -> None:
        row = index.data(TileRole)
        label = index.data(LabelRole)
        side = self.thumbs.side
        painter.save()
        rect = option.rect.adjusted(2, 2, -2, -2)
        if option.state & QStyle.StateFlag.State_Selected:
            painter.fillRect(rect, option.palette.highlight())
        box = QRect(rect.left() + 3, rect.top() + 3, side, side)
        model = index.model()
        image = self.thumbs.get(row.image_id, lambda: model.path_of(row)) if row is not None else None
        if image is None or image.isNull():  # still decoding (or unreadable)
            painter.fillRect(box, option.palette.window().color().darker(112))
        else:
            size = image.size().scaled(box.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(0, 0, size.width(), size.height())
            target.moveCenter(box.center())
            painter.drawImage(target, image)
        if label is not None:
            painter.setPen(QPen(class_colour(label), 4))
            painter.drawRect(box.adjusted(2, 2, -2, -2))
        text_rect = QRect(rect.left(), box.bottom() + 2, rect.width(), option.fontMetrics.lineSpacing())
        text = f"{label.name}" if label is not None else f"#{index.data(ImageIdRole)}"
        if row is not None and row.score is not None:
            text += f" · {row.score:.2f}"
        painter.setPen(option.palette.highlightedText().color()
                       if option.state & QStyle.StateFlag.State_Selected else option.palette.text().color())
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignCenter,
                         option.fontMetrics.elidedText(text, Qt.TextElideMode.ElideRight, rect.width()))
        painter.restore()


class PoolGrid(QListView):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(200)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.key_handler = None

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if self.key_handler is not None and self.key_handler(event):
            event.accept()
            return
        super().keyPressEvent(event)


class PoolBrowser(QWidget):
    send_to_query = Signal(list)  # image ids
    similar_requested = Signal(int)  # image id: show more images like it
    open_image = Signal(int)
    score_requested = Signal()  # sorting by score needs the pool scored with the current checkpoint

    def __init__(self, workspace: Workspace, thumbnail_side: int = DEFAULT_SIDE, parent=None):
        super().__init__(parent)
        self.ws = workspace
        self.thumbs = ThumbnailCache(side=thumbnail_side, capacity=3000, parent=self)
        self.model = PoolModel(workspace.project, self)
        self._background = Background(self)
        self._stale = False
        self._request = 0  # the newest ordering asked for; older answers are dropped
        self._build()
        self.thumbs.ready.connect(lambda _: self.grid.viewport().update())
        workspace.changed.connect(self._on_store_changed)
        self.refresh_filters()
        self.apply_filters()

    # ---- layout ------------------------------------------------------------------

    def _build(self) -> None:
        self.domain_box = _combo([("Any domain", None), ("Target", "target"), ("Source", "source")])
        self.split_box = _combo([("Any split", None), ("Pool", "pool"), ("Validation", "val"),
                                 ("Test", "test")])
        self.label_box = _combo(elide=12)
        self.who_box = _combo(elide=12)
        self.sort_box = _combo(list(SORT_CHOICES))
        self.sort_box.setToolTip("Uncertainty and confidence come from the last scoring of the "
                                 "current checkpoint (Query next batch scores the pool)")
        self.count_label = QLabel()
        # Its text grows ("… not scored yet"); it must never widen the window.
        self.count_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.score_button = QPushButton("Score the pool now")
        self.score_button.setToolTip("Run the current checkpoint over the unlabelled pool (a job; "
                                     "Query next batch does it too)")
        self.score_button.clicked.connect(self.score_requested)
        self.score_button.hide()
        bar = QHBoxLayout()
        for widget in (self.domain_box, self.split_box, self.label_box, self.who_box, self.sort_box):
            widget.activated.connect(lambda _=None: self.apply_filters())
            bar.addWidget(widget)
        bar.addWidget(self.count_label, 1)
        bar.addWidget(self.score_button)

        self.grid = PoolGrid()
        self.grid.setModel(self.model)
        # Decodes queued for tiles scrolled past would hold up the ones now in view.
        self.grid.verticalScrollBar().valueChanged.connect(lambda _: self.thumbs.drop_queued())
        self.grid.setItemDelegate(PoolTileDelegate(self.thumbs, self.grid))
        self.grid.key_handler = self._on_key
        self.grid.doubleClicked.connect(lambda index: self.open_image.emit(index.data(ImageIdRole)))
        add_similar_menu(self.grid, lambda index: index.data(ImageIdRole), self.similar_requested)
        self.grid.selectionModel().selectionChanged.connect(lambda *_: self._update_buttons())

        self.class_box = _combo(elide=14)
        self.label_button = QPushButton("Label")
        self.label_button.clicked.connect(lambda: self.label_selected(self.class_box.currentData()))
        self.clear_button = QPushButton("Clear their labels")
        self.clear_button.clicked.connect(lambda: self.label_selected(None))
        self.query_button = QPushButton("Send to query view")
        self.query_button.setToolTip("Label the selected images one by one in the query view")
        self.query_button.clicked.connect(lambda: self.send_to_query.emit(self.selected_ids()))
        actions = QHBoxLayout()
        for widget in (QLabel("Label the selected images as"), self.class_box, self.label_button,
                       self.clear_button, self.query_button):
            actions.addWidget(widget)
        actions.addStretch(1)

        self.empty = QLabel()
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet("font-size: 13pt; color: palette(placeholder-text);")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.grid)
        self.stack.addWidget(self.empty)

        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.stack, 1)
        layout.addLayout(actions)
        self._update_buttons()

    def refresh_filters(self) -> None:
        """Class and annotator choices, from the store."""
        book = self.ws.book()
        self.model.book = book
        label = self.label_box.currentData()
        self.label_box.clear()
        for text, value in [("Any label", LABEL_ANY), ("Unlabelled", LABEL_NONE), ("Labelled", LABEL_SOME),
                            *[(f"Labelled {c.name}", c.id) for c in book.classes]]:
            self.label_box.addItem(text, value)
        _select(self.label_box, label)
        who = self.who_box.currentData()
        self.who_box.clear()
        self.who_box.addItem("Anyone", None)
        for name in annotators(self.model._db):
            self.who_box.addItem(f"By {name}", name)
        _select(self.who_box, who)
        current = self.class_box.currentData()
        self.class_box.clear()
        for record in book.classes:
            self.class_box.addItem(f"{record.name} ({record.key})" if record.key else record.name, record.id)
        _select(self.class_box, current)

    def show_annotator(self, who: str) -> None:
        """Every image whose current label `who` gave ("human:alice"), to review them."""
        self.refresh_filters()
        _select(self.who_box, who)
        self.apply_filters()

    def query(self) -> PoolQuery:
        return PoolQuery(self.domain_box.currentData(), self.split_box.currentData(),
                         _data_or(self.label_box, LABEL_ANY), self.who_box.currentData(),
                         self.sort_box.currentData())

    # ---- showing ---------------------------------------------------------------

    def apply_filters(self) -> None:
        query = self.query()
        self._request += 1
        self.score_button.hide()
        if query.sort == "added":
            self.model.set_query(query)
            self._update_count()
            return
        self.count_label.setText("Ordering by the model's scores…")
        request = self._request
        path = self.ws.project.path
        self._background.call(lambda: scored_order(path, query),
                              lambda result: self._ordered(request, query, result))

    def _ordered(self, request: int, query: PoolQuery, result) -> None:
        if request != self._request:
            return  # the user changed the filters meanwhile
        if isinstance(result, Exception):
            self.count_label.setText(f"Cannot order by score: {result}")
            return
        self.model.set_query(query, result)
        self._update_count()
        unscored = bool(result[1].size) and bool(np.isnan(result[1][0]))  # NaN first: nothing scored
        self.score_button.setVisible(unscored)
        if unscored:
            self.count_label.setText(self.count_label.text() + " — the current model has not scored them yet")

    def _update_count(self) -> None:
        total = self.model.total()
        self.count_label.setText(f"{total:,} images" if total else "No images match these filters")
        if total:
            self.stack.setCurrentWidget(self.grid)
            return
        anything = self.query() != PoolQuery(sort=self.query().sort)
        self.empty.setText("No image matches these filters. Choose “Any …” in the boxes above to see more."
                           if anything else "The project has no images yet: File ▸ Import images adds some.")
        self.stack.setCurrentWidget(self.empty)

    def set_thumbnail_side(self, side: int) -> None:
        """Preferences ▸ Thumbnail size, applied at once."""
        self.thumbs.resize(side)
        self.grid.doItemsLayout()
        self.grid.viewport().update()

    def _on_store_changed(self) -> None:
        self._stale = True
        if self.isVisible():
            QTimer.singleShot(0, self, self.reload_if_stale)

    def reload_if_stale(self) -> None:
        if self._stale:
            self._stale = False
            try:
                self.refresh_filters()
                self.model.reload()
                self._update_count()
            except ProjectError:
                return

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.reload_if_stale()

    def shutdown(self) -> None:
        self._background.wait()
        self.thumbs.shutdown()
        self.model.close()

    # ---- selection and labelling -------------------------------------------------

    def selected_ids(self) -> list[int]:
        rows = sorted(i.row() for i in self.grid.selectionModel().selectedIndexes())
        return [self.model.row_data(r).image_id for r in rows]

    def _update_buttons(self) -> None:
        n = len(self.grid.selectionModel().selectedIndexes()) if self.grid.selectionModel() else 0
        for button in (self.label_button, self.clear_button, self.query_button):
            button.setEnabled(n > 0)
        self.label_button.setText(f"Label {n} {'image' if n == 1 else 'images'}" if n else "Label")

    def label_selected(self, class_id: int | None) -> bool:
        """Label (or, with None, unlabel) every selected image in one undoable step."""
        ids = self.selected_ids()
        if not ids:
            return False
        record = self.ws.book().by_id(class_id)
        what = f"as {record.name}" if record is not None else "(cleared)"
        self.ws.stack.beginMacro(f"Label {len(ids)} images {what}")
        try:
            for image_id in ids:
                command = SetLabel(self.ws.project, image_id, class_id,
                                   {"annotator": self.ws.annotator}, report=self.ws.report)
                if not self.ws.do(command):
                    break
        finally:
            self.ws.stack.endMacro()
        return True

    def _on_key(self, event: QKeyEvent) -> bool:
        if event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier:
            return False
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            index = self.grid.currentIndex()
            if index.isValid():
                self.open_image.emit(index.data(ImageIdRole))
            return True
        record = self.ws.book().by_key(event.text())
        if record is not None:
            return self.label_selected(record.id)
        if event.key() == Qt.Key.Key_M and self.grid.currentIndex().isValid():
            self.similar_requested.emit(self.grid.currentIndex().data(ImageIdRole))
            return True
        return False


def _combo(items: list[tuple[str, object]] = (), elide: int | None = None) -> QComboBox:
    """A combo box; with `elide`, about that many characters wide whatever its items (long
    class and annotator names), so the bars fit a narrow window."""
    box = QComboBox()
    if elide is not None:
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(elide)
    for text, value in items:
        box.addItem(text, value)
    return box


def _data_or(box: QComboBox, default):
    value = box.currentData()
    return default if value is None else value


def _select(box: QComboBox, value) -> None:
    index = box.findData(value)
    box.setCurrentIndex(max(0, index))
