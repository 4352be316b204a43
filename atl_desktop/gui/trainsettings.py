"""The training settings form: method (with its own options), backbone, weights, epochs,
frozen stages and learning rates. Saved as the project's TRAIN_SETTING, which the
training job reads, so the form and `atl train` agree.

The method and backbone registries import torch, so they are read off the GUI
thread; until then the form shows the saved choices.
"""

from __future__ import annotations

import dataclasses
import html
import sys
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.gui.background import Background
from atl_desktop.gui.forms import choice_box
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import AUGMENTATIONS, SCHEDULES, TRAIN_SETTING

DEFAULTS = {"backbone": "resnet18", "weights": "imagenet", "method": "finetune", "epochs": 10,
            "batch_size": 32, "lr": 1e-3, "freeze": 0, "lr_decay": 1.0, "processes": 1,
            "min_steps": None, "schedule": "constant", "augment": "none"}
SCHEDULE_WORDS = {"constant": "Constant", "onecycle": "One cycle: warm up, then anneal"}
AUGMENT_WORDS = {"none": "None", "histology": "Flips, 90° rotations, mild colour jitter (microscopy)",
                 "hed": "Flips, 90° rotations, HED stain jitter (H&E histology)",
                 "natural": "Crops, horizontal flips, colour jitter (photographs, X-ray)"}
# Every value the engine takes, in words where there are some.
SCHEDULE_CHOICES = tuple((SCHEDULE_WORDS.get(v, v), v) for v in SCHEDULES)
AUGMENT_CHOICES = tuple((AUGMENT_WORDS.get(v, v), v) for v in AUGMENTATIONS)
WEIGHT_CHOICES = (("ImageNet (from the local torch cache)", "imagenet"),
                  ("None: random initialisation", None))


def method_catalogue() -> dict[str, dict[str, Any]]:
    """name -> description, paper and options [(name, default)] of every registered method."""
    from atl_desktop.transfer.methods import METHODS

    out = {}
    for name, cls in METHODS.items():
        options = getattr(cls, "Options", None)
        fields = dataclasses.fields(options) if dataclasses.is_dataclass(options) else ()
        out[name] = {
            "description": getattr(cls, "description", ""), "paper": getattr(cls, "paper", ""),
            "options": [(f.name, f.default) for f in fields
                        if f.default is not dataclasses.MISSING
                        and isinstance(f.default, (bool, int, float, str))],
        }
    return out


def backbone_catalogue() -> list[str]:
    from atl_desktop.models import available_backbones

    return available_backbones()


def weights_problem(backbone: str, weights: str | None) -> str | None:
    """Why these weights cannot be used on this machine (nothing downloads); None if fine."""
    if not backbone:
        return "Choose a backbone."
    if weights is None:
        return None
    if weights != "imagenet":
        return None if Path(weights).is_file() else f"The weights file {weights} does not exist."
    if backbone == "smallcnn":
        return "The small CNN has no ImageNet weights: choose random initialisation or a file."
    try:
        missing = missing_imagenet_file(backbone)
    except ValueError:
        return f"torchvision has no ImageNet weights for {backbone}: choose random initialisation or a file."
    if missing is None:
        return None
    path, url = missing
    return (f"ImageNet weights for {backbone} are not on this machine. Nothing is downloaded: "
            f"fetch {url} elsewhere and put {path.name} in {path.parent}, or choose random "
            "initialisation or a local weights file.")


def missing_imagenet_file(backbone: str) -> tuple[Path, str] | None:
    """(where the file must be, its URL) when torchvision's ImageNet weights are not cached."""
    from atl_desktop.models.weights import imagenet_weights_file

    path, url = imagenet_weights_file(backbone)
    return None if path.is_file() else (path, url)


def weights_problem_html(backbone: str, weights: str | None, problem: str) -> str:
    """The problem as rich text, with the file, URL and folder on lines of their own."""
    missing = missing_imagenet_file(backbone) if weights == "imagenet" and backbone != "smallcnn" else None
    if missing is None:
        return f"⚠ {html.escape(problem)}"
    path, url = missing
    return (f"⚠ <b>ImageNet weights for {html.escape(backbone)} are not on this machine.</b> "
            "Nothing is downloaded. To use them, fetch<br>&nbsp;&nbsp;<code>"
            f"{html.escape(url)}</code><br>on a computer with internet access and copy "
            f"<code>{html.escape(path.name)}</code> into<br>&nbsp;&nbsp;<code>{html.escape(str(path.parent))}"
            "</code><br>Or choose random initialisation, or a weights file of your own.")


