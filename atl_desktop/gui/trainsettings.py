"""The training settings form: method (with its own options), backbone, weights, epochs,
frozen stages and learning rates. Saved as the project's TRAIN_SETTING, which the
training job reads, so the form and `atl train` agree.

The method and backbone registries import torch, so they are read off the GUI
thread; until then the form shows the saved choices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.gui.background import Background
from atl_desktop.store import Project, ProjectError

TRAIN_SETTING = "train_config"  # = atl_desktop.session.TRAIN_SETTING (not imported: torch)
DEFAULTS = {"backbone": "resnet18", "weights": "imagenet", "method": "finetune", "epochs": 10,
            "batch_size": 32, "lr": 1e-3, "freeze": 0, "lr_decay": 1.0}
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


def method_tooltip(info: dict[str, Any]) -> str:
    text = info.get("description", "")
    if info.get("paper"):
        text += f"\nPaper: {info['paper']}"
    return text


class TrainSettings(QWidget):
    def __init__(self, project: Project, parent=None, load_registries: bool = True):
        super().__init__(parent)
        self.project = project
        self.methods: dict[str, dict[str, Any]] = {}
        self._option_widgets: dict[str, QWidget] = {}
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
        self.epochs = _spin(1, 1000, "Passes over the labelled images (early stopping may end sooner)")
        self.batch = _spin(1, 4096, "Images per step")
        self.freeze = _spin(0, 12, "Body stages kept fixed, counted from the input (0 = train all)")
        self.lr = _double(1e-6, 10.0, 6, "Learning rate of the head (and of the body, unless decayed)")
        self.lr_decay = _double(0.0, 1.0, 3, "Layer-wise decay: stage i of n trains at "
                                "lr × decay^(n−i) (1 = same rate everywhere)")
        form = QFormLayout()
        for text, widget in (("Method", self.method_box), ("Backbone", self.backbone_box),
                             ("Weights", self.weights_box), ("Epochs", self.epochs),
                             ("Batch size", self.batch), ("Frozen stages", self.freeze),
                             ("Learning rate", self.lr), ("Layer-wise decay", self.lr_decay)):
            form.addRow(text, widget)
        self.options_box = QGroupBox("Method options")
        self.options_form = QFormLayout(self.options_box)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.options_box)

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
        saved = {**DEFAULTS, **self.project.get_setting(TRAIN_SETTING, {})}
        latest = self.project.latest_checkpoint()
        if "backbone" not in self.project.get_setting(TRAIN_SETTING, {}) and latest is not None:
            saved["backbone"] = latest.backbone
        if self.method_box.findText(saved["method"]) < 0:
            self.method_box.addItem(saved["method"])
        self.method_box.setCurrentText(saved["method"])
        if self.backbone_box.findText(saved["backbone"]) < 0:
            self.backbone_box.addItem(saved["backbone"])
        self.backbone_box.setCurrentText(saved["backbone"])
        self.set_weights(saved["weights"])
        self.epochs.setValue(int(saved["epochs"]))
        self.batch.setValue(int(saved["batch_size"]))
        self.freeze.setValue(int(saved["freeze"]))
        self.lr.setValue(float(saved["lr"]))
        self.lr_decay.setValue(float(saved["lr_decay"]))

    def values(self) -> dict[str, Any]:
        weights = self.weights_box.currentData()
        return {
            "method": self.method_box.currentText(), "backbone": self.backbone_box.currentText(),
            "weights": None if weights == "file" else weights, "epochs": self.epochs.value(),
            "batch_size": self.batch.value(), "freeze": self.freeze.value(), "lr": self.lr.value(),
            "lr_decay": self.lr_decay.value(),
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
