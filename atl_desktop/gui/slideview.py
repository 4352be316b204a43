"""The slide view: a whole slide at low resolution with its patches over it.

Shows the patch grid, labelled patches in their class colours, and a heatmap
from the latest scoring (the predicted class, shaded by confidence, or the
uncertainty: normalised entropy). Clicking a patch opens it in the query view
to label it; "Show on slide" (Ctrl+L) comes back to the patch there. The
low-resolution image and the predictions are read on a worker thread; only
labels (one query) are read on the GUI thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QAction, QColor, QImage, QKeySequence, QMouseEvent, QPainter, QPen
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.gui.background import Background
from atl_desktop.gui.models import class_colour
from atl_desktop.gui.thumbnails import to_qimage
from atl_desktop.gui.workspace import RefreshWhenShown, Workspace
from atl_desktop.store import PatchRow, Project, ProjectError, SlideRecord

OVERLAYS = ("Labels", "Predicted class", "Uncertainty", "Tissue", "Grid only")
LOW_RES_SIDE = 1024
GRID_PEN = QColor(40, 40, 40, 70)


@dataclass(frozen=True)
class SlideData:
    """What the view draws, read off the GUI thread."""

    slide: SlideRecord
    image: QImage | None  # low resolution; None when the file cannot be read
    error: str
    patches: tuple[PatchRow, ...]
    extents: np.ndarray  # level-0 side of each patch
    classes: tuple[str, ...]  # the names behind the prediction columns
    probs: np.ndarray  # (n, C), NaN rows where not scored
    uncertainty: np.ndarray


def load_slide_data(project: Project, slide_id: int) -> SlideData:
    """Everything the view needs for one slide (runs on a worker thread, with its own connection)."""
    from atl_desktop.active.predictions import latest_predictions
    from atl_desktop.data.slides import open_slide
    from atl_desktop.data.tiling import low_resolution

    twin = project.another_connection()
    try:
        slide = twin.slide(slide_id)
        patches = tuple(twin.patches(slide_id))
        path = twin.slide_path(slide)
        predictions = latest_predictions(twin, [p.image_id for p in patches])
        checkpoint = twin.latest_checkpoint()
    finally:
        twin.close()
    downsample = {level: ds for level, (_w, _h, ds) in enumerate(slide.levels)}
    extents = np.array([p.size * downsample.get(p.level, 1.0) for p in patches], dtype=np.float64)
    image, error = None, ""
    try:
        reader = open_slide(path)  # its own: the shared ones serve patch reads meanwhile
        try:
            rgb, _sx, _sy = low_resolution(reader, LOW_RES_SIDE)
        finally:
            reader.close()
        image = to_qimage_array(rgb)
    except Exception as failure:  # a missing or damaged slide: say so, draw the grid anyway
        error = str(failure)
    return SlideData(slide, image, error, patches, extents,
                     tuple(checkpoint.classes) if checkpoint is not None else (),
                     predictions.probs, predictions.uncertainty)


def to_qimage_array(rgb: np.ndarray) -> QImage:
    from PIL import Image

    return to_qimage(Image.fromarray(rgb))


def uncertainty_colour(value: float) -> QColor:
    """Pale yellow (sure) to deep red (unsure)."""
    value = float(np.clip(value, 0.0, 1.0))
    return QColor.fromRgbF(1.0, 0.95 - 0.85 * value, 0.6 - 0.6 * value)


class SlideCanvas(QWidget):
    """Draws the slide and its patches; a click on a patch emits its image id."""

    patch_clicked = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setMinimumSize(320, 240)
        self.data: SlideData | None = None
        self.labels: dict[int, QColor] = {}  # image id -> class colour
        self.label_names: dict[int, str] = {}
        self.colours: dict[str, QColor] = {}  # class name -> colour
        self.overlay = OVERLAYS[0]
        self.opacity = 0.55
        self.highlight: int | None = None

    # ---- geometry: level-0 pixels <-> widget ------------------------------------

    def _scale(self) -> tuple[float, float, float]:
        slide = self.data.slide
        s = min((self.width() - 8) / slide.width, (self.height() - 8) / slide.height)
        ox = (self.width() - slide.width * s) / 2
        oy = (self.height() - slide.height * s) / 2
        return s, ox, oy

    def patch_rect(self, k: int) -> QRectF:
        s, ox, oy = self._scale()
        p = self.data.patches[k]
        e = self.data.extents[k]
        return QRectF(ox + p.x * s, oy + p.y * s, e * s, e * s)

    def patch_at(self, point: QPointF) -> int | None:
        """Index of the patch under `point` (the last drawn, i.e. topmost, wins)."""
        if self.data is None or not self.data.patches:
            return None
        s, ox, oy = self._scale()
        x, y = (point.x() - ox) / s, (point.y() - oy) / s
        xs = np.array([p.x for p in self.data.patches])
        ys = np.array([p.y for p in self.data.patches])
        inside = np.flatnonzero((xs <= x) & (x < xs + self.data.extents) & (ys <= y) & (y < ys + self.data.extents))
        return int(inside[-1]) if len(inside) else None

    # ---- painting ---------------------------------------------------------------

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().base())
        if self.data is None:
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No slide")
            return
        s, ox, oy = self._scale()
        slide = self.data.slide
        area = QRectF(ox, oy, slide.width * s, slide.height * s)
        if self.data.image is not None:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(area, self.data.image)
        else:
            painter.fillRect(area, QColor("#DDDDDD"))
            painter.drawText(area, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                             f"Cannot show the slide: {self.data.error}")
        for k in range(len(self.data.patches)):
            self._paint_patch(painter, k)
        if self.highlight is not None and self.highlight < len(self.data.patches):
            painter.setPen(QPen(self.palette().highlight().color(), 3))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(self.patch_rect(self.highlight).adjusted(-2, -2, 2, 2))

    def _paint_patch(self, painter: QPainter, k: int) -> None:
        rect = self.patch_rect(k)
        image_id = self.data.patches[k].image_id
        fill = self._fill(k)
        if fill is not None:
            fill.setAlphaF(fill.alphaF() * self.opacity)
            painter.fillRect(rect, fill)
        label = self.labels.get(image_id)
        if label is not None and self.overlay != "Labels":
            painter.setPen(QPen(label, 2))  # labels stay visible over a heatmap, as frames
        else:
            painter.setPen(QPen(GRID_PEN, 1))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(rect)

    def _fill(self, k: int) -> QColor | None:
        data = self.data
        if self.overlay == "Labels":
            colour = self.labels.get(data.patches[k].image_id)
            return QColor(colour) if colour is not None else None
        if self.overlay == "Tissue":
            tissue = data.patches[k].tissue or 0.0
            return QColor.fromRgbF(0.1, 0.6, 0.3, float(tissue))
        scored = k < len(data.probs) and data.probs.shape[1] > 0 and not np.isnan(data.probs[k]).any()
        if not scored:
            return None
        if self.overlay == "Predicted class":
            position = int(np.argmax(data.probs[k]))
            name = data.classes[position] if position < len(data.classes) else ""
            colour = QColor(self.colours.get(name, QColor("#888888")))
            colour.setAlphaF(float(np.max(data.probs[k])))
            return colour
        if self.overlay == "Uncertainty":
            return uncertainty_colour(data.uncertainty[k])
        return None

    # ---- the mouse --------------------------------------------------------------

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        k = self.patch_at(event.position())
        if k is None:
            QToolTip.hideText()
            return
        QToolTip.showText(event.globalPosition().toPoint(), self.describe(k), self)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        k = self.patch_at(event.position())
        if k is not None and event.button() == Qt.MouseButton.LeftButton:
            self.highlight = k
            self.update()
            self.patch_clicked.emit(self.data.patches[k].image_id)

    def describe(self, k: int) -> str:
        p = self.data.patches[k]
        lines = [f"Patch {p.image_id} at ({p.x}, {p.y})", f"label: {self.label_names.get(p.image_id, 'none')}"]
        probs = self.data.probs[k] if k < len(self.data.probs) else np.empty(0)
        if probs.size and not np.isnan(probs).any() and self.data.classes:
            top = int(np.argmax(probs))
            lines.append(f"model: {probs[top]:.0%} {self.data.classes[top]}, "
                         f"uncertainty {self.data.uncertainty[k]:.2f}")
        return "\n".join(lines)


class SlideView(QWidget):
    """Chooser, overlay and opacity above a `SlideCanvas`."""

    label_patch = Signal(int)  # image id: open it in the query view

    def __init__(self, workspace: Workspace, parent=None):
        super().__init__(parent)
        self.ws = workspace
        self._background = Background(self)
        self._loading: int | None = None
        self._pending_highlight: int | None = None
        self.slide_box = QComboBox()
        self.slide_box.setToolTip("The slide to show")
        self.overlay_box = QComboBox()
        self.overlay_box.addItems(OVERLAYS)
        self.overlay_box.setToolTip("What colours the patches: labels, or the latest scoring")
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(55)
        self.opacity.setMaximumWidth(140)
        self.opacity.setToolTip("How strongly the overlay covers the slide")
        self.stain_button = QPushButton("Stain normalisation…")
        self.stain_button.setToolTip("Normalise stains to the marked patch, for training and scoring")
        self.stain_button.clicked.connect(self.ask_stain)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.canvas = SlideCanvas()
        bar = QHBoxLayout()
        for widget in (QLabel("Slide"), self.slide_box, QLabel("Show"), self.overlay_box,
                       QLabel("Opacity"), self.opacity):
            bar.addWidget(widget)
        bar.addStretch(1)
        bar.addWidget(self.stain_button)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.status)
        layout.addWidget(self.legend)
        layout.addWidget(self.canvas, 1)
        self.slide_box.currentIndexChanged.connect(lambda _: self.load(self.slide_box.currentData()))
        self.overlay_box.currentTextChanged.connect(self._set_overlay)
        self.opacity.valueChanged.connect(self._set_opacity)
        self.canvas.patch_clicked.connect(self.label_patch)
        workspace.changed.connect(RefreshWhenShown(self, self.refresh_labels).request)
        self.refresh_slides()

    # ---- loading ---------------------------------------------------------------

    def refresh_slides(self) -> None:
        """Fill the chooser from the project (keeps the current slide)."""
        try:
            slides = self.ws.project.slides()
            counts = self.ws.project.patch_counts()
        except ProjectError:
            return
        current = self.slide_box.currentData()
        self.slide_box.blockSignals(True)
        self.slide_box.clear()
        for s in slides:
            self.slide_box.addItem(f"{s.name} — {counts.get(s.id, 0)} patches", s.id)
        self.slide_box.blockSignals(False)
        if not slides:
            self.status.setText("No slides in this project. Add one with `atl slide add PROJECT SLIDE`.")
            return
        index = max(0, self.slide_box.findData(current))
        self.slide_box.setCurrentIndex(index)
        self.load(self.slide_box.itemData(index))

    def load(self, slide_id: int | None) -> None:
        if slide_id is None:
            return
        self._loading = slide_id
        self.status.setText("Reading the slide…")
        project = self.ws.project
        self._background.call(lambda: load_slide_data(project, slide_id), self._loaded)

    def reload(self) -> None:
        """Read the predictions again (after a scoring pass)."""
        self.load(self.slide_box.currentData())

    def _loaded(self, result) -> None:
        if isinstance(result, Exception):
            self.status.setText(f"Cannot show the slide: {result}")
            return
        if result.slide.id != self._loading:
            return  # another slide was chosen meanwhile
        self.canvas.data = result
        self.canvas.highlight = None
        if self._pending_highlight is not None:
            self._mark(self._pending_highlight)
            self._pending_highlight = None
        self.refresh_labels()
        scored = int((~np.isnan(result.probs).any(axis=1)).sum()) if result.probs.size else 0
        slide = result.slide
        mpp = f", {slide.mpp:.3g} µm/px" if slide.mpp else ""
        text = (f"{slide.name}: {slide.width} × {slide.height} px{mpp}; {len(result.patches)} patches, "
                f"{scored} scored by the current model. Click a patch to label it.")
        self.status.setText(text if not result.error else f"{text}  [{result.error}]")

    def refresh_labels(self) -> None:
        try:
            labels = self.ws.project.current_labels()
            book = self.ws.book()
        except ProjectError:
            return
        self.canvas.colours = {c.name: class_colour(c) for c in book.classes}
        self.canvas.labels, self.canvas.label_names = {}, {}
        if self.canvas.data is not None:
            for p in self.canvas.data.patches:
                record = book.by_id(labels.get(p.image_id))
                if record is not None:
                    self.canvas.labels[p.image_id] = class_colour(record)
                    self.canvas.label_names[p.image_id] = record.name
        self._update_legend()
        self.canvas.update()

    def show_patch(self, image_id: int) -> bool:
        """Bring the patch's slide up and mark the patch; False if the image is not a patch."""
        slide_id = self.ws.project.slide_of_image(image_id)
        if slide_id is None:
            return False
        data = self.canvas.data
        if data is None or data.slide.id != slide_id:
            self._pending_highlight = image_id  # marked once the slide has loaded
            self.slide_box.setCurrentIndex(max(0, self.slide_box.findData(slide_id)))
            return True
        self._mark(image_id)
        return True

    def _mark(self, image_id: int) -> None:
        data = self.canvas.data
        if data is None:
            return
        ids = [p.image_id for p in data.patches]
        self.canvas.highlight = ids.index(image_id) if image_id in ids else None
        self.canvas.update()

    def ask_stain(self):
        """The stain dialog, with the marked patch as the reference and a few others to preview."""
        from atl_desktop.gui.staindialog import StainDialog

        data = self.canvas.data
        patches = data.patches if data is not None else ()
        reference = patches[self.canvas.highlight].image_id if (
            self.canvas.highlight is not None and self.canvas.highlight < len(patches)) else None
        picks = np.linspace(0, len(patches) - 1, min(4, len(patches))).astype(int) if patches else []
        dialog = StainDialog(self.ws, reference, [patches[k].image_id for k in picks], self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def known_top(self, image_ids: list[int]) -> dict[int, list]:
        """The latest scoring's top three predictions of these patches, as the query view
        takes them: image id -> [[class position, p], ...]."""
        data = self.canvas.data
        if data is None or not data.probs.size:
            return {}
        rows = {p.image_id: k for k, p in enumerate(data.patches)}
        out = {}
        for image_id in image_ids:
            k = rows.get(image_id)
            if k is not None and not np.isnan(data.probs[k]).any():
                order = np.argsort(-data.probs[k])[:3]
                out[image_id] = [[int(c), float(data.probs[k][c])] for c in order]
        return out

    def _set_overlay(self, name: str) -> None:
        self.canvas.overlay = name
        self.canvas.update()
        self._update_legend()

    def _update_legend(self) -> None:
        """Coloured squares saying what the overlay's colours mean."""
        square = '<span style="color:{}">&#9632;</span> {}'
        overlay = self.canvas.overlay
        if overlay == "Labels":
            text = "  ".join(square.format(c.name(), n) for n, c in self.canvas.colours.items())
            text = f"Fill: label. {text}" if text else ""
        elif overlay == "Predicted class":
            names = self.canvas.data.classes if self.canvas.data is not None else ()
            text = "  ".join(square.format(self.canvas.colours.get(n, QColor("#888888")).name(), n)
                             for n in names)
            text = f"Fill: the model's class, stronger where it is surer. {text}. Frames: labels."
        elif overlay == "Uncertainty":
            text = (f"Fill: uncertainty (entropy / log C), {square.format('#FFF299', 'sure')} to "
                    f"{square.format('#FF1A00', 'unsure')}. Frames: labels.")
        elif overlay == "Tissue":
            text = "Fill: the tissue fraction found under each patch."
        else:
            text = "The patch grid; frames: labels."
        self.legend.setText(text)

    def _set_opacity(self, value: int) -> None:
        self.canvas.opacity = value / 100
        self.canvas.update()

    def shutdown(self) -> None:
        self._background.wait()


def install_slide_view(window) -> SlideView:
    """Add the Slides tab to a main window and wire it: clicking a patch labels it in the query
    view; View > Show on slide (Ctrl+L) goes back from the query view's current patch."""
    view = SlideView(window.ws)
    window.slide_view = view
    window.tabs.addTab(view, "Slides")

    def label_patch(image_id: int) -> None:
        window.query_view.show_chosen([image_id], "chosen on the slide", view.known_top([image_id]))
        window.tabs.setCurrentWidget(window.query_view)

    view.label_patch.connect(label_patch)

    def back_to_slide() -> None:
        tile = window.query_view.model.row_data(window.query_view.grid.current_row())
        if tile is not None and view.show_patch(tile.image_id):
            window.tabs.setCurrentWidget(view)

    action = QAction("Show on &slide", window)
    action.setShortcut(QKeySequence("Ctrl+L"))
    action.setToolTip("Show the current patch where it lies on its slide")
    action.triggered.connect(back_to_slide)
    window.addAction(action)
    view_menu = next((a.menu() for a in window.menuBar().actions() if a.text() == "&View"), None)
    if view_menu is not None:
        view_menu.addAction(action)
    window.runner.finished.connect(lambda *_: view.refresh_slides())  # new slides, new scores
    return view
