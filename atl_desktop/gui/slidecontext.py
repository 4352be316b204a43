"""Context insets: a patch of a slide shown with its surroundings, in a corner of its tile.

A clinician judging a 224-pixel patch wants to see where it sits. For a patch,
the tile gets an inset with an area four times the patch's side around it, the
patch outlined. The pixels are read from the slide on a worker thread; the
inset appears when they arrive.
"""

from __future__ import annotations

from collections import OrderedDict

from PySide6.QtCore import QObject, QRect, QRectF, QRunnable, Qt, QThreadPool, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen

from atl_desktop.gui.thumbnails import to_qimage
from atl_desktop.store import PatchRef

CONTEXT_FACTOR = 4.0  # the inset spans this many patch sides
INSET_SIDE = 72  # pixels of the inset image
CAPACITY = 500


class _Signals(QObject):
    done = Signal(int, object, object)  # image id, QImage, (x0, y0, x1, y1) of the patch


class _ReadContext(QRunnable):
    def __init__(self, image_id: int, ref: PatchRef, signals: _Signals):
        super().__init__()
        self.image_id, self.ref, self.signals = image_id, ref, signals

    def run(self) -> None:
        try:
            from atl_desktop.data.slides import read_context

            image, box = read_context(self.ref, CONTEXT_FACTOR, INSET_SIDE)
            self.signals.done.emit(self.image_id, to_qimage(image), box)
        except Exception:  # a missing slide shows no inset, never stops the view
            self.signals.done.emit(self.image_id, QImage(), None)


class ContextInsets(QObject):
    """Reads and keeps context images; `draw` paints one into a tile (or nothing, for an image
    that is not a patch, or while it loads). `ready` fires when one arrives."""

    ready = Signal(int)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._images: OrderedDict[int, tuple[QImage, tuple | None]] = OrderedDict()
        self._pending: set[int] = set()
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._signals = _Signals()
        self._signals.done.connect(self._store)

    def get(self, image_id: int, ref: PatchRef) -> tuple[QImage, tuple | None] | None:
        cached = self._images.get(image_id)
        if cached is not None:
            self._images.move_to_end(image_id)
            return cached
        if image_id not in self._pending:
            self._pending.add(image_id)
            self._pool.start(_ReadContext(image_id, ref, self._signals))
        return None

    def _store(self, image_id: int, image: QImage, box) -> None:
        self._pending.discard(image_id)
        self._images[image_id] = (image, box)
        while len(self._images) > CAPACITY:
            self._images.popitem(last=False)
        self.ready.emit(image_id)

    def draw(self, painter: QPainter, tile: QRect, image_id: int, path) -> None:
        if not isinstance(path, PatchRef):
            return
        cached = self.get(image_id, path)
        if cached is None or cached[0].isNull():
            return
        image, (x0, y0, x1, y1) = cached
        side = min(INSET_SIDE, tile.width() // 2)
        inset = QRect(tile.right() - side - 3, tile.bottom() - side - 3, side, side)
        painter.save()
        painter.setPen(QPen(QColor("white"), 3))
        painter.drawRect(inset.adjusted(-1, -1, 1, 1))
        painter.drawImage(inset, image)
        painter.setPen(QPen(QColor("#111111"), 1.5))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(QRectF(inset.left() + x0 * side, inset.top() + y0 * side,
                                (x1 - x0) * side, (y1 - y0) * side))
        painter.restore()

    def shutdown(self) -> None:
        self._pool.clear()
        self._pool.waitForDone()
