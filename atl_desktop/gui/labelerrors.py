"""Possible label errors: the labels confident learning doubts, most suspicious first.

The check (session.check_labels_job: out-of-fold heads on the cached embeddings, then
confident learning) runs on the job runner, with progress and Cancel in the status bar.
Its suspects are shown as the query view shows a batch, since this view *is* a query view
with its own toolbar: the same keys (a class's key relabels, Space takes the suggested
class, Backspace undoes, Enter opens the image) and the same provenance on each label
(annotator, checkpoint, the suggestion shown and its out-of-fold probability; strategy
"check-labels"). K keeps a label as it is: remembered in the project
(LABELS_KEPT_SETTING, undoable), so the next check does not flag it again.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QKeyEvent, QKeySequence
from PySide6.QtWidgets import QHBoxLayout, QPushButton

from atl_desktop.gui.models import Prediction, QueryTile, TileRole
from atl_desktop.gui.queryview import QueryView
from atl_desktop.gui.undo import StoreCommand
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import LABEL_CHECK_SETTING, LABELS_KEPT_SETTING

JOB = "check-labels"
STRATEGY = "check-labels"  # the provenance of a label given here
KEYS = ("Keys: a class's key relabels · Space takes the suggested class · K keeps the label as it is · "
        "arrows move · Backspace undo · Enter full size")
EMPTY = ("No possible label errors shown. Check labels (Model ▸ Check labels…) cross-validates a head "
         "on the labelled images' embeddings and lists the labels it confidently disagrees with "
         "(confident learning, Northcutt et al. 2021). It needs 10 labels in two classes or more.")


def kept_labels(project: Project) -> dict[str, int]:
    return dict(project.get_setting(LABELS_KEPT_SETTING, {}) or {})


class KeepLabel(StoreCommand):
    """Keep an image's label as it is: the label check stops flagging it while it stays."""

    def __init__(self, project: Project, image_id: int, class_id: int, report=None):
        super().__init__(project, f"Keep the label of image {image_id}", report)
        self.image_id, self.class_id = image_id, class_id
        self.before = kept_labels(project).get(str(image_id))

    def _set(self, class_id: int | None) -> None:
        kept = kept_labels(self.project)
        if class_id is None:
            kept.pop(str(self.image_id), None)
        else:
            kept[str(self.image_id)] = class_id
        self.project.set_setting(LABELS_KEPT_SETTING, kept)

    def apply(self) -> None:
        self._set(self.class_id)

    def revert(self) -> None:
        self._set(self.before)


def suspect_tiles(project: Project, suspects: list[dict]) -> list[QueryTile]:
    """Tiles for the suspects: the suggested class first, then the given one, with their
    out-of-fold probabilities; the reason says how suspicious, as a rank and a margin."""
    names = {c.id: c.name for c in project.classes()}
    tiles = []
    for rank, s in enumerate(suspects, 1):
        if s["likely"] not in names or s["given"] not in names:
            continue  # a class deleted since the check
        top = (Prediction(s["likely"], names[s["likely"]], float(s.get("probability", float("nan")))),
               Prediction(s["given"], names[s["given"]], float(s.get("given_probability", float("nan")))))
        reason = f"#{rank} most suspicious: margin {s['margin']:.2f} over the label"
        tiles.append(QueryTile(int(s["image_id"]), float(s["margin"]), reason, top))
    return tiles


