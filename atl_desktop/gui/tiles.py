"""A grid of large image tiles: the thumbnail, a frame in the label's colour, and a few
lines of text under it. Used by the query view and the pseudo-label review."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from PySide6.QtCore import QEvent, QModelIndex, QPoint, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QKeyEvent, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate, QToolTip

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

    def helpEvent(self, event, view, option, index) -> bool:
        """The tooltip: the whole caption (names the tile may cut), then the model's own tip."""
        if event.type() != QEvent.Type.ToolTip or not index.isValid():
            return super().helpEvent(event, view, option, index)
        lines = [line for line in self.describe(index) if line]
        own = index.data(Qt.ItemDataRole.ToolTipRole)
        if own:
            lines.append(str(own))
        QToolTip.showText(event.globalPos(), "\n".join(lines), view)
        return True

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
        second_lines = wrap_list(painter.fontMetrics(), second, self.side, TEXT_LINES - 2) if second else []
        for k, part in enumerate(second_lines):
            _one_line(painter, QRect(text.left(), text.top() + (1 + k) * line, self.side, line), part)
        rest = text.adjusted(0, (1 + len(second_lines)) * line, 0, 0)
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
    text = metrics.elidedText(text, Qt.TextElideMode.ElideMiddle, box.width() - 16)
    rect = QRect(box.left() + 4, box.top() + 4, metrics.horizontalAdvance(text) + 12,
                 metrics.height() + 4)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(colour)
    painter.drawRoundedRect(rect, 4, 4)
    painter.setPen(QColor("black") if colour.lightness() > 150 else QColor("white"))
    painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)


def fit_one_line(metrics: QFontMetrics, text: str, width: int) -> str:
    """`text` in `width` pixels. Class names are long and differ at both ends
    ("cancer_associated_stroma", "colorectal_adenocarcinoma_epithelium"), so a name is cut in
    its middle, never its percentage; in a list ("14% mucus, 12% cancer_associated_stroma")
    the items that fit stay whole and the long ones share what is left. The tile's tooltip
    has the whole text."""
    if metrics.horizontalAdvance(text) <= width:
        return text
    parts = text.split(", ")
    room = width - metrics.horizontalAdvance(", ") * (len(parts) - 1)
    widths = {i: metrics.horizontalAdvance(p) for i, p in enumerate(parts)}
    long = set(widths)
    while long:  # give short items their width; the long ones split the rest evenly
        share = room // len(long)
        short = {i for i in long if widths[i] <= share}
        if not short:
            break
        room -= sum(widths[i] for i in short)
        long -= short
    share = room // max(1, len(long))
    return ", ".join(_elide_name(metrics, p, share) if i in long else p for i, p in enumerate(parts))


def wrap_list(metrics: QFontMetrics, text: str, width: int, max_lines: int) -> list[str]:
    """A list ("18% background, 14% mucus") on as few lines as it needs, up to `max_lines`,
    breaking between items; what still does not fit is cut by `fit_one_line`."""
    lines: list[str] = []
    for part in text.split(", "):
        joined = f"{lines[-1]}, {part}" if lines else part
        if lines and metrics.horizontalAdvance(joined) <= width:
            lines[-1] = joined
        elif len(lines) < max_lines:
            lines.append(part)
        else:
            lines[-1] = joined
    return [fit_one_line(metrics, line, width) for line in lines]


def _elide_name(metrics: QFontMetrics, text: str, width: int) -> str:
    number, space, name = text.partition(" ")
    if not (space and number.endswith("%")):
        return metrics.elidedText(text, Qt.TextElideMode.ElideMiddle, width)
    prefix = number + space
    return prefix + metrics.elidedText(name, Qt.TextElideMode.ElideMiddle,
                                       width - metrics.horizontalAdvance(prefix))


def _one_line(painter: QPainter, rect: QRect, text: str) -> None:
    elided = fit_one_line(painter.fontMetrics(), text, rect.width())
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
