"""The project at a glance: classes (colour, key, count) with their edits, label counts,
pending pseudo-labels, the current round and checkpoint.

Each class edit is an undoable command. The button handlers ask for input in
a dialog and then call the methods below, which tests call directly.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHeaderView,
    QInputDialog,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.demo import is_demo_copy
from atl_desktop.gui.models import ClassTableModel
from atl_desktop.gui.undo import AddClass, DeleteClass, MergeClasses, RenameClass, UpdateClass
from atl_desktop.gui.workspace import Workspace
from atl_desktop.store import ClassRecord, ProjectError
from atl_desktop.store.keys import ENCODER_SETTING, describe_encoder

REFRESH_DELAY_MS = 60
RESERVED_KEYS = {"x": "X marks an image as unsure", " ": "Space accepts the suggestion",
                 "m": "M shows more images like this one"}


class ProjectPanel(QWidget):
    new_project_requested = Signal()

    def __init__(self, workspace: Workspace, parent=None):
        super().__init__(parent)
        self.ws = workspace
        self.model = ClassTableModel(self)
        self._build()
        # Counting every label is the slowest part of a refresh; after a label key
        # press it waits until the next image is shown (and bursts share one count).
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_DELAY_MS)
        self._refresh_timer.timeout.connect(self.refresh)
        workspace.changed.connect(self.schedule_refresh)

    # ---- layout --------------------------------------------------------------

    def _build(self) -> None:
        self.title = QLabel(self.ws.project.path.name)
        self.title.setStyleSheet("font-weight: bold; font-size: 13pt;")
        self.title.setToolTip(str(self.ws.project.path))

        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.setShowGrid(False)
        # Long names ("cancer_associated_stroma") keep both ends; the tooltip has the whole name.
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.table.doubleClicked.connect(lambda _: self.ask_rename())

        buttons = QGridLayout()
        for i, (text, slot, tip) in enumerate((
            ("Add…", self.ask_add, "Add a class"),
            ("Rename…", self.ask_rename, "Rename the selected class"),
            ("Colour…", self.ask_colour, "Change the selected class's colour"),
            ("Key…", self.ask_key, "Change the selected class's shortcut key"),
            ("Merge…", self.ask_merge, "Relabel the selected class's images as another class"),
            ("Delete", self.delete_selected, "Delete the selected class; its images become unlabelled"),
        )):
            button = QPushButton(text)
            button.setToolTip(tip + " (undoable)")
            button.clicked.connect(slot)
            buttons.addWidget(button, i // 3, i % 3)
        classes = QGroupBox("Classes")
        class_layout = QVBoxLayout(classes)
        class_layout.addWidget(self.table, 1)
        class_layout.addLayout(buttons)

        self.values: dict[str, QLabel] = {}
        progress = QGroupBox("Progress")
        form = QFormLayout(progress)
        for name in ("Images", "Labelled", "Unlabelled", "By who", "Pseudo-labels", "Round",
                     "Checkpoint", "Encoder"):
            value = QLabel()
            value.setWordWrap(True)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.values[name] = value
            form.addRow(name, value)

        # On a demo: where your own project starts (the link asks the main window to make one).
        self.demo_note = QLabel('This is a demo project. To label your own images, '
                                '<a href="new">start your own project</a> (File ▸ New project…).')
        self.demo_note.setWordWrap(True)
        self.demo_note.setTextFormat(Qt.TextFormat.RichText)
        self.demo_note.setStyleSheet("background: palette(alternate-base); padding: 4px;")
        self.demo_note.linkActivated.connect(lambda _: self.new_project_requested.emit())
        self.demo_note.setVisible(is_demo_copy(self.ws.project.path))

        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.demo_note)
        layout.addWidget(classes, 1)
        layout.addWidget(progress)

    # ---- state ---------------------------------------------------------------

    def schedule_refresh(self) -> None:
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def refresh(self) -> None:
        self._refresh_timer.stop()
        project = self.ws.project
        try:
            counts = project.counts()
            selected = self.selected_class()
            self.model.reload(project.classes(), counts["by_class"])
            rounds = project.rounds()
            checkpoint = project.latest_checkpoint()
            encoder = project.get_setting(ENCODER_SETTING)
        except ProjectError:
            return  # the project is closing
        if selected is not None:
            self.select_class(selected.id)
        total = counts["total"]
        self.values["Images"].setText(_images_text(counts["images"], total))
        self.values["Labelled"].setText(f"{counts['labelled']} of {total}")
        self.values["Unlabelled"].setText(str(counts["unlabelled"]))
        who = sorted(counts["by_who"].items(), key=lambda kv: -kv[1])
        self.values["By who"].setText(", ".join(f"{k}: {v}" for k, v in who) or "nobody yet")
        self.values["Pseudo-labels"].setText(f"{counts['pending_pseudo']} waiting for review")
        if rounds:
            last = rounds[-1]
            state = "finished" if last.finished else "in progress"
            self.values["Round"].setText(f"{last.id} ({last.strategy}, {state})")
        else:
            self.values["Round"].setText("none yet")
        self.values["Checkpoint"].setText(_checkpoint_text(checkpoint))
        self.values["Encoder"].setText(_encoder_text(encoder, checkpoint))
        self.values["Encoder"].setToolTip(f"Chosen encoder: {describe_encoder(encoder)}, used while the project "
                                          "has no checkpoint. Model ▸ Choose encoder… changes it.")

    def selected_class(self) -> ClassRecord | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.model.class_at(rows[0].row()) if rows else None

    def select_class(self, class_id: int) -> None:
        for row in range(self.model.rowCount()):
            record = self.model.class_at(row)
            if record is not None and record.id == class_id:
                self.table.selectRow(row)
                return

    # ---- edits (undoable) -----------------------------------------------------

    def add_class(self, name: str, colour: str | None = None) -> bool:
        return self.ws.do(AddClass(self.ws.project, name, colour, report=self.ws.report))

    def rename_class(self, record: ClassRecord, new_name: str) -> bool:
        if new_name.strip() == record.name:
            return False
        return self.ws.do(RenameClass(self.ws.project, record, new_name, report=self.ws.report))

    def recolour_class(self, record: ClassRecord, colour: str) -> bool:
        return self.ws.do(UpdateClass(self.ws.project, record, colour=colour, report=self.ws.report))

    def set_class_key(self, record: ClassRecord, key: str) -> bool:
        problem = self.key_problem(record, key)
        if problem:
            self.ws.report(problem)
            return False
        return self.ws.do(UpdateClass(self.ws.project, record, key=key, report=self.ws.report))

    def key_problem(self, record: ClassRecord, key: str) -> str | None:
        if len(key) > 1:
            return "A shortcut key is a single character."
        if key.lower() in RESERVED_KEYS:
            return f"That key is taken: {RESERVED_KEYS[key.lower()]}."
        other = self.ws.book().by_key(key)
        if key and other is not None and other.id != record.id:
            return f"The key {key} already labels {other.name}."
        return None

    def merge_class(self, source: ClassRecord, into: ClassRecord) -> bool:
        return self.ws.do(MergeClasses(self.ws.project, source, into, self.ws.annotator,
                                       report=self.ws.report))

    def delete_class(self, record: ClassRecord) -> bool:
        return self.ws.do(DeleteClass(self.ws.project, record, self.ws.annotator,
                                      report=self.ws.report))

    # ---- dialogs -------------------------------------------------------------

    def ask_add(self) -> None:
        name, ok = QInputDialog.getText(self, "Add class", "Name of the new class:")
        if ok and name.strip():
            self.add_class(name)

    def ask_rename(self) -> None:
        record = self._need_selection()
        if record is None:
            return
        name, ok = QInputDialog.getText(self, "Rename class", "New name:", text=record.name)
        if ok:
            self.rename_class(record, name)

    def ask_colour(self) -> None:
        record = self._need_selection()
        if record is None:
            return
        colour = QColorDialog.getColor(QColor(record.colour or "#888888"), self, "Class colour")
        if colour.isValid():
            self.recolour_class(record, colour.name())

    def ask_key(self) -> None:
        record = self._need_selection()
        if record is None:
            return
        key, ok = QInputDialog.getText(self, "Shortcut key",
                                       f"Key that labels an image as {record.name} (empty: none):",
                                       text=record.key or "")
        if ok:
            self.set_class_key(record, key.strip())

    def ask_merge(self) -> None:
        record = self._need_selection()
        if record is None:
            return
        others = [c for c in self.ws.book().classes if c.id != record.id]
        if not others:
            self.ws.report("There is no other class to merge into.")
            return
        names = [c.name for c in others]
        name, ok = QInputDialog.getItem(self, "Merge classes",
                                        f"Relabel every {record.name} image as:", names, 0, False)
        if ok:
            self.merge_class(record, others[names.index(name)])

    def delete_selected(self) -> None:
        record = self._need_selection()
        if record is not None:
            self.delete_class(record)  # undoable, so no "are you sure?"

    def _need_selection(self) -> ClassRecord | None:
        record = self.selected_class()
        if record is None:
            self.ws.report("Select a class in the list first.")
        return record


def _images_text(images: dict[str, int], total: int) -> str:
    parts = ", ".join(f"{n} {where}" for where, n in sorted(images.items()))
    return f"{total} ({parts})" if parts else "none yet"


def _checkpoint_text(checkpoint) -> str:
    if checkpoint is None:
        return "none yet (train to make one)"
    text = f"#{checkpoint.id} {checkpoint.backbone}"
    if checkpoint.round_id is not None:
        text += f", round {checkpoint.round_id}"
    for key in ("val_accuracy", "accuracy", "val_acc"):
        if key in checkpoint.metrics:
            text += f", accuracy {float(checkpoint.metrics[key]):.1%}"
            break
    return text


def _encoder_text(saved: dict | None, checkpoint) -> str:
    """What queries embed images with: the current checkpoint once there is one, else the chosen encoder."""
    if checkpoint is None:
        return describe_encoder(saved)
    phase = (checkpoint.config or {}).get("phase")
    return f"checkpoint #{checkpoint.id} ({phase + ' ' if phase else ''}{checkpoint.backbone})"
