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
from atl_desktop.gui.workspace import Workspace
from atl_desktop.store import CheckpointRecord, ProjectError

HEADERS = ("#", "Parent", "Round", "Method", "Phase", "Backbone", "Metrics", "Made")
METRIC_NAMES = {"val_accuracy": "val acc", "accuracy": "train acc", "train_loss": "loss",
                "test_accuracy": "test acc"}


def metrics_text(metrics: dict) -> str:
    parts = [f"{short} {float(metrics[key]):.3g}" for key, short in METRIC_NAMES.items()
             if isinstance(metrics.get(key), int | float)]
    return ", ".join(parts) or "—"


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
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.rollback_button = QPushButton("Use this checkpoint")
        self.rollback_button.setToolTip("Roll back: scoring and the next training start from the "
                                        "selected checkpoint (undoable)")
        self.rollback_button.clicked.connect(self.rollback_selected)
        self.active_label = QLabel()
        buttons = QHBoxLayout()
        buttons.addWidget(self.active_label, 1)
        buttons.addWidget(self.rollback_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        workspace.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        try:
            self.records = self.ws.project.checkpoints()
            active = self.ws.project.latest_checkpoint()
        except ProjectError:
            return
        active_id = active.id if active is not None else None
        self.table.setRowCount(len(self.records))
        bold = QFont()
        bold.setBold(True)
        for row, record in enumerate(reversed(self.records)):  # newest first
            config = record.config or {}
            values = (f"{record.id}{' ✓' if record.id == active_id else ''}",
                      "—" if record.parent_id is None else str(record.parent_id),
                      "—" if record.round_id is None else str(record.round_id),
                      str(config.get("method", "—")), str(config.get("phase", "—")), record.backbone,
                      metrics_text(record.metrics), time.strftime("%d %b %H:%M", time.localtime(record.created)))
            for column, text in enumerate(values):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, record.id)
                if record.id == active_id:
                    item.setFont(bold)
                self.table.setItem(row, column, item)
        self.active_label.setText(f"Current: #{active_id}" if active_id is not None else
                                  "No checkpoint yet: train to make one.")
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
