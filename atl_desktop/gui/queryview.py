"""The queried batch as a grid of large tiles, labelled from the keyboard.

Keys: a class's key (1-9 by default) labels the current image and moves on;
arrows move; Space accepts the model's top prediction; X marks it "unsure"
(it stays unlabelled, shown as skipped; skips are kept in the project's
settings); Backspace undoes; Enter opens the image at full resolution.
The last batch is kept in the project's settings ("last_query"), so reopening
the project shows it again.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPoint, QRect, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QKeyEvent, QPainter, QPen
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.gui.background import Background
from atl_desktop.gui.models import Prediction, QueryBatchModel, QueryTile, TileRole
from atl_desktop.gui.tiles import PAD, TileDelegate, TileGrid, add_similar_menu
from atl_desktop.gui.undo import SetLabel, SetSkipped, skipped_images
from atl_desktop.gui.workspace import Workspace
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import LAST_QUERY, LAST_QUERY_ROUND

FALLBACK_STRATEGIES = ("entropy", "margin", "least_confidence", "random")
DEFAULT_STRATEGY = "entropy"
EMPTY_TEXT = "No queried images yet — choose a strategy and press Query next batch."
KEYS_HELP = ("Keys: 1–9 (or a class's key) label and move on · Space accepts the suggestion · "
             "X unsure · arrows move · Backspace undo · Enter full size")


def registered_strategies() -> dict[str, str]:
    """Strategy name -> what it does, from the engine's registry (slow: it imports torch)."""
    try:
        from atl_desktop.active import STRATEGIES
    except ImportError:
        return {}
    return {name: getattr(strategy, "help", "") for name, strategy in STRATEGIES.items()}


def _class_names_for_round(project: Project, round_id: int | None) -> list[str]:
    """The names behind the model's output positions: the project's classes for a head fitted
    on embeddings, else the round's checkpoint's, else the latest's."""
    record = next((r for r in project.rounds() if r.id == round_id), None)
    if record is not None and record.params.get("embeddings"):
        return project.class_names()
    checkpoint = None
    if record is not None and record.checkpoint_id is not None:
        checkpoint = project.checkpoint(record.checkpoint_id)
    checkpoint = checkpoint or project.latest_checkpoint()
    return list(checkpoint.classes) if checkpoint is not None else project.class_names()


def tiles_from_items(project: Project, items: list[dict], round_id: int | None) -> list[QueryTile]:
    names = _class_names_for_round(project, round_id)
    by_name = {c.name: c.id for c in project.classes()}
    tiles = []
    for item in items:
        top = []
        for position, probability in item.get("top", []):
            name = names[position] if 0 <= position < len(names) else f"class {position}"
            top.append(Prediction(by_name.get(name), name, float(probability)))
        tiles.append(QueryTile(int(item["image_id"]), float(item.get("score", 0.0)),
                               str(item.get("reason", "")), tuple(top), bool(item.get("synthetic", False))))
    return tiles


def _exists(project: Project, image_id: int) -> bool:
    try:
        project.image(image_id)
    except ProjectError:
        return False
    return True


def result_to_items(result: Any) -> list[dict]:
    """A session QueryResult as JSON-ready dicts (what LAST_QUERY stores)."""
    return [
        {"image_id": int(i.image_id), "score": float(i.score), "reason": str(i.reason),
         "top": [[int(pos), float(p)] for pos, p in i.top], "synthetic": bool(getattr(i, "synthetic", False))}
        for i in result.items
    ]


SYNTHETIC_BADGE = "SYNTHETIC (GAN)"
SYNTHETIC_COLOUR = QColor("#7B1FA2")  # purple: no class colour and no state uses it


class QueryTileDelegate(TileDelegate):
    """A tile, and for an image made by the GAN a dashed purple frame with a badge, so that
    nobody mistakes it for a real image."""

    def paint(self, painter: QPainter, option, index) -> None:
        super().paint(painter, option, index)
        tile = index.data(TileRole)
        if tile is None or not tile.synthetic:
            return
        card = option.rect.adjusted(3, 3, -3, -3)
        box = QRect(card.left() + PAD - 3, card.top() + PAD - 3, self.side, self.side)
        painter.save()
        painter.setPen(QPen(SYNTHETIC_COLOUR, 3, Qt.PenStyle.DashLine))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(box.adjusted(1, 1, -1, -1))
        metrics = painter.fontMetrics()
        badge = QRect(0, 0, metrics.horizontalAdvance(SYNTHETIC_BADGE) + 12, metrics.height() + 4)
        badge.moveBottomRight(box.bottomRight() - QPoint(4, 4))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(SYNTHETIC_COLOUR)
        painter.drawRoundedRect(badge, 4, 4)
        painter.setPen(QColor("white"))
        painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, SYNTHETIC_BADGE)
        painter.restore()


