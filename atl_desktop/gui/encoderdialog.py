"""Model ▸ Choose encoder…: the encoder queries embed images with (`models.encoders`).

The choices come from the registry off the GUI thread (reading it imports torch).
OK builds the chosen encoder as a job on the window's runner, because loading a
ViT-L takes seconds; the job saves the choice to the project only once it has
built (`session.set_encoder_job`, as `atl encoder` does). A failure is shown in
the dialog, whose values stay so the path can be fixed. A project checkpoint is
chosen by making it the current one, as Roll back does (undoable).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
)

from atl_desktop.gui.forms import path_row
from atl_desktop.gui.undo import SetActiveCheckpoint
from atl_desktop.store.keys import CHECKPOINT, ENCODER_SETTING, describe_encoder

ENCODER_JOB = "encoder"
ENCODER_JOB_TITLE = "Loading the encoder"
DEFAULT_SIZE = 0  # the input-size box's "default": the backbone's own size
# EncoderOption.weights values (models.encoders' NO_/OPTIONAL_/REQUIRED_WEIGHTS, not imported
# here: that module pulls in torch, which the GUI thread never imports).
NO_WEIGHTS, OPTIONAL_WEIGHTS, REQUIRED_WEIGHTS = "none", "optional", "required"
WEIGHT_FILES = "Weights (*.safetensors *.bin *.pth *.pt);;All files (*)"


def encoder_job(project, *, choice: dict):
    """Build the encoder `choice` (EncoderChoice JSON) and save it; returns the EncoderChoice."""
    from atl_desktop.loop.session import set_encoder_job
    from atl_desktop.models.encoders import EncoderChoice

    return (yield from set_encoder_job(project, EncoderChoice.from_json(choice)))


def load_options(checkpoints) -> list:
    from atl_desktop.models.encoders import encoder_options

    return encoder_options(checkpoints)


class EncoderDialog(QDialog):
    """Lists the encoders; emits `chosen` (EncoderChoice JSON) or `checkpoint_chosen` (an id) on OK.

    The dialog stays open while the window checks the choice: `show_problem` or `accept` ends it.
    """

    chosen = Signal(dict)
    checkpoint_chosen = Signal(int)

    def __init__(self, current: dict | None, current_checkpoint: int | None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Choose encoder")
        self.resize(820, 520)
        self.current = dict(current or {"name": "untrained:resnet18"})
        self.options: list = []
        self._typed: dict[int, str] = {}  # weights typed per option, kept while switching
        self._shown: int | None = None  # the option whose weights the edit holds

        intro = QLabel(self._intro(current_checkpoint))
        intro.setWordWrap(True)
        self.list = QTreeWidget()
        self.list.setHeaderLabels(["Encoder", "What it is"])
        self.list.setRootIsDecorated(False)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setColumnWidth(0, 190)
        self.list.addTopLevelItem(QTreeWidgetItem(["Reading the registry…", ""]))
        self.list.currentItemChanged.connect(lambda *_: self._option_changed())

        self.weights = QLineEdit()
        file_button, folder_button = QPushButton("File…"), QPushButton("Folder…")
        file_button.clicked.connect(lambda: self._browse(folder=False))
        folder_button.clicked.connect(lambda: self._browse(folder=True))
        self.weights_row = path_row(self.weights, file_button, folder_button)
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: palette(dark);")
        self.size = QSpinBox()
        self.size.setRange(DEFAULT_SIZE, 1024)
        self.size.setSingleStep(16)
        self.size.setSpecialValueText("default")
        self.size.setSuffix(" px")
        form = QFormLayout()
        form.addRow("Weights", self.weights_row)
        form.addRow("", self.hint)
        form.addRow("Input size", self.size)

        self.problem = QLabel()
        self.problem.setWordWrap(True)
        self.problem.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.problem.setStyleSheet("color: #b00020;")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok.setText("Use this encoder")
        self.ok.setEnabled(False)  # until the registry is read
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.list, 1)
        layout.addLayout(form)
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)
        self._option_changed()

    @staticmethod
    def _intro(current_checkpoint: int | None) -> str:
        text = ("Queries embed every image with the encoder and fit a light head on the embeddings "
                "after each label. Nothing is downloaded: foundation models need a weights file or "
                "snapshot folder you already have.")
        if current_checkpoint is not None:
            text += (f" This project has a checkpoint, and queries use the current one (#{current_checkpoint});"
                     " another encoder chosen here is used only when the project has none. Choose a "
                     "checkpoint to make it the current one.")
        return text

    # ---- filling ---------------------------------------------------------------

    def set_options(self, options) -> None:
        """Show the registry's choices (a list of EncoderOption, or the error that stopped reading it)."""
        self.list.clear()
        if isinstance(options, Exception):
            self.show_problem(f"Could not read the encoders: {options}")
            return
        self.options = list(options)
        for index, option in enumerate(self.options):
            title = option.name if option.checkpoint_id is None else f"checkpoint #{option.checkpoint_id}"
            item = QTreeWidgetItem([title, option.description])
            item.setToolTip(1, option.description)
            item.setData(0, Qt.ItemDataRole.UserRole, index)
            self.list.addTopLevelItem(item)
        self._preselect()
        self.ok.setEnabled(True)

    def _preselect(self) -> None:
        name = self.current.get("name")
        for index, option in enumerate(self.options):
            if option.name == name and option.checkpoint_id == self.current.get("checkpoint_id"):
                self._typed[index] = self.current.get("weights") or ""
                self.size.setValue(self.current.get("input_size") or DEFAULT_SIZE)
                self.list.setCurrentItem(self.list.topLevelItem(index))
                return
        self.list.setCurrentItem(self.list.topLevelItem(0))

    def _option_changed(self) -> None:
        if self._shown is not None:
            self._typed[self._shown] = self.weights.text()
        self._shown = self._selected_index()
        option = self.selected()
        takes_weights = option is not None and option.weights != NO_WEIGHTS
        self.weights.setText(self._typed.get(self._shown, "") if takes_weights else "")
        placeholder = "imagenet" if takes_weights and option.weights == OPTIONAL_WEIGHTS else "a file or folder"
        self.weights.setPlaceholderText(placeholder if takes_weights else "no weights needed")
        self.weights_row.setEnabled(takes_weights)
        self.hint.setText(f"Expects {option.weights_hint}." if takes_weights else "")
        self.size.setEnabled(option is not None and option.sized)
        self.problem.clear()

    # ---- the choice --------------------------------------------------------------

    def _selected_index(self) -> int | None:
        item = self.list.currentItem()
        return item.data(0, Qt.ItemDataRole.UserRole) if item is not None else None

    def selected(self):
        index = self._selected_index()
        return None if index is None else self.options[index]

    def choice(self) -> dict:
        """The selection as EncoderChoice JSON ("imagenet" when a torchvision backbone's path is empty)."""
        option = self.selected()
        weights = self.weights.text().strip() or None
        if weights is None and option.weights == OPTIONAL_WEIGHTS:
            weights = "imagenet"
        size = self.size.value() if option.sized and self.size.value() != DEFAULT_SIZE else None
        return {"name": option.name, "weights": weights, "checkpoint_id": None, "input_size": size}

    def submit(self) -> None:
        option = self.selected()
        if option is None:
            return
        if option.name == CHECKPOINT:
            self.checkpoint_chosen.emit(option.checkpoint_id)
            return
        if option.weights == REQUIRED_WEIGHTS and not self.weights.text().strip():
            self.show_problem(f"{option.name} needs its weights: choose {option.weights_hint}.")
            return
        self.set_checking(True)
        self.chosen.emit(self.choice())

    def set_checking(self, checking: bool) -> None:
        """While the window loads the encoder: the values stay, but cannot change."""
        for widget in (self.list, self.weights_row, self.ok):
            widget.setEnabled(not checking)
        self.size.setEnabled(not checking and self.selected() is not None and self.selected().sized)
        self.problem.setStyleSheet("" if checking else "color: #b00020;")
        self.problem.setText("Loading the encoder and checking its weights…" if checking else "")

    def show_problem(self, message: str) -> None:
        self.set_checking(False)
        self.problem.setText(message)

    def _browse(self, folder: bool) -> None:
        start = self.weights.text().strip()
        if folder:
            path = QFileDialog.getExistingDirectory(self, "Folder holding the weights", start)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Weights file", start, WEIGHT_FILES)
        if path:
            self.weights.setText(path)


