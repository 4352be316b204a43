"""A grid of large image tiles: the thumbnail, a frame in the label's colour, and a few
lines of text under it. Used by the query view and the pseudo-label review."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from PySide6.QtCore import QModelIndex, QPoint, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QKeyEvent, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate

from atl_desktop.gui.models import ImageIdRole, LabelRole, StateRole, class_colour
from atl_desktop.gui.slidecontext import ContextInsets
from atl_desktop.gui.workspace import Workspace

PAD = 8
TEXT_LINES = 4
SCALED_CACHE = 400  # scaled pixmaps kept by each grid (a few screens' worth)


class TileDelegate(QStyledItemDelegate):
    """Paints one tile. `describe(index)` gives the text under the image: a bold headline,
    a second line (may be empty), and details wrapped into what room is left."""

    def __init__(self, workspace: Workspace,
                 describe: Callable[[QModelIndex], tuple[str, str, str]],
                 parent=None):
        super().__init__(parent)
        self.ws = workspace
        self.describe = describe
        self.side = workspace.thumbs.side
        self._paths: dict[int, object] = {}
        # Thumbnails scaled to their box once: scaling at every paint made a repaint slow.
        self._scaled: OrderedDict[tuple[int, int, int], QPixmap] = OrderedDict()
        self.insets = ContextInsets(self)  # patches of slides: their surroundings, in a corner
        if parent is not None:
            self.insets.ready.connect(lambda _: parent.viewport().update())

    def sizeHint(self, option, index) -> QSize:
        line = QFontMetrics(option.font).lineSpacing()
        return QSize(self.side + 2 * PAD, self.side + 3 * PAD + TEXT_LINES * line)

    def _thumbnail(self, image_id: int):
        path = self._paths.get(image_id)
        if path is None:
            path = self._paths[image_id] = self.ws.image_path(image_id)
        return self.ws.thumbs.get(image_id, path)

    def paint(self, painter: QPainter, option, index) -> None:
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = option.palette
        card = option.rect.adjusted(3, 3, -3, -3)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        state = index.data(StateRole) or ""
        painter.setPen(QPen(palette.highlight().color(), 3) if selected else QPen(palette.mid().color(), 1))
        painter.setBrush(palette.base())
        painter.drawRoundedRect(card, 6, 6)

        box = QRect(card.left() + PAD - 3, card.top() + PAD - 3, self.side, self.side)
        self._draw_image(painter, box, index)
        self._draw_state(painter, box, state, index)

        line = QFontMetrics(option.font).lineSpacing()
        text = QRect(box.left(), box.bottom() + PAD, self.side, TEXT_LINES * line)
        headline, second, detail = self.describe(index)
        bold = QFont(option.font)
        bold.setBold(True)
        painter.setPen(palette.text().color())
        painter.setFont(bold)
        _one_line(painter, QRect(text.left(), text.top(), self.side, line), headline)
        painter.setFont(option.font)
        painter.setPen(palette.placeholderText().color())
        if second:
            _one_line(painter, QRect(text.left(), text.top() + line, self.side, line), second)
        rest = text.adjusted(0, (2 if second else 1) * line, 0, 0)
        painter.drawText(rest, Qt.TextFlag.TextWordWrap, _fit_lines(detail, option.font, rest))
        painter.restore()

    def _draw_image(self, painter: QPainter, box: QRect, index) -> None:
        image = self._thumbnail(index.data(ImageIdRole))
        if image is None or image.isNull():
            painter.fillRect(box, QColor("#EEEEEE"))
            painter.setPen(QColor("#777777"))
            message = "Loading…" if image is None else "Cannot read this image"
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, message)
            return
        pixmap = self._pixmap(index.data(ImageIdRole), image, box.size())
        target = QRect(0, 0, pixmap.width(), pixmap.height())
        target.moveCenter(box.center())
        painter.drawPixmap(target.topLeft(), pixmap)
        image_id = index.data(ImageIdRole)
        self.insets.draw(painter, box, image_id, self._paths.get(image_id))

    def _pixmap(self, image_id: int, image, box: QSize) -> QPixmap:
        key = (image_id, box.width(), box.height())
        pixmap = self._scaled.get(key)
        if pixmap is None or pixmap.cacheKey() == 0:
            size = image.size().scaled(box, Qt.AspectRatioMode.KeepAspectRatio)
            pixmap = QPixmap.fromImage(image.scaled(size, Qt.AspectRatioMode.IgnoreAspectRatio,
                                                    Qt.TransformationMode.FastTransformation))
            self._scaled[key] = pixmap
            while len(self._scaled) > SCALED_CACHE:
                self._scaled.popitem(last=False)
        self._scaled.move_to_end(key)
        return pixmap

    def forget(self, image_id: int) -> None:
        for key in [k for k in self._scaled if k[0] == image_id]:
            del self._scaled[key]

    def _draw_state(self, painter: QPainter, box: QRect, state: str, index) -> None:
        if state == "labelled":
            record = index.data(LabelRole)
            colour = class_colour(record)
            painter.setPen(QPen(colour, 6))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(box.adjusted(3, 3, -3, -3))
            _chip(painter, box, record.name if record else "", colour)
        elif state == "skipped":
            painter.fillRect(box, QColor(255, 255, 255, 150))
            _chip(painter, box, "Skipped (unsure)", QColor("#666666"))
        elif state == "wrong":
            painter.fillRect(box, QColor(255, 255, 255, 120))
            painter.setPen(QPen(QColor("#C62828"), 6))
            painter.drawLine(box.topLeft() + _pt(20), box.bottomRight() - _pt(20))
            painter.drawLine(box.topRight() + _pt(-20, 20), box.bottomLeft() + _pt(20, -20))
            _chip(painter, box, "Wrong: will be rejected", QColor("#C62828"))


def _pt(x: int, y: int | None = None) -> QPoint:
    return QPoint(x, x if y is None else y)


def _chip(painter: QPainter, box: QRect, text: str, colour: QColor) -> None:
    """A small coloured label in the tile's top-left corner."""
    metrics = painter.fontMetrics()
    text = metrics.elidedText(text, Qt.TextElideMode.ElideRight, box.width() - 16)
    rect = QRect(box.left() + 4, box.top() + 4, metrics.horizontalAdvance(text) + 12,
                 metrics.height() + 4)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(colour)
    painter.drawRoundedRect(rect, 4, 4)
    painter.setPen(QColor("black") if colour.lightness() > 150 else QColor("white"))
    painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)