class LabelErrorsView(QueryView):
    check_requested = Signal()

    keys_help = KEYS
    empty_text = EMPTY

    def __init__(self, workspace, parent=None):
        super().__init__(workspace, parent, load_strategies=False)
        self.strategy = STRATEGY

    def _toolbar(self) -> QHBoxLayout:
        self.check_button = QPushButton("Check labels")
        self.check_button.setToolTip("Cross-validate a head on the labelled images' embeddings and list "
                                     "the labels it confidently disagrees with (seconds)")
        self.check_button.clicked.connect(self.check_requested)
        self.keep_button = QPushButton("Keep label as is (K)")
        self.keep_button.clicked.connect(self.keep_current)
        bar = QHBoxLayout()
        bar.addWidget(self.check_button)
        bar.addWidget(self.keep_button)
        bar.addStretch(1)
        return bar

    def set_busy(self, busy: bool) -> None:
        self.check_button.setEnabled(not busy)

    def load_saved(self) -> None:
        """The last check's suspects, as the project keeps them."""
        self.show_suspects(self.ws.project.get_setting(LABEL_CHECK_SETTING, []) or [])

    def show_suspects(self, suspects: list[Any]) -> None:
        """Show a check's result (session.LabelSuspect values, or their JSON)."""
        rows = [s if isinstance(s, dict) else s.to_json() for s in suspects]
        self._show_items([], None)  # clears the round; the tiles are set below
        tiles = suspect_tiles(self.ws.project, rows)
        self.model.set_batch(tiles)
        self.stack.setCurrentWidget(self.grid if tiles else self.empty)
        self.empty.setText(EMPTY if not rows else "")
        self.strategy = STRATEGY
        self.refresh()
        if tiles:
            self.grid.select_row(0)
            self.grid.setFocus()

    def refresh(self) -> None:
        super().refresh()
        tiles = self.model.tiles()
        if not tiles:
            return
        try:
            project = self.ws.project
            kept = kept_labels(project)
            labels = project.current_labels()
        except ProjectError:
            return
        given = {t.image_id: t.top[1].class_id for t in tiles}
        changed = sum(1 for i, c in given.items() if labels.get(i) != c)
        still = sum(1 for i, c in given.items() if labels.get(i) == c and kept.get(str(i)) == c)
        self.summary.setText(f"{len(tiles)} possible label errors, most suspicious first: {changed} relabelled, "
                             f"{still} kept as they are, {len(tiles) - changed - still} to look at")

    def _describe(self, index) -> tuple[str, str, str]:
        tile: QueryTile = index.data(TileRole)
        suggested, given = tile.top[0], tile.top[1]
        label = self.model.label(tile.image_id)
        if label is not None and label.id != given.class_id:
            return f"Relabelled {label.name}", f"was {given.name}", tile.reason
        if self.ws.blind:
            return "Suggestion hidden (blind mode)", f"labelled {given.name}", tile.reason
        if kept_labels(self.ws.project).get(str(tile.image_id)) == given.class_id:
            return f"Kept as {given.name}", f"suggested {suggested.probability:.0%} {suggested.name}", tile.reason
        # as the query view shows a suggestion: "75% stroma" (a tile cuts names, never the number)
        return (f"{suggested.probability:.0%} {suggested.name}",
                f"{given.probability:.0%} {given.name} (the label)", tile.reason)

    def label_kwargs(self, tile: QueryTile) -> dict[str, Any]:
        return {**super().label_kwargs(tile), "strategy": STRATEGY}

    def keep_current(self) -> bool:
        row = self.grid.current_row()
        tile = self.model.row_data(row)
        if tile is None:
            return False
        label = self.model.label(tile.image_id)
        if label is None:
            return False
        if self.ws.do(KeepLabel(self.ws.project, tile.image_id, label.id, report=self.ws.report)):
            self.grid.select_row(row + 1)
        return True

    def _on_key(self, event: QKeyEvent) -> bool:
        plain = not (event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier)
        # a class's own key wins, as it does over M in the query view
        if plain and event.key() == Qt.Key.Key_K and self.ws.book().by_key(event.text()) is None:
            return self.keep_current()
        if plain and event.key() == Qt.Key.Key_X:
            return True  # "unsure" is for unlabelled images; these are labelled
        return super()._on_key(event)


def install_label_errors(window) -> LabelErrorsView:
    """The Possible label errors tab, Model ▸ Check labels… and the check job's wiring."""
    view = LabelErrorsView(window.ws)
    window.label_errors = view
    window.tabs.addTab(view, "Possible label errors")
    view.open_image.connect(window.open_image)
    view.similar_requested.connect(window.start_similar)

    def start() -> bool:
        # Imported when first used: the window opens without it.
        from atl_desktop.loop import session

        window.tabs.setCurrentWidget(view)
        return window._start_other(JOB, session.check_labels_job, "Checking labels", "model")

    view.check_requested.connect(start)
    action = QAction("Check &labels…", window)
    action.setShortcut(QKeySequence("Ctrl+Shift+L"))
    action.setToolTip("Possible label errors among the labels given (confident learning)")
    action.triggered.connect(start)
    model_menu = next((a.menu() for a in window.menuBar().actions() if a.text() == "&Model"), None)
    if model_menu is not None:
        model_menu.insertAction(model_menu.actions()[-1], action)  # before Cancel
    window.check_labels_action = action

    def finished(name: str, result: Any) -> None:
        if name == JOB:
            view.show_suspects(result)
            window.tabs.setCurrentWidget(view)
            window.statusBar().showMessage(f"{len(result)} possible label errors.", 8000)
        view.set_busy(window.runner.is_running())

    window.runner.finished.connect(finished)
    window.runner.started.connect(lambda *_: view.set_busy(True))
    for signal in (window.runner.failed, window.runner.cancelled):
        signal.connect(lambda *_: view.set_busy(window.runner.is_running()))
    view.load_saved()
    return view
