"""Every checkpoint with its parent, round, method and metrics; roll back to any of them.

Rolling back sets the project's "active_checkpoint" (which `latest_checkpoint()`
honours), as an undoable command; the next training continues from it, and a
new checkpoint becomes the active one again.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.gui.undo import SetActiveCheckpoint
from atl_desktop.gui.workspace import RefreshWhenShown, Workspace
from atl_desktop.store import CheckpointRecord, ProjectError

HEADERS = ("#", "Parent", "Round", "Method", "Metrics", "Made")
METRICS_COLUMN = HEADERS.index("Metrics")


def metrics_text(metrics: dict, test_accuracy: float | None = None) -> str:
    """The few numbers that matter: test and validation accuracy, then the training loss."""
    parts = []
    if test_accuracy is not None:
        parts.append(f"test {test_accuracy:.1%}")
    for key, name in (("val_accuracy", "val"), ("train_loss", "loss")):
        if isinstance(metrics.get(key), int | float):
            value = float(metrics[key])
            parts.append(f"{name} {value:.1%}" if key.endswith("accuracy") else f"{name} {value:.3g}")
    return ", ".join(parts) or "—"


def details_text(record: CheckpointRecord, test_accuracy: float | None) -> str:
    """The tooltip: everything the row leaves out."""
    config = record.config or {}
    lines = [f"Checkpoint #{record.id}: {record.backbone}, {config.get('phase', 'training')} "
             f"with {config.get('method', '?')}",
             f"Parent: {'#' + str(record.parent_id) if record.parent_id else 'none (a new model)'}; "
             f"round: {record.round_id if record.round_id is not None else '—'}"]
    if config:
        lines.append(f"{config.get('epochs', '?')} epochs, batches of {config.get('batch_size', '?')}, "
                     f"lr {config.get('lr', '?')}, {config.get('freeze', 0)} frozen stages")
    if test_accuracy is not None:
        lines.append(f"Test accuracy after its round: {test_accuracy:.1%}")
    numbers = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in sorted(record.metrics.items()) if isinstance(v, int | float))
    if numbers:
        lines.append(numbers)
    return "\n".join(lines)


def round_test_accuracy(rounds) -> dict[int, float]:
    """checkpoint id -> the test accuracy its round recorded."""
    found = {}
    for record in rounds:
        test = record.metrics.get("test") or {}
        accuracy = test.get("accuracy", record.metrics.get("test_accuracy"))
        if record.checkpoint_id is not None and isinstance(accuracy, int | float):
            found[record.checkpoint_id] = float(accuracy)
    return found


class CheckpointList(QWidget):
    def __init__(self, workspace: Workspace, parent=None):
        super().__init__(parent)
        self.ws = workspace
        self.records: list[CheckpointRecord] = []
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(HEADERS)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(METRICS_COLUMN, QHeaderView.ResizeMode.Stretch)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.setWordWrap(False)
        self.rollback_button = QPushButton("Roll back to the selected")
        self.rollback_button.setToolTip("Roll back: scoring and the next training start from the "
                                        "selected checkpoint (undoable)")
        self.rollback_button.clicked.connect(self.rollback_selected)
        self.active_label = QLabel()
        self.active_label.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.active_label, 1)
        buttons.addWidget(self.rollback_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        workspace.changed.connect(RefreshWhenShown(self, self.refresh).request)
        self.refresh()

    def refresh(self) -> None:
        try:
            self.records = self.ws.project.checkpoints()
            active = self.ws.project.latest_checkpoint()
            tested = round_test_accuracy(self.ws.project.rounds())
        except ProjectError:
            return
        active_id = active.id if active is not None else None
        self.table.setRowCount(len(self.records))
        bold = QFont()
        bold.setBold(True)
        for row, record in enumerate(reversed(self.records)):  # newest first
            config = record.config or {}
            accuracy = tested.get(record.id)
            values = (f"{record.id}{' ✓' if record.id == active_id else ''}",
                      "—" if record.parent_id is None else str(record.parent_id),
                      "—" if record.round_id is None else str(record.round_id),
                      str(config.get("method", "—")), metrics_text(record.metrics, accuracy),
                      time.strftime("%d %b %H:%M", time.localtime(record.created)))
            tip = details_text(record, accuracy)
            for column, text in enumerate(values):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, record.id)
                item.setToolTip(tip)
                if record.id == active_id:
                    item.setFont(bold)
                self.table.setItem(row, column, item)
        self.active_label.setText(f"Current: #{active_id} (✓). Select another and roll back to use it."
                                  if active_id is not None else "No checkpoint yet: train to make one.")
        self.rollback_button.setEnabled(bool(self.records))

    def selected_id(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        return self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole) if rows else None

    def rollback_to(self, checkpoint_id: int) -> bool:
        return self.ws.do(SetActiveCheckpoint(self.ws.project, checkpoint_id, report=self.ws.report))

    def rollback_selected(self) -> None:
        checkpoint_id = self.selected_id()
        if checkpoint_id is None:
            self.ws.report("Select a checkpoint in the list first.")
        else:
            self.rollback_to(checkpoint_id)