# ---- the window's side ---------------------------------------------------------------


def ask_encoder(window) -> EncoderDialog:
    """Model ▸ Choose encoder…: open the dialog (not blocking), then read the registry off the GUI thread."""
    project = window.ws.project
    current = project.latest_checkpoint()
    dialog = EncoderDialog(project.get_setting(ENCODER_SETTING), None if current is None else current.id, window)
    dialog.chosen.connect(lambda choice: start_encoder_check(window, choice))
    dialog.checkpoint_chosen.connect(lambda checkpoint_id: use_checkpoint(window, checkpoint_id))
    dialog.rejected.connect(lambda: window.runner.cancel(ENCODER_JOB))  # a cancel saves nothing
    window.encoder_dialog = dialog
    records = project.checkpoints()
    # The window's own background thread: it outlives the dialog, and warms torch first.
    window._warmer.call(lambda: load_options(records), dialog.set_options)
    dialog.open()
    return dialog


def start_encoder_check(window, choice: dict) -> bool:
    reason = window.runner.start(ENCODER_JOB, encoder_job, window.ws.project, title=ENCODER_JOB_TITLE,
                                 group="model", choice=choice)
    if reason is not None:
        window.encoder_dialog.show_problem(reason)
        return False
    window._update_busy()
    return True


def use_checkpoint(window, checkpoint_id: int) -> None:
    if window.ws.do(SetActiveCheckpoint(window.ws.project, checkpoint_id, report=window.ws.report)):
        window.encoder_dialog.accept()
        window.statusBar().showMessage(f"Queries now embed images with checkpoint #{checkpoint_id}.", 12000)


def connect_encoder(window) -> None:
    """How the check ends: saved (the dialog closes, the status bar says so) or failed (the dialog says why)."""
    window.encoder_dialog = None
    window.runner.finished.connect(lambda name, result: _saved(window, result) if name == ENCODER_JOB else None)
    window.runner.failed.connect(
        lambda name, message, _details: _failed(window, message) if name == ENCODER_JOB else None)


def _saved(window, choice) -> None:
    if window.encoder_dialog is not None:
        window.encoder_dialog.accept()
    text = f"Encoder set to {describe_encoder(choice.to_json())}"
    if window.ws.project.latest_checkpoint() is not None:
        text += "; it is used when the project has no checkpoint (queries use the current one)"
    window.statusBar().showMessage(text + ".", 12000)


def _failed(window, message: str) -> None:
    if window.encoder_dialog is not None and window.encoder_dialog.isVisible():
        window.encoder_dialog.show_problem(message)
