"""Small form pieces the dialogs share: a path box with its buttons, and a choice box."""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLineEdit, QPushButton, QWidget


def path_row(edit: QLineEdit, *buttons: QPushButton) -> QWidget:
    """The path box stretching, its Browse buttons beside it."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit, 1)
    for button in buttons:
        layout.addWidget(button)
    return row


def choice_box(items: Iterable, tip: str | None = None) -> QComboBox:
    """A combo box of (text, value) pairs, or of plain names (their own values)."""
    box = QComboBox()
    for item in items:
        text, value = item if isinstance(item, tuple) else (item, item)
        box.addItem(text, value)
    if tip:
        box.setToolTip(tip)
    return box
