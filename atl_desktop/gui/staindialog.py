"""Stain normalisation from the slide view: a method, a reference patch, a before/after preview.

The reference is the patch marked on the slide (click one first). "Use for
training" keeps the fitted normalisation in the project; the next training
applies it and records it in its checkpoint, so scoring with that checkpoint
normalises the same way. Fitting and the preview run off the GUI thread.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from atl_desktop.gui.background import Background
from atl_desktop.gui.thumbnails import to_qimage
from atl_desktop.gui.workspace import Workspace

PREVIEW_SIDE = 140
METHODS = ("macenko", "reinhard", "vahadane")


def fit_and_preview(project, method: str, reference_id: int, sample_ids: list[int]):
    """(StainConfig as JSON, [(before, after) PIL images]) — runs on a worker thread."""
    from PIL import Image

    from atl_desktop.data.decode import load_image
    from atl_desktop.data.stain import StainConfig, fit_stain, normalise_stain

    twin = project.another_connection()
    try:
        paths = {i: twin.image_path(twin.image(i)) for i in [reference_id, *sample_ids]}
    finally:
        twin.close()
    config = fit_stain(method, load_image(paths[reference_id]), name=f"image {reference_id}")
    config = StainConfig.from_json(config.to_json())
    pairs = []
    for image_id in sample_ids:
        before = load_image(paths[image_id]).convert("RGB")
        pairs.append((before, Image.fromarray(normalise_stain(before, config))))
    return config.to_json(), pairs


class StainDialog(QDialog):
    def __init__(self, workspace: Workspace, reference_id: int | None, sample_ids: list[int], parent=None):
        super().__init__(parent)
        from atl_desktop.store.keys import STAIN_SETTING

        self.setWindowTitle("Stain normalisation")
        self.ws = workspace
        self.setting = STAIN_SETTING
        self.reference_id = reference_id
        self.sample_ids = sample_ids[:4]
        self.fitted: dict | None = None
        self._background = Background(self)
        self.method = QComboBox()
        self.method.addItems(METHODS)
        current = workspace.project.get_setting(STAIN_SETTING) or {}
        self.method.setCurrentText(current.get("method", "macenko") if current.get("method") in METHODS else "macenko")
        self.state = QLabel(self._state_text(current))
        self.state.setWordWrap(True)
        self.previews = QGridLayout()
        self.preview_button = QPushButton("Preview")
        self.use_button = QPushButton("Use for training")
        self.use_button.setEnabled(False)
        self.off_button = QPushButton("Turn off")
        close = QPushButton("Close")
        top = QHBoxLayout()
        top.addWidget(QLabel("Method"))
        top.addWidget(self.method)
        top.addWidget(QLabel(f"Reference: patch {reference_id}" if reference_id is not None
                             else "Reference: click a patch on the slide first"))
        top.addStretch(1)
        buttons = QHBoxLayout()
        for button in (self.preview_button, self.use_button, self.off_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.state)
        layout.addLayout(self.previews)
        layout.addLayout(buttons)
        self.preview_button.setEnabled(reference_id is not None)
        self.preview_button.clicked.connect(self.preview)
        self.use_button.clicked.connect(self.use)
        self.off_button.clicked.connect(self.turn_off)
        close.clicked.connect(self.accept)
        self.method.currentTextChanged.connect(lambda _: self.use_button.setEnabled(False))

    @staticmethod
    def _state_text(current: dict) -> str:
        if not current:
            return "Training uses no stain normalisation now."
        return (f"Training uses {current['method']} normalisation now "
                f"(fitted to {current.get('reference_image') or 'a reference tile'}).")

    def preview(self) -> None:
        if self.reference_id is None:
            return
        self.state.setText("Fitting and normalising…")
        self.preview_button.setEnabled(False)
        project, method = self.ws.project, self.method.currentText()
        reference, samples = self.reference_id, self.sample_ids
        self._background.call(lambda: fit_and_preview(project, method, reference, samples), self._shown)

    def _shown(self, result) -> None:
        self.preview_button.setEnabled(True)
        if isinstance(result, Exception):
            self.state.setText(f"Cannot fit {self.method.currentText()} to this patch: {result}")
            return
        self.fitted, pairs = result
        while self.previews.count():
            self.previews.takeAt(0).widget().deleteLater()
        for column, (before, after) in enumerate(pairs):
            for row, image in enumerate((before, after)):
                label = QLabel()
                label.setPixmap(QPixmap.fromImage(to_qimage(image)).scaled(
                    PREVIEW_SIDE, PREVIEW_SIDE, Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation))
                self.previews.addWidget(label, row, column)
        self.state.setText("Top: as scanned. Bottom: normalised to the reference. "
                           "'Use for training' keeps it for the next training.")
        self.use_button.setEnabled(True)

    def use(self) -> None:
        if self.fitted is not None:
            self.ws.project.set_setting(self.setting, self.fitted)
            self.state.setText(self._state_text(self.fitted))
            self.ws.report(f"Stain normalisation: {self.fitted['method']} for the next training.")

    def turn_off(self) -> None:
        self.ws.project.set_setting(self.setting, None)
        self.state.setText(self._state_text({}))

    def done(self, result: int) -> None:
        self._background.wait()
        super().done(result)
