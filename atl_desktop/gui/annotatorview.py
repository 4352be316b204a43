"""Several annotators: who labelled what, agreement between two of them (Cohen's kappa and
the confusion between their labels) with their disagreements to review, and the repeat
set that measures each annotator's consistency.

The numbers come from `atl_desktop.active.annotators.summarise`, read on a pool thread from a
read-only connection whenever the store changed and the tab is shown.
"""

from __future__ import annotations

import secrets

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.active.annotators import AnnotatorSummary, repeat_candidates, summarise
from atl_desktop.gui.background import Background
from atl_desktop.gui.repeatcheck import RepeatCheckDialog
from atl_desktop.gui.workspace import Workspace
from atl_desktop.store import Project, ProjectError

# Landis & Koch (1977): the usual words for kappa (below 0: poor).
KAPPA_WORDS = ((0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial"))
SINGLE = ("Only one annotator has labelled images so far. When a second person labels some of the "
          "same images (choose Labelling ▸ Who is labelling), their agreement shows here.")


def kappa_words(kappa: float) -> str:
    if kappa != kappa:
        return "undefined"
    if kappa < 0:
        return "poor"
    return next((word for limit, word in KAPPA_WORDS if kappa <= limit), "almost perfect")


def read_summary(path) -> AnnotatorSummary:
    with Project.open(path, readonly=True) as project:
        return summarise(project)


class AnnotatorView(QWidget):
    send_to_query = Signal(list)  # image ids to label again
    show_in_pool = Signal(str)  # an annotator, to filter the pool browser by

    def __init__(self, workspace: Workspace, parent=None):
        super().__init__(parent)
        self.ws = workspace
        self.summary: AnnotatorSummary | None = None
        self._background = Background(self)
        self._stale = True
        self._request = 0
        self._build()
        workspace.changed.connect(self._on_store_changed)

    def _build(self) -> None:
        self.people = QTableWidget(0, 5)
        self.people.setHorizontalHeaderLabels(("Annotator", "Current labels", "Labelled in all",
                                               "Shown again", "Consistency"))
        self.people.verticalHeader().hide()
        self.people.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.people.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.people.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.people.horizontalHeader().setStretchLastSection(True)
        self.people.doubleClicked.connect(lambda _: self._pool_for_selected())
        self.pool_button = QPushButton("Show their labels in the pool")
        self.pool_button.setToolTip("Filter the pool browser by the selected annotator, to review their labels")
        self.pool_button.clicked.connect(self._pool_for_selected)
        people_box = QGroupBox("Who labelled what")
        people_layout = QVBoxLayout(people_box)
        people_layout.addWidget(self.people, 1)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.pool_button)
        people_layout.addLayout(row)

        self.first_box, self.second_box = QComboBox(), QComboBox()
        for box in (self.first_box, self.second_box):
            box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
            box.setMinimumContentsLength(16)
            box.activated.connect(lambda _=None: self.show_pair())
        self.pair_note = QLabel(SINGLE)
        self.pair_note.setWordWrap(True)
        self.confusion = QTableWidget(0, 0)
        self.confusion.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.confusion.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.review_button = QPushButton("Review the disagreements")
        self.review_button.setToolTip("Open the images the two labelled differently in the query view")
        self.review_button.clicked.connect(self._review)
        pair_box = QGroupBox("Agreement between two annotators (images both labelled)")
        pair_layout = QVBoxLayout(pair_box)
        choose = QHBoxLayout()
        for widget in (self.first_box, QLabel("and"), self.second_box):
            choose.addWidget(widget)
        choose.addStretch(1)
        choose.addWidget(self.review_button)
        pair_layout.addLayout(choose)
        pair_layout.addWidget(self.pair_note)
        pair_layout.addWidget(self.confusion, 1)
        pair_layout.addStretch(0)

        self.repeat_count = QSpinBox()
        self.repeat_count.setRange(1, 200)
        self.repeat_count.setValue(10)
        self.repeat_button = QPushButton("Start a consistency check")
        self.repeat_button.clicked.connect(self.start_repeat_check)
        self.repeat_note = QLabel()
        self.repeat_note.setWordWrap(True)
        repeat_box = QGroupBox("Consistency (repeat set)")
        repeat_layout = QVBoxLayout(repeat_box)
        repeat_layout.addWidget(self.repeat_note)
        start = QHBoxLayout()
        start.addWidget(QLabel("Images to show again:"))
        start.addWidget(self.repeat_count)
        start.addWidget(self.repeat_button)
        start.addStretch(1)
        repeat_layout.addLayout(start)
        repeat_layout.addStretch(1)

        top = QHBoxLayout()
        top.addWidget(people_box, 3)
        top.addWidget(repeat_box, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(top, 2)
        layout.addWidget(pair_box, 3)
        self._update_repeat_note()

    # ---- reading -----------------------------------------------------------------------

    def _on_store_changed(self) -> None:
        self._stale = True
        if self.isVisible():
            QTimer.singleShot(0, self, self.refresh)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._stale:
            self.refresh()

    def refresh(self) -> None:
        """Read the label history again, off the GUI thread."""
        self._stale = False
        self._request += 1
        request = self._request
        try:
            path = self.ws.project.path
        except ProjectError:
            return
        self._background.call(lambda: read_summary(path), lambda result: self._show(request, result))

    def _show(self, request: int, result) -> None:
        if request != self._request:
            return  # a newer reading is on its way
        if isinstance(result, Exception):
            self.pair_note.setText(f"Cannot read the labels: {result}")
            return
        self.summary = result
        self._show_people(result)
        names = sorted(result.given)
        # The pair with most images in common, else the first two annotators.
        default = ((result.agreements[0].first, result.agreements[0].second) if result.agreements
                   else tuple(names[:2]))
        for box, fallback in ((self.first_box, 0), (self.second_box, 1)):
            chosen = box.currentText()
            box.clear()
            box.addItems(names)
            if chosen in names:
                box.setCurrentText(chosen)
            elif fallback < len(default):
                box.setCurrentText(default[fallback])
        self.show_pair()
        self._update_repeat_note()

    def _show_people(self, summary: AnnotatorSummary) -> None:
        names = sorted(set(summary.given) | set(summary.labelled))
        self.people.setRowCount(len(names))
        for row, name in enumerate(names):
            check = summary.consistency.get(name)
            values = (name, summary.labelled.get(name, 0), summary.given.get(name, 0),
                      check.n if check else 0, f"{check.same} of {check.n} ({check.share:.0%})" if check else "—")
            for column, value in enumerate(values):
                item = QTableWidgetItem(f"{value:,}" if isinstance(value, int) else str(value))
                if column:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.people.setItem(row, column, item)
        self.pool_button.setEnabled(bool(names))

    # ---- two annotators --------------------------------------------------------------------

    def show_pair(self) -> None:
        first, second = self.first_box.currentText(), self.second_box.currentText()
        pair = self.summary.agreement(first, second) if self.summary and first != second else None
        self.review_button.setEnabled(bool(pair and pair.disagreements))
        self.review_button.setText(f"Review the {len(pair.disagreements)} disagreements" if pair and
                                   pair.disagreements else "Review the disagreements")
        if self.summary is None or len(self.summary.given) < 2:
            self.pair_note.setText(SINGLE)
            self._fill_confusion(None)
            return
        if first == second:
            self.pair_note.setText("Choose two different annotators.")
        elif pair is None:
            self.pair_note.setText(f"{first} and {second} have no image in common, so their agreement "
                                   "cannot be measured. It needs images that both labelled.")
        else:
            self.pair_note.setText(
                f"{pair.n:,} images labelled by both. They agree on {pair.n - len(pair.disagreements):,} "
                f"({pair.observed:.1%}); Cohen's κ = {pair.kappa:.2f}, {kappa_words(pair.kappa)} agreement "
                "beyond chance (Landis & Koch 1977). Rows: "
                f"{first}'s label; columns: {second}'s, numbered as the rows.")
        self._fill_confusion(pair)

    def _fill_confusion(self, pair) -> None:
        table = self.confusion
        table.setVisible(pair is not None)
        if pair is None:
            table.setRowCount(0)
            table.setColumnCount(0)
            return
        book = self.ws.book()
        records = [book.by_id(c) for c in pair.class_ids]
        names = [r.name if r else f"class {c}" for r, c in zip(records, pair.class_ids, strict=True)]
        # Columns are numbered by the class's key (or its row), so long names fit.
        marks = [r.key if r and r.key else str(k + 1) for k, r in enumerate(records)]
        table.setRowCount(len(names))
        table.setColumnCount(len(names))
        table.setHorizontalHeaderLabels(marks)
        table.setVerticalHeaderLabels([f"{m}  {n}" for m, n in zip(marks, names, strict=True)])
        for column, name in enumerate(names):
            table.horizontalHeaderItem(column).setToolTip(name)
        for i, row in enumerate(pair.confusion):
            for j, value in enumerate(row):
                item = QTableWidgetItem(str(value))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                if value:
                    colour = QColor("#009E73" if i == j else "#D55E00")
                    colour.setAlphaF(min(1.0, 0.2 + 0.8 * value / max(1, max(max(r) for r in pair.confusion))))
                    item.setBackground(QBrush(colour))
                item.setToolTip(f"{value} images: {pair.first} said {names[i]}, {pair.second} said {names[j]}")
                table.setItem(i, j, item)

    def _review(self) -> None:
        pair = self.summary.agreement(self.first_box.currentText(), self.second_box.currentText()) \
            if self.summary else None
        if pair is not None and pair.disagreements:
            self.send_to_query.emit(list(pair.disagreements))

    def _pool_for_selected(self) -> None:
        rows = self.people.selectionModel().selectedRows()
        row = rows[0].row() if rows else 0
        item = self.people.item(row, 0)
        if item is not None:
            self.show_in_pool.emit(item.text())

    # ---- the repeat set ------------------------------------------------------------------------

    def _update_repeat_note(self) -> None:
        name = self.ws.annotator or "unnamed"
        check = self.summary.consistency.get(f"human:{self.ws.annotator}" if self.ws.annotator else "human") \
            if self.summary else None
        done = (f" So far: the same label on {check.same} of {check.n} images shown again ({check.share:.0%})."
                if check else "")
        self.repeat_note.setText(
            f"Show {name} a few images they labelled before, without their earlier answer or the model's "
            "suggestion, to measure how consistently they label. The new answer becomes the label." + done)

    def start_repeat_check(self) -> RepeatCheckDialog | None:
        rng = np.random.default_rng(secrets.randbits(64))  # a fresh draw each time: no seed to keep
        ids = repeat_candidates(self.ws.project, self.ws.annotator, self.repeat_count.value(), rng)
        if not ids:
            self.ws.report(f"{self.ws.annotator or 'This annotator'} has no labels of their own to check yet.")
            return None
        self.repeat_dialog = RepeatCheckDialog(self.ws, ids, self)
        self.repeat_dialog.setModal(True)
        self.repeat_dialog.show()
        return self.repeat_dialog

    def shutdown(self) -> None:
        self._background.wait()