def default_weights(backbone: str) -> str | None:
    return None if backbone == "smallcnn" else "imagenet"


def method_tooltip(info: dict[str, Any]) -> str:
    text = info.get("description", "")
    if info.get("paper"):
        text += f"\nPaper: {info['paper']}"
    return text


class WrappedNote(QLabel):
    """A word-wrapped label that asks for the height its wrapped text needs at its real width.
    QFormLayout works the height out at another width, which clipped a two-line note."""

    def __init__(self):
        super().__init__()
        self.setWordWrap(True)

    def setText(self, text: str) -> None:
        super().setText(text)
        self._fit()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        self.setMinimumHeight(0)  # QLabel's heightForWidth never answers less than the minimum
        if self.text():
            self.setMinimumHeight(self.heightForWidth(self.width()))


class TrainSettings(QWidget):
    """The form. With a checkpoint, training continues from it (its backbone and weights);
    "Start over" trains a new model from the chosen backbone and weights instead."""

    changed = Signal()  # whether Start is possible may have changed (see `problem`)

    def __init__(self, project: Project, parent=None, load_registries: bool = True):
        super().__init__(parent)
        self.project = project
        self.methods: dict[str, dict[str, Any]] = {}
        self._option_widgets: dict[str, QWidget] = {}
        self._continues_from = None  # the CheckpointRecord training would continue
        self._build()
        self.load()
        self._background = Background(self)
        if load_registries:
            self._background.call(method_catalogue, self.set_methods)
            self._background.call(backbone_catalogue, self.set_backbones)

    def _build(self) -> None:
        self.method_box = QComboBox()
        self.method_box.currentTextChanged.connect(self._show_options)
        self.backbone_box = QComboBox()
        self.backbone_box.setToolTip("The pretrained network to adapt; smallcnn suits 28-pixel images")
        self.weights_box = QComboBox()
        for text, value in WEIGHT_CHOICES:
            self.weights_box.addItem(text, value)
        self.weights_box.addItem("A local weights file…", "file")
        self.weights_box.activated.connect(self._maybe_pick_file)
        self.weights_box.setToolTip("Nothing is downloaded: ImageNet weights must already be in the "
                                    "torch cache, or pick a .safetensors/.pth file")
        self.epochs = _spin(1, 1000, "Passes over the labelled images (early stopping on the "
                            "validation split may end sooner)")
        self.batch = _spin(1, 4096, "Images per step")
        self.min_steps = _spin(0, 1_000_000, "At least this many steps, however few the labels: a "
                               "few dozen labels make very short epochs (0 = the epochs decide)")
        self.schedule = choice_box(SCHEDULE_CHOICES, "How the learning rate moves during a training")
        self.augment = choice_box(AUGMENT_CHOICES, "Random changes to the labelled images while training; "
                                "rotations suit images without an up or down")
        self.processes = _spin(1, 64, "Train over this many processes on this computer with "
                               "torch.distributed: one per GPU, or CPU cores (gloo). Each step's "
                               "batch is split among them, so the batch size must divide evenly")
        self.freeze = _spin(0, 12, "Body stages kept fixed, counted from the input (0 = train all). "
                            "Early layers transfer best (Yosinski et al., NeurIPS 2014)")
        self.lr = _double(1e-6, 10.0, 6, "Learning rate of the head (and of the body, unless decayed)")
        self.lr_decay = _double(0.0, 1.0, 3, "Layer-wise decay: stage i of n trains at "
                                "lr × decay^(n−i) (1 = same rate everywhere)")
        self.start_over = QCheckBox("Start over: a new model from these weights")
        self.start_over.setToolTip("Otherwise training continues from the current checkpoint, "
                                   "keeping what it learnt (incremental fine-tuning)")
        self.start_over.toggled.connect(self._update_model_choice)
        self.note = WrappedNote()
        self.note.setStyleSheet("color: palette(placeholder-text);")
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for text, widget in (("Method", self.method_box), ("Backbone", self.backbone_box),
                             ("Weights", self.weights_box), ("", self.start_over), ("", self.note),
                             ("Epochs", self.epochs), ("Minimum steps", self.min_steps),
                             ("Batch size", self.batch), ("Schedule", self.schedule),
                             ("Augmentation", self.augment), ("Processes", self.processes),
                             ("Frozen stages", self.freeze), ("Learning rate", self.lr),
                             ("Layer-wise decay", self.lr_decay)):
            form.addRow(text, widget)
        self.options_box = QGroupBox("Method options")
        self.options_form = QFormLayout(self.options_box)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.options_box)
        self.backbone_box.currentTextChanged.connect(lambda _: self._update_model_choice())
        self.weights_box.currentIndexChanged.connect(lambda _: self._update_model_choice())

    # ---- continuing or starting over ------------------------------------------------

    def set_checkpoint(self, record) -> None:
        """The checkpoint training would continue from (None: the first training)."""
        self._continues_from = record
        self.start_over.setVisible(record is not None)
        if record is None:
            self.start_over.setChecked(False)
        self._update_model_choice()

    @property
    def continues_from(self):
        return self._continues_from

    def from_scratch(self) -> bool:
        return self._continues_from is not None and self.start_over.isChecked()

    def problem(self) -> str | None:
        """Why training cannot start with these settings (a one-line reason), or None."""
        if self._continues_from is not None and not self.from_scratch():
            if self.backbone_box.currentText() != self._continues_from.backbone:
                return (f"The current checkpoint is a {self._continues_from.backbone}: tick Start over "
                        f"to train a {self.backbone_box.currentText()} instead.")
            return None
        weights = self.weights_box.currentData()
        if weights == "imagenet" and "torchvision" not in sys.modules:
            return None  # checked when the registries arrive: importing torch here would freeze the window
        return weights_problem(self.backbone_box.currentText(), None if weights == "file" else weights)

    def _update_model_choice(self) -> None:
        record = self._continues_from
        continuing = record is not None and not self.start_over.isChecked()
        self.weights_box.setEnabled(not continuing)
        problem = self.problem()
        if problem:
            self.note.setText(f"⚠ {problem}")
        elif continuing:
            self.note.setText(f"Continues from checkpoint #{record.id} ({record.backbone}): "
                              "weights apply when starting over.")
        else:
            self.note.setText("Trains a new model from these weights.")
        self.changed.emit()

    # ---- registries (arrive from the background) ---------------------------------

    def set_methods(self, methods) -> None:
        if not isinstance(methods, dict) or not methods:
            return
        chosen = self.method_box.currentText()
        self.methods = methods
        self.method_box.blockSignals(True)
        self.method_box.clear()
        for name, info in methods.items():
            self.method_box.addItem(name)
            self.method_box.setItemData(self.method_box.count() - 1, method_tooltip(info),
                                        _tooltip_role())
        self.method_box.setCurrentText(chosen if chosen in methods else "finetune")
        self.method_box.blockSignals(False)
        self._show_options(self.method_box.currentText())

    def set_backbones(self, names) -> None:
        if not isinstance(names, list) or not names:
            return
        chosen = self.backbone_box.currentText()
        self.backbone_box.clear()
        self.backbone_box.addItems(names)
        self.backbone_box.setCurrentText(chosen if chosen in names else names[0])

    def _show_options(self, method: str) -> None:
        while self.options_form.rowCount():
            self.options_form.removeRow(0)
        self._option_widgets = {}
        info = self.methods.get(method, {})
        self.method_box.setToolTip(method_tooltip(info))
        try:
            saved = self.project.get_setting(TRAIN_SETTING, {})
        except ProjectError:
            return  # the registry arrived as the window closed
        # Saved option values apply to the method they were saved with.
        saved = saved.get("method_options", {}) if saved.get("method") == method else {}
        for name, default in info.get("options", []):
            value = saved.get(name, default)
            widget = _option_widget(default, value)
            widget.setToolTip(f"{name} (default {default}). {method_tooltip(info)}")
            self._option_widgets[name] = widget
            self.options_form.addRow(name.replace("_", " "), widget)
        self.options_box.setVisible(bool(self._option_widgets))

    def _maybe_pick_file(self) -> None:
        if self.weights_box.currentData() != "file":
            return
        path, _ = QFileDialog.getOpenFileName(self, "Weights file", "",
                                              "Weights (*.safetensors *.pth *.pt *.bin)")
        self.set_weights(path or "imagenet")

    def set_weights(self, weights: str | None) -> None:
        index = self.weights_box.findData(weights)
        if index < 0:
            self.weights_box.insertItem(0, f"File: {weights}", weights)
            index = 0
        self.weights_box.setCurrentIndex(index)

    # ---- values --------------------------------------------------------------------

    def load(self) -> None:
        stored = self.project.get_setting(TRAIN_SETTING, {})
        saved = {**DEFAULTS, **stored}
        latest = self.project.latest_checkpoint()
        if "backbone" not in stored and latest is not None:
            saved["backbone"] = latest.backbone
        if "weights" not in stored:
            saved["weights"] = default_weights(saved["backbone"])
        if self.method_box.findText(saved["method"]) < 0:
            self.method_box.addItem(saved["method"])
        self.method_box.setCurrentText(saved["method"])
        if self.backbone_box.findText(saved["backbone"]) < 0:
            self.backbone_box.addItem(saved["backbone"])
        self.backbone_box.setCurrentText(saved["backbone"])
        self.set_weights(saved["weights"])
        self.epochs.setValue(int(saved["epochs"]))
        self.batch.setValue(int(saved["batch_size"]))
        self.processes.setValue(int(saved["processes"]))
        self.freeze.setValue(int(saved["freeze"]))
        self.lr.setValue(float(saved["lr"]))
        self.lr_decay.setValue(float(saved["lr_decay"]))
        self.min_steps.setValue(int(saved["min_steps"] or 0))
        _select(self.schedule, saved["schedule"])
        _select(self.augment, saved["augment"])
        self.set_checkpoint(latest)

    def values(self) -> dict[str, Any]:
        weights = self.weights_box.currentData()
        return {
            "method": self.method_box.currentText(), "backbone": self.backbone_box.currentText(),
            "weights": None if weights == "file" else weights, "epochs": self.epochs.value(),
            "batch_size": self.batch.value(), "freeze": self.freeze.value(), "lr": self.lr.value(),
            "lr_decay": self.lr_decay.value(), "processes": self.processes.value(),
            "min_steps": self.min_steps.value() or None, "schedule": self.schedule.currentData(),
            "augment": self.augment.currentData(),
            "method_options": {name: _option_value(w) for name, w in self._option_widgets.items()},
        }

    def save(self) -> dict[str, Any]:
        """Merge the form into the project's training settings (other keys are kept)."""
        settings = {**self.project.get_setting(TRAIN_SETTING, {}), **self.values()}
        self.project.set_setting(TRAIN_SETTING, settings)
        return settings

    def shutdown(self) -> None:
        self._background.wait()


def _tooltip_role():
    from PySide6.QtCore import Qt

    return Qt.ItemDataRole.ToolTipRole


def _select(box: QComboBox, value) -> None:
    """Show `value` (an unknown one is added as itself, never dropped)."""
    index = box.findData(value)
    if index < 0:
        box.addItem(str(value), value)
        index = box.count() - 1
    box.setCurrentIndex(index)


def _spin(low: int, high: int, tip: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setToolTip(tip)
    return box


def _double(low: float, high: float, decimals: int, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(low, high)
    box.setSingleStep(10 ** -decimals * 10 if decimals > 3 else 0.05)
    box.setToolTip(tip)
    return box


def _option_widget(default, value) -> QWidget:
    if isinstance(default, bool):
        widget = QCheckBox()
        widget.setChecked(bool(value))
    elif isinstance(default, int):
        widget = _spin(-1_000_000, 1_000_000, "")
        widget.setValue(int(value))
    elif isinstance(default, float):
        widget = _double(0.0, 1e6, 4, "")
        widget.setValue(float(value))
    else:
        widget = QLineEdit(str(value))
    return widget


def _option_value(widget: QWidget):
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QSpinBox | QDoubleSpinBox):
        return widget.value()
    return widget.text()