def _one_line(painter: QPainter, rect: QRect, text: str) -> None:
    elided = painter.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, rect.width())
    painter.drawText(rect, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, elided)


def _fit_lines(text: str, font: QFont, rect: QRect) -> str:
    """Elide wrapped text so it never spills out of `rect` (no half-clipped last line)."""
    metrics = QFontMetrics(font)
    flags = Qt.TextFlag.TextWordWrap
    if metrics.boundingRect(rect, flags, text).height() <= rect.height():
        return text
    while " " in text.strip() or "\n" in text.strip():
        text = text.rsplit(None, 1)[0]  # drop the last word, keep the line breaks before it
        candidate = text + "…"
        if metrics.boundingRect(rect, flags, candidate).height() <= rect.height():
            return candidate
    return ""


class TileGrid(QListView):
    """A wrapping grid of tiles; `key_handler(event)` sees keys first and may consume them."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setSpacing(4)
        self.setWrapping(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.key_handler: Callable[[QKeyEvent], bool] | None = None

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if self.key_handler is not None and self.key_handler(event):
            event.accept()
            return
        super().keyPressEvent(event)

    def current_row(self) -> int:
        index = self.currentIndex()
        return index.row() if index.isValid() else -1

    def select_row(self, row: int) -> None:
        model = self.model()
        if model is None or not 0 <= row < model.rowCount():
            return
        index = model.index(row, 0)
        self.setCurrentIndex(index)
        self.scrollTo(index)


def add_similar_menu(grid: QListView, image_id_of: Callable[[QModelIndex], int | None], signal) -> None:
    """A context menu on a grid's tiles with "More like this (M)", which emits `signal(image id)`."""
    from PySide6.QtWidgets import QMenu

    def show(point: QPoint) -> None:
        index = grid.indexAt(point)
        image_id = image_id_of(index) if index.isValid() else None
        if image_id is None:
            return
        menu = QMenu(grid)
        action = menu.addAction("More like this (M)")
        action.setToolTip("The unlabelled images nearest to this one in the encoder's embedding space")
        action.triggered.connect(lambda: signal.emit(int(image_id)))
        menu.exec(grid.viewport().mapToGlobal(point))

    grid.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
    grid.customContextMenuRequested.connect(show)