class QueryView(QWidget):
    """The grid of images to label. Subclasses (the possible label errors) replace the toolbar
    and the texts, and keep the keys and the labels' provenance."""

    keys_help = KEYS_HELP
    empty_text = EMPTY_TEXT
    query_requested = Signal(str, int)  # strategy, batch size
    train_requested = Signal()
    open_image = Signal(int)  # image id
    similar_requested = Signal(int)  # image id: show more images like it

    def __init__(self, workspace: Workspace, parent=None, load_strategies: bool = True):
        super().__init__(parent)
        self.ws = workspace
        self.round_id: int | None = None
        self.strategy: str | None = None
        self.checkpoint_id: int | None = None
        self._open_round_strategy: str | None = None  # shown in the box once the registry is read
        self.model = QueryBatchModel(self)
        self._build()
        workspace.changed.connect(self.refresh)
        workspace.blind_changed.connect(lambda _: self.grid.viewport().update())
        workspace.thumbs.ready.connect(lambda _: self.grid.viewport().update())
        self._background = Background(self)
        self._live = Background(self)  # the live head's refits, one at a time
        self._live_busy = self._live_again = False
        self._live_pool: tuple[int | None, Any] = (None, None)  # (round, its pool ids), read once
        if load_strategies:  # the fixed list until the registry has been imported
            self._background.call(registered_strategies, self.set_strategies)

    # ---- layout --------------------------------------------------------------

    def _build(self) -> None:
        self.summary = QLabel()
        self.summary.setTextFormat(Qt.TextFormat.PlainText)
        help_label = QLabel(self.keys_help)
        help_label.setWordWrap(True)
        help_label.setStyleSheet("color: palette(placeholder-text);")

        self.grid = TileGrid()
        self.grid.setModel(self.model)
        self.grid.setItemDelegate(QueryTileDelegate(self.ws, self._describe, self.grid))
        self.grid.key_handler = self._on_key
        self.grid.doubleClicked.connect(lambda index: self.open_image.emit(index.data(TileRole).image_id))
        add_similar_menu(self.grid, lambda index: index.data(TileRole).image_id, self.similar_requested)
        self.empty = QLabel(self.empty_text)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet("font-size: 13pt; color: palette(placeholder-text);")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.grid)

        layout = QVBoxLayout(self)
        layout.addLayout(self._toolbar())
        layout.addWidget(self.summary)
        layout.addWidget(help_label)
        layout.addWidget(self.stack, 1)

    def _toolbar(self) -> QHBoxLayout:
        """The row above the grid: strategy, batch size, Query and Train."""
        self.strategy_box = QComboBox()
        self.set_strategies({name: "" for name in FALLBACK_STRATEGIES})
        self.strategy_box.setToolTip("How the next batch is chosen from the unlabelled pool")
        self.batch_box = QSpinBox()
        self.batch_box.setRange(1, 1000)
        self.batch_box.setValue(16)
        self.batch_box.setToolTip("How many images to label in this round")
        self.query_button = QPushButton("Query next batch")
        self.query_button.clicked.connect(
            lambda: self.query_requested.emit(self.strategy_box.currentText(), self.batch_box.value()))
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Fine-tune the model on every label so far")
        self.train_button.clicked.connect(self.train_requested)
        bar = QHBoxLayout()
        for widget in (QLabel("Strategy"), self.strategy_box, QLabel("Batch"), self.batch_box,
                       self.query_button, self.train_button):
            bar.addWidget(widget)
        bar.addStretch(1)
        return bar

    def set_strategies(self, strategies) -> None:
        if not isinstance(strategies, dict) or not strategies:
            return  # the registry could not be read: keep the list shown
        current = self._open_round_strategy or self.strategy_box.currentText() or DEFAULT_STRATEGY
        self.strategy_box.clear()
        for name, help_text in strategies.items():
            self.strategy_box.addItem(name)
            self.strategy_box.setItemData(self.strategy_box.count() - 1, help_text,
                                          Qt.ItemDataRole.ToolTipRole)
        self.strategy_box.setCurrentText(current if current in strategies else next(iter(strategies)))

    def shutdown(self) -> None:
        self._background.wait()
        self._live.wait()

    def set_busy(self, busy: bool) -> None:
        """While a model job runs, starting another is pointless; labelling goes on."""
        self.query_button.setEnabled(not busy)
        self.train_button.setEnabled(not busy)

    # ---- the batch -------------------------------------------------------------

    def show_result(self, result: Any) -> None:
        """Show a finished query (a session QueryResult) and keep it for next time."""
        items = result_to_items(result)
        self.ws.project.set_setting(LAST_QUERY, items)
        self.ws.project.set_setting(LAST_QUERY_ROUND, result.round_id)
        self._show_items(items, result.round_id)
        self.grid.setFocus()

    def show_chosen(self, image_ids: list[int], reason: str = "chosen in the pool browser",
                    top: dict[int, list] | None = None, reasons: dict[int, str] | None = None) -> None:
        """Label images picked by hand, one by one, like a queried batch (no round).

        `top` may give an image's known predictions, [[class position, p], ...]; `reasons`
        an image's own reason instead of `reason`.
        """
        items = [{"image_id": int(i), "score": 0.0, "reason": (reasons or {}).get(i, reason),
                  "top": (top or {}).get(i, [])} for i in image_ids]
        self.ws.project.set_setting(LAST_QUERY, items)
        self.ws.project.set_setting(LAST_QUERY_ROUND, None)
        self._show_items(items, None)
        self.grid.setFocus()

    def load_saved(self) -> None:
        """The last batch shown here; or, when a newer round was opened elsewhere (`atl query`),
        that round's images, whose suggestions the live head then fills in."""
        project = self.ws.project
        items, round_id = project.get_setting(LAST_QUERY, []) or [], project.get_setting(LAST_QUERY_ROUND)
        newest = next((r for r in reversed(project.rounds()) if r.finished is None), None)
        if newest is not None and newest.id != round_id and newest.params.get("chosen"):
            reason = f"chosen by {newest.strategy} in round {newest.id}"
            items = [{"image_id": int(i), "score": 0.0, "reason": reason, "top": []}
                     for i in newest.params["chosen"]]
            round_id = newest.id
        self._show_items(items, round_id)

    def _show_items(self, items: list[dict], round_id: int | None) -> None:
        project = self.ws.project
        self.round_id = round_id
        record = next((r for r in project.rounds() if r.id == round_id), None)
        self.strategy = record.strategy if record is not None else None
        self.checkpoint_id = record.checkpoint_id if record is not None else None
        if record is not None and record.finished is None:  # the open round's settings, not stale defaults
            self.batch_box.setValue(int(record.params.get("batch", len(items)) or len(items)))
            self._open_round_strategy = record.strategy
            if self.strategy_box.findText(record.strategy) >= 0:
                self.strategy_box.setCurrentText(record.strategy)
        if self.checkpoint_id is None and (latest := project.latest_checkpoint()) is not None:
            self.checkpoint_id = latest.id
        known = {i for i in {int(item["image_id"]) for item in items} if _exists(project, i)}  # not all ids
        tiles = [t for t in tiles_from_items(project, items, round_id) if t.image_id in known]
        self.model.set_batch(tiles)
        self.stack.setCurrentWidget(self.grid if tiles else self.empty)
        self.refresh()
        if tiles:
            # Scroll again once the grid has laid itself out; before, it scrolls astray.
            self.grid.select_row(self._first_unlabelled())
            QTimer.singleShot(0, self.grid, lambda: self.grid.scrollTo(self.grid.currentIndex()))

    def refresh(self) -> None:
        try:
            skipped = skipped_images(self.ws.project)
            self.model.refresh_state(self.ws.project, self.ws.book(), skipped)
        except ProjectError:
            return  # the project is closing
        tiles = self.model.tiles()
        if not tiles:
            self.summary.setText("")
            return
        self._refit_suggestions()
        labelled = sum(1 for t in tiles if self.model.label(t.image_id) is not None)
        skips = sum(1 for t in tiles if t.image_id in skipped and self.model.label(t.image_id) is None)
        parts = [f"Round {self.round_id}" if self.round_id is not None else "Last batch"]
        if self.strategy:
            parts.append(self.strategy)
        if any(t.synthetic for t in tiles):
            parts.append("synthetic images made by the GAN (GAAL)")
        parts.append(f"{len(tiles)} images: {labelled} labelled, {skips} skipped, "
                     f"{len(tiles) - labelled - skips} to go")
        self.summary.setText(" · ".join(parts))

    # ---- the live head: suggestions refitted after every label -----------------------

    def _refit_suggestions(self) -> None:
        """When the batch was chosen on cached embeddings, refit its head on every label so
        far, off the GUI thread, and show the new suggestions on the tiles still to label."""
        if self._live_busy:
            self._live_again = True  # one more refit once this one is back
            return
        live = self._live_inputs()
        if live is None:
            return
        wanted = [t.image_id for t in self.model.tiles() if self.model.label(t.image_id) is None]
        if not wanted:
            return
        from atl_desktop.loop.session import live_suggestions

        self._live_busy = True
        self._live.call(lambda: live_suggestions(live, wanted), self._show_suggestions)

    def _live_inputs(self):
        from dataclasses import replace

        from atl_desktop.loop.session import live_head, training_positions

        project = self.ws.project
        if self.round_id is None:
            return None
        if self._live_pool[0] != self.round_id:
            live = live_head(project, self.round_id)
            self._live_pool = (self.round_id, live)
            return live
        cached = self._live_pool[1]
        if cached is None:
            return None
        # Only the labels are read again (a model never learns from held-out audit images).
        labels = training_positions(project)
        return replace(cached, labels=labels, num_classes=len(project.class_index()),
                       hidden=frozenset(project.audit_ids()))

    def _show_suggestions(self, result) -> None:
        self._live_busy = False
        if isinstance(result, dict) and result:
            names = self.ws.project.class_names()
            by_name = {c.name: c.id for c in self.ws.project.classes()}
            top = {image_id: tuple(Prediction(by_name.get(names[c]), names[c], p) for c, p in pairs
                                   if 0 <= c < len(names))
                   for image_id, pairs in result.items()}
            self.model.update_predictions(top)
        if self._live_again:
            self._live_again = False
            self._refit_suggestions()

    def _first_unlabelled(self) -> int:
        for row, tile in enumerate(self.model.tiles()):
            if self.model.label(tile.image_id) is None:
                return row
        return 0

    def _describe(self, index) -> tuple[str, str, str]:
        """Under each tile: the top prediction, the runners-up, then why it was chosen."""
        tile: QueryTile = index.data(TileRole)
        if self.ws.blind:
            return "Suggestion hidden (blind mode)", "", tile.reason
        if not tile.top:
            return "No prediction yet", "", tile.reason
        best, *others = tile.top[:3]
        runners_up = ", ".join(f"{p.probability:.0%} {p.name}" for p in others)
        return f"{best.probability:.0%} {best.name}", runners_up, tile.reason

    # ---- labelling -------------------------------------------------------------

    def label_kwargs(self, tile: QueryTile) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "annotator": self.ws.annotator, "round": self.round_id,
            "checkpoint_id": self.checkpoint_id, "strategy": self.strategy,
        }
        if not self.ws.blind and tile.top:
            kwargs["suggestion"] = tile.top[0].class_id
            kwargs["suggestion_confidence"] = tile.top[0].probability
        return kwargs

    def label_current(self, class_id: int) -> bool:
        row = self.grid.current_row()
        tile = self.model.row_data(row)
        if tile is None:
            return False
        record = self.ws.book().by_id(class_id)
        name = record.name if record is not None else str(class_id)
        command = SetLabel(self.ws.project, tile.image_id, class_id, self.label_kwargs(tile),
                           text=f"Label image {tile.image_id} as {name}", report=self.ws.report)
        if self.ws.do(command):
            self.grid.select_row(row + 1)
        return True

    def accept_suggestion(self) -> bool:
        tile = self.model.row_data(self.grid.current_row())
        if tile is None or self.ws.blind or not tile.top or tile.top[0].class_id is None:
            return False
        return self.label_current(tile.top[0].class_id)

    def skip_current(self) -> bool:
        row = self.grid.current_row()
        tile = self.model.row_data(row)
        if tile is None:
            return False
        if self.ws.do(SetSkipped(self.ws.project, tile.image_id, True, report=self.ws.report)):
            self.grid.select_row(row + 1)
        return True

    def _on_key(self, event: QKeyEvent) -> bool:
        key = event.key()
        plain = not (event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier)
        if key == Qt.Key.Key_Backspace:
            self.ws.stack.undo()
            return True
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            tile = self.model.row_data(self.grid.current_row())
            if tile is not None:
                self.open_image.emit(tile.image_id)
            return True
        if not plain:
            return False
        if key == Qt.Key.Key_Space:
            self.accept_suggestion()
            return True
        if key == Qt.Key.Key_X:  # reserved: the class panel never gives a class this key
            return self.skip_current()
        record = self.ws.book().by_key(event.text())
        if record is not None:
            return self.label_current(record.id)
        if key == Qt.Key.Key_M:  # reserved for new classes; a project's older class key wins
            tile = self.model.row_data(self.grid.current_row())
            if tile is not None and not tile.synthetic:
                self.similar_requested.emit(tile.image_id)
            return True
        return False
