"""Pseudo-label review: the model's confident guesses, grouped by predicted class.

Choose a group on the left; its images are shown most confident first. Click
(or press Space on) the wrong ones to mark them, then accept the group: the
rest become labels and the marked ones are rejected, in one undoable step
committed at once. A class key relabels the current image by hand instead.
"""

from __future__ import annotations

from collections import defaultdict

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QKeyEvent, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.gui.models import PseudoGroupModel, TileRole, class_colour
from atl_desktop.gui.tiles import TileDelegate, TileGrid
from atl_desktop.gui.undo import DecidePseudo, RelabelPseudo
from atl_desktop.gui.workspace import RefreshWhenShown, Workspace
from atl_desktop.store import ProjectError, PseudoLabel

EMPTY_TEXT = ("No pseudo-labels waiting for review.\nAfter training, press Propose pseudo-labels "
              "and the model suggests labels for the images it is most sure of.")
GROUP_HELP = ("Click (or press Space on) the wrong ones, then accept the group. "
              "A class key relabels the current image; Enter shows it at full size.")


def _swatch(colour: QColor) -> QPixmap:
    pixmap = QPixmap(14, 14)
    pixmap.fill(colour)
    return pixmap


class ReviewView(QWidget):
    propose_requested = Signal()
    open_image = Signal(int)
    pending_changed = Signal(int)  # how many pseudo-labels wait for review

    def __init__(self, workspace: Workspace, parent=None):
        super().__init__(parent)
        self.ws = workspace
        self.model = PseudoGroupModel(self)
        self._groups: dict[int, list[PseudoLabel]] = {}
        self._build()
        # While hidden, only the tab's count is kept up to date (refresh emits it too).
        workspace.changed.connect(RefreshWhenShown(self, self.refresh, self._count_pending).request)
        workspace.thumbs.ready.connect(lambda _: self.grid.viewport().update())

    def _build(self) -> None:
        self.propose_button = QPushButton("Propose pseudo-labels")
        self.propose_button.setToolTip("Let the current model label the images it is most sure of")
        self.propose_button.clicked.connect(self.propose_requested)
        self.groups = QListWidget()
        self.groups.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.groups.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.groups.setSpacing(2)
        self.groups.currentRowChanged.connect(self._show_group)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(QLabel("Predicted class"))
        left_layout.addWidget(self.groups, 1)
        left_layout.addWidget(self.propose_button)

        self.title = QLabel()
        self.title.setStyleSheet("font-weight: bold; font-size: 12pt;")
        help_label = QLabel(GROUP_HELP)
        help_label.setWordWrap(True)
        help_label.setStyleSheet("color: palette(placeholder-text);")
        self.accept_button = QPushButton()
        self.accept_button.clicked.connect(self.accept_group)
        self.reject_button = QPushButton()
        self.reject_button.clicked.connect(self.reject_marked)
        buttons = QHBoxLayout()
        buttons.addWidget(self.accept_button)
        buttons.addWidget(self.reject_button)
        buttons.addStretch(1)

        self.grid = TileGrid()
        self.grid.setModel(self.model)
        self.grid.setItemDelegate(TileDelegate(self.ws, self._describe, self.grid))
        self.grid.key_handler = self._on_key
        self.grid.clicked.connect(lambda index: self.toggle_row(index.row()))
        self.grid.doubleClicked.connect(lambda index: self.open_image.emit(index.data(TileRole).image_id))

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.title)
        right_layout.addWidget(help_label)
        right_layout.addLayout(buttons)
        right_layout.addWidget(self.grid, 1)
        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([250, 800])

        self.empty = QLabel(EMPTY_TEXT)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet("font-size: 13pt; color: palette(placeholder-text);")
        empty_page = QWidget()
        empty_layout = QVBoxLayout(empty_page)
        empty_layout.addStretch(1)
        empty_layout.addWidget(self.empty)
        propose_again = QPushButton("Propose pseudo-labels")
        propose_again.clicked.connect(self.propose_requested)
        empty_layout.addWidget(propose_again, 0, Qt.AlignmentFlag.AlignHCenter)
        empty_layout.addStretch(1)
        self.pages = QStackedWidget()
        self.pages.addWidget(empty_page)
        self.pages.addWidget(splitter)
        self._splitter = splitter
        self._propose_buttons = (self.propose_button, propose_again)
        QVBoxLayout(self).addWidget(self.pages)

    def set_busy(self, busy: bool) -> None:
        for button in self._propose_buttons:
            button.setEnabled(not busy)

    # ---- groups --------------------------------------------------------------

    def _count_pending(self) -> None:
        try:
            self.pending_changed.emit(self.ws.project.pending_pseudo_count())
        except ProjectError:
            pass  # the project is closing

    def refresh(self) -> None:
        """Re-read the pending pseudo-labels, keeping the chosen group and the marks."""
        try:
            pending = self.ws.project.pseudo_labels()
            book = self.ws.book()
        except ProjectError:
            return  # the project is closing
        groups: dict[int, list[PseudoLabel]] = defaultdict(list)
        for item in pending:
            groups[item.class_id].append(item)
        order = [c.id for c in book.classes if c.id in groups]
        order += sorted(set(groups) - set(order))
        self._groups = {class_id: groups[class_id] for class_id in order}
        current = self.current_class_id()

        self.groups.blockSignals(True)
        self.groups.clear()
        for class_id, items in self._groups.items():
            record = book.by_id(class_id)
            name = record.name if record is not None else f"(deleted class {class_id})"
            confidences = [p.confidence for p in items if p.confidence is not None]
            mean = f", mean {sum(confidences) / len(confidences):.0%} sure" if confidences else ""
            entry = QListWidgetItem(_swatch(class_colour(record)), f"{name}\n{len(items)} proposed{mean}")
            entry.setToolTip(f"{name}: {len(items)} proposed{mean}")
            entry.setData(Qt.ItemDataRole.UserRole, class_id)
            self.groups.addItem(entry)
        self.groups.blockSignals(False)
        self.pages.setCurrentIndex(1 if self._groups else 0)
        order = list(self._groups)
        row = order.index(current) if current in order else 0
        self.groups.setCurrentRow(row if order else -1)
        self._show_group(row if order else -1)
        self.pending_changed.emit(len(pending))

    def current_class_id(self) -> int | None:
        return self.model.class_record.id if self.model.class_record is not None else None

    def select_group(self, class_id: int) -> None:
        order = list(self._groups)
        if class_id in order:
            self.groups.setCurrentRow(order.index(class_id))

    def _show_group(self, row: int) -> None:
        order = list(self._groups)
        if not 0 <= row < len(order):
            self.model.set_group(None, [])
            self._update_header()
            return
        class_id = order[row]
        record = self.ws.book().by_id(class_id)
        self.model.set_group(record, self._groups[class_id])
        self._update_header()
        if self.grid.current_row() < 0:
            self.grid.select_row(0)

    def _update_header(self) -> None:
        record = self.model.class_record
        items = self.model.pseudo()
        wrong = len(self.model.wrong_ids())
        name = record.name if record is not None else ""
        self.title.setText(f"{name}: {len(items)} proposed, most confident first" if items else "")
        self.accept_button.setText(f"Accept {len(items) - wrong} as {name}" + (
            f", reject {wrong}" if wrong else ""))
        self.accept_button.setEnabled(bool(items))
        self.reject_button.setText(f"Reject {wrong} marked" if wrong else "Reject all")
        self.reject_button.setEnabled(bool(items))

    def _describe(self, index) -> tuple[str, str, str]:
        item: PseudoLabel = index.data(TileRole)
        confidence = f"{item.confidence:.1%} sure" if item.confidence is not None else "confidence unknown"
        detail = f"entropy {item.entropy:.3f} nats" if item.entropy is not None else ""
        return confidence, detail, f"image {item.image_id}"

    # ---- decisions -----------------------------------------------------------

    def toggle_row(self, row: int) -> None:
        self.model.toggle_wrong(row)
        self._update_header()

    def toggle_current(self) -> None:
        self.toggle_row(self.grid.current_row())

    def accept_group(self) -> None:
        accept, reject = self.model.right_ids(), self.model.wrong_ids()
        if not accept and not reject:
            return
        name = self.model.class_record.name if self.model.class_record else ""
        self.ws.do(DecidePseudo(self.ws.project, accept, reject, self.ws.annotator,
                                f"Accept {len(accept)} pseudo-labels as {name}", report=self.ws.report))

    def reject_marked(self) -> None:
        reject = self.model.wrong_ids() or [p.id for p in self.model.pseudo()]
        if reject:
            self.ws.do(DecidePseudo(self.ws.project, [], reject, self.ws.annotator,
                                    f"Reject {len(reject)} pseudo-labels", report=self.ws.report))

    def relabel_current(self, class_id: int) -> None:
        row = self.grid.current_row()
        item: PseudoLabel | None = self.model.row_data(row)
        if item is None:
            return
        if class_id == item.class_id:  # the key of its own class: confirm just this one
            self.ws.do(DecidePseudo(self.ws.project, [item.id], [], self.ws.annotator,
                                    "Accept pseudo-label", report=self.ws.report))
            return
        kwargs = {"annotator": self.ws.annotator, "round": item.round_id,
                  "suggestion": item.class_id, "suggestion_confidence": item.confidence}
        self.ws.do(RelabelPseudo(self.ws.project, item.id, item.image_id, class_id, kwargs,
                                 f"Relabel image {item.image_id}", report=self.ws.report))

    def _on_key(self, event: QKeyEvent) -> bool:
        key = event.key()
        if key == Qt.Key.Key_Space:
            self.toggle_current()
            return True
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
                self.accept_group()
            else:
                item = self.model.row_data(self.grid.current_row())
                if item is not None:
                    self.open_image.emit(item.image_id)
            return True
        if key == Qt.Key.Key_Backspace:
            self.ws.stack.undo()
            return True
        record = self.ws.book().by_key(event.text())
        if record is not None:
            self.relabel_current(record.id)
            return True
        return False
