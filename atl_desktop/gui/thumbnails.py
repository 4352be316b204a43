"""Thumbnails decoded off the GUI thread and kept in an LRU cache of QImages.

Views ask `ThumbnailCache.get(image_id, path)`: a cached QImage comes back at
once; otherwise None, a decode is queued on a small thread pool, and `ready`
fires with the image id when it is in the cache. QImage is safe to build in a
worker thread; QPixmaps are only made on the GUI thread (the views draw the
QImage directly). The cache itself is only touched on the GUI thread; workers
only decode. The same decoding serves the full-resolution viewer.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage

from atl_desktop.gui.gcguard import collect_on_gui_thread

# Images smaller than this are enlarged by a whole factor with nearest-neighbour
# sampling, so a 28-pixel tile shows its pixels instead of a blur.
SMALL_SIDE = 96


def decode(path: Path, max_side: int | None = None) -> Image.Image:
    """An "RGB" or "L" PIL image; uses the engine's robust decoder when it exists."""
    try:
        from atl_desktop.data.decode import load_image
    except ImportError:
        load_image = None
    if load_image is not None:
        image = load_image(path)
    else:
        with Image.open(path) as raw:
            image = raw.convert("RGB" if raw.mode not in ("L", "RGB") else raw.mode)
    if max_side is not None:
        image = fit(image, max_side)
    return image


def fit(image: Image.Image, side: int) -> Image.Image:
    """Scale to fit a side x side box: small images up by a whole factor, large ones down."""
    longest = max(image.size)
    if longest < SMALL_SIDE:
        factor = max(1, side // longest)
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    if longest > side:
        image = image.copy()
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


def to_qimage(image: Image.Image) -> QImage:
    """A QImage that owns its pixels (safe to hand to another thread)."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    fmt = QImage.Format.Format_Grayscale8 if image.mode == "L" else QImage.Format.Format_RGB888
    channels = 1 if image.mode == "L" else 3
    data = image.tobytes()
    qimage = QImage(data, image.width, image.height, image.width * channels, fmt)
    return qimage.copy()


class _Signals(QObject):
    done = Signal(object, object)  # key, QImage (null when the file could not be read)


class DecodeTask(QRunnable):
    def __init__(self, key, path: Path, max_side: int | None, signals: _Signals):
        super().__init__()
        self.key = key
        self.path = path
        self.max_side = max_side
        self.signals = signals

    def run(self) -> None:
        try:
            qimage = to_qimage(decode(self.path, self.max_side))
        except Exception:  # an unreadable file shows as a placeholder, never stops the view
            qimage = QImage()
        self.signals.done.emit(self.key, qimage)


class ThumbnailCache(QObject):
    """LRU cache of decoded thumbnails, filled by a thread pool."""

    ready = Signal(int)  # image id

    def __init__(self, side: int = 200, capacity: int = 2000, threads: int = 2, parent=None):
        super().__init__(parent)
        collect_on_gui_thread()  # decoder threads must not finalise the window's objects
        self.side = side
        self.capacity = capacity
        self._images: OrderedDict[int, QImage] = OrderedDict()
        self._pending: set[int] = set()
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(threads)
        self._signals = _Signals()
        self._signals.done.connect(self._store)

    def get(self, image_id: int, path) -> QImage | None:
        """The cached thumbnail, or None (a decode is then queued; `ready` follows).
        `path` may be a callable giving the path, called only when a decode is queued."""
        image = self._images.get(image_id)
        if image is not None:
            self._images.move_to_end(image_id)
            return image
        if image_id in self._pending:
            return None
        self._pending.add(image_id)
        self._pool.start(DecodeTask(image_id, path() if callable(path) else path, self.side, self._signals))
        return None

    def _store(self, image_id: int, image: QImage) -> None:
        self._pending.discard(image_id)
        self._images[image_id] = image
        while len(self._images) > self.capacity:
            self._images.popitem(last=False)
        self.ready.emit(image_id)

    def forget(self, image_id: int) -> None:
        self._images.pop(image_id, None)

    def cached(self) -> int:
        return len(self._images)

    def drop_queued(self) -> None:
        """Forget decodes not started yet (tiles scrolled past); views ask again when they paint."""
        self._pool.clear()
        self._pending.clear()

    def resize(self, side: int) -> None:
        """Thumbnails of another size from now on; the cached ones are dropped."""
        self.drop_queued()
        self.side = side
        self._images.clear()

    def wait_idle(self, timeout_ms: int = 30_000) -> bool:
        return self._pool.waitForDone(timeout_ms)

    def shutdown(self) -> None:
        self._pool.clear()
        self._pool.waitForDone()


class FullImageLoader(QObject):
    """Decodes one image at full resolution off the GUI thread, for the viewer."""

    loaded = Signal(object, object)  # path, QImage (null on failure)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._signals = _Signals()
        self._signals.done.connect(self.loaded)

    def load(self, path: Path) -> None:
        self._pool.start(DecodeTask(path, path, None, self._signals))

    def shutdown(self) -> None:
        self._pool.clear()
        self._pool.waitForDone()
