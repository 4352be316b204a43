"""One image at full resolution, with zoom (wheel, +/-, 0 to fit) and pan (drag).

The file is decoded off the GUI thread; the window opens at once and shows
"Loading…" until the pixels arrive. It is not modal: labelling goes on.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QKeyEvent, QPainter, QPixmap, QWheelEvent
from PySide6.QtWidgets import (
    QDialog,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QLabel,
    QVBoxLayout,
)

from atl_desktop.gui.thumbnails import FullImageLoader

ZOOM_STEP = 1.25


class ZoomView(QGraphicsView):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)  # show real pixels
        self.item: QGraphicsPixmapItem | None = None
        self.user_zoomed = False  # once the user zooms, a resize keeps their view

    def set_pixmap(self, pixmap: QPixmap) -> None:
        self.scene().clear()
        self.item = self.scene().addPixmap(pixmap)
        self.setSceneRect(self.item.boundingRect())
        self.fit()

    def fit(self) -> None:
        if self.item is not None:
            self.fitInView(self.item, Qt.AspectRatioMode.KeepAspectRatio)

    def zoom(self, factor: float) -> None:
        self.user_zoomed = True
        self.scale(factor, factor)

    def wheelEvent(self, event: QWheelEvent) -> None:
        self.zoom(ZOOM_STEP if event.angleDelta().y() > 0 else 1 / ZOOM_STEP)


class ImageViewer(QDialog):
    def __init__(self, path: Path, title: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.resize(900, 700)
        self.view = ZoomView(self)
        self.status = QLabel("Loading…")
        layout = QVBoxLayout(self)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.status)
        self.path = path
        self.loader = FullImageLoader(self)
        self.loader.loaded.connect(self._loaded)
        self.loader.load(path)

    def _loaded(self, path: Path, image: QImage) -> None:
        if image.isNull():
            self.status.setText(f"Cannot read {path}")
            return
        self.view.set_pixmap(QPixmap.fromImage(image))  # QPixmap: GUI thread only
        self.status.setText(
            f"{path.name} · {image.width()} × {image.height()} px · wheel or +/− zoom, "
            "drag to pan, 0 fits, Esc closes")

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.view.zoom(ZOOM_STEP)
        elif key == Qt.Key.Key_Minus:
            self.view.zoom(1 / ZOOM_STEP)
        elif key == Qt.Key.Key_0:
            self.view.user_zoomed = False
            self.view.fit()
        else:
            super().keyPressEvent(event)

    def closeEvent(self, event) -> None:
        self.loader.shutdown()
        super().closeEvent(event)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if not self.view.user_zoomed:
            self.view.fit()
