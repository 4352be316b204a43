"""What every part of the window shares: the project, the undo stack, the thumbnails,
who is labelling and whether suggestions are hidden."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, Signal
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import QWidget

from atl_desktop.gui.models import ClassBook
from atl_desktop.gui.thumbnails import ThumbnailCache
from atl_desktop.gui.undo import StoreCommand, push
from atl_desktop.store import Project, ProjectError


class Workspace(QObject):
    changed = Signal()  # the store changed (a command, an undo, a finished job)
    blind_changed = Signal(bool)

    def __init__(self, project: Project, annotator: str, report: Callable[[str], None],
                 thumbnail_side: int = 176, parent: QObject | None = None):
        super().__init__(parent)
        self.project = project
        self.annotator = annotator
        self.blind = False
        self.report = report
        self.stack = QUndoStack(self)
        self.thumbs = ThumbnailCache(side=thumbnail_side, parent=self)
        self._book: ClassBook | None = None
        self.stack.indexChanged.connect(self.notify)

    def book(self) -> ClassBook:
        if self._book is None:
            self._book = ClassBook.load(self.project)
        return self._book

    def notify(self) -> None:
        self._book = None
        self.changed.emit()

    def do(self, command: StoreCommand) -> bool:
        """Apply and record a change; a refusal from the store is shown, not raised."""
        try:
            push(self.stack, command)
        except ProjectError as error:
            self.report(str(error))
            return False
        return True

    def set_blind(self, blind: bool) -> None:
        if blind != self.blind:
            self.blind = blind
            self.blind_changed.emit(blind)

    def image_path(self, image_id: int):
        return self.project.image_path(self.project.image(image_id))


class RefreshWhenShown(QObject):
    """Calls `refresh` at once while `widget` is visible, else once when it is next shown
    (and `while_hidden`, something cheaper, at once instead).

    Every label sends `Workspace.changed`; views in hidden tabs re-reading the store each
    time would add their queries to every key press. A window that is not shown at all
    (headless use) never sends Show events, so there it refreshes at once."""

    def __init__(self, widget: QWidget, refresh: Callable[[], None],
                 while_hidden: Callable[[], None] | None = None):
        super().__init__(widget)
        self._widget, self._refresh, self._while_hidden = widget, refresh, while_hidden
        self._stale = False
        widget.installEventFilter(self)

    def request(self) -> None:
        if self._widget.isVisible() or not self._widget.window().isVisible():
            self._stale = False
            self._refresh()
        else:
            self._stale = True
            if self._while_hidden is not None:
                self._while_hidden()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Show and self._stale:
            self._stale = False
            self._refresh()
        return False
