"""The main window: the project panel beside the query and review views, menus,
undo/redo, and the jobs (scoring, training, pseudo-labelling) run by one JobRunner.

The engine jobs come from `atl_desktop.session`, imported only when a job
starts; the window takes the job factories as arguments so tests can give it
fakes. A factory is called as `factory(project_handle, **kwargs)` on the job's
own thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QInputDialog,
    QMainWindow,
    QSplitter,
    QTabWidget,
    QToolBar,
)

from atl_desktop.gui import messages
from atl_desktop.gui.imageviewer import ImageViewer
from atl_desktop.gui.jobrunner import JobRunner
from atl_desktop.gui.projectpanel import ProjectPanel
from atl_desktop.gui.queryview import QueryView
from atl_desktop.gui.reviewview import ReviewView
from atl_desktop.gui.statusbar import StatusBar
from atl_desktop.gui.workspace import Workspace
from atl_desktop.store import Project, ProjectError

JOB_TITLES = {"query": "Scoring the pool", "train": "Training", "pseudo": "Proposing pseudo-labels"}


def default_query_job(project, **kwargs):
    from atl_desktop.session import query_job

    return query_job(project, **kwargs)


def default_train_job(project, **kwargs):
    from atl_desktop.session import train_job

    return train_job(project, **kwargs)


def default_pseudo_label_job(project, **kwargs):
    from atl_desktop.session import pseudo_label_job

    return pseudo_label_job(project, **kwargs)


def open_project_or_explain(path: str | Path, parent=None) -> Project | None:
    """Open a project for writing; a locked, newer or broken file is explained, not raised."""
    try:
        return Project.open(path)
    except ProjectError as error:
        messages.show_error(parent, "Cannot open project", str(error))
    except OSError as error:
        messages.show_error(parent, "Cannot open project", f"{path}: {error.strerror or error}")
    return None


class MainWindow(QMainWindow):
    def __init__(
        self,
        project: Project,
        *,
        annotator: str,
        settings: QSettings | None = None,
        device: str | None = None,
        log_file: Path | None = None,
        query_factory: Callable[..., Any] = default_query_job,
        train_factory: Callable[..., Any] = default_train_job,
        pseudo_factory: Callable[..., Any] = default_pseudo_label_job,
    ):
        super().__init__()
        self.settings = settings
        self.factories = {"query": query_factory, "train": train_factory, "pseudo": pseudo_factory}
        self.ws = Workspace(project, annotator, self.show_error_message, parent=self)
        self.runner = JobRunner(self, log_file=log_file)
        self.viewers: list[ImageViewer] = []
        self._successor: MainWindow | None = None

        self.panel = ProjectPanel(self.ws)
        self.query_view = QueryView(self.ws)
        self.review_view = ReviewView(self.ws)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.query_view, "Label queried images")
        self.tabs.addTab(self.review_view, "Review pseudo-labels")
        splitter = QSplitter()
        splitter.addWidget(self.panel)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([370, 950])
        self.setCentralWidget(splitter)
        self.status = StatusBar(self.runner, device=device)
        self.setStatusBar(self.status)
        self._build_actions()
        self._connect()

        if settings is not None:
            self.blind_action.setChecked(settings.value("blind", False, type=bool))
            self.tabs.setCurrentIndex(settings.value("tab", 0, type=int))
        self.resize(1320, 860)
        self._update_title()
        self.panel.refresh()
        self.query_view.load_saved()
        self.review_view.refresh()
        if settings is not None:
            settings.setValue("last_project", str(project.path.resolve()))

    # ---- set-up ----------------------------------------------------------------

    def _build_actions(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        self._action(file_menu, "&Open project…", self.ask_open, QKeySequence.StandardKey.Open)
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)

        edit = menu.addMenu("&Edit")
        self.undo_action = self.ws.stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcut(QKeySequence.StandardKey.Undo)
        self.redo_action = self.ws.stack.createRedoAction(self, "&Redo")
        self.redo_action.setShortcuts([QKeySequence.StandardKey.Redo, QKeySequence("Ctrl+Y")])
        edit.addActions([self.undo_action, self.redo_action])

        labelling = menu.addMenu("&Labelling")
        self.annotator_action = self._action(labelling, "Who is labelling…", self.ask_annotator)
        self.blind_action = self._action(labelling, "&Blind mode (hide the model's suggestions)",
                                         None, QKeySequence("Ctrl+B"))
        self.blind_action.setCheckable(True)
        self.blind_action.toggled.connect(self.set_blind)

        jobs = menu.addMenu("&Model")
        self._action(jobs, "&Query next batch", lambda: self.query_view.query_button.click(),
                     QKeySequence("Ctrl+R"))
        self._action(jobs, "&Train", self.start_train, QKeySequence("Ctrl+T"))
        self._action(jobs, "&Propose pseudo-labels", self.start_pseudo)
        self._action(jobs, "&Cancel the running job", self.status.cancel_current,
                     QKeySequence("Ctrl+."))

        toolbar = QToolBar("Main")
        toolbar.setMovable(False)
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        toolbar.addActions([self.undo_action, self.redo_action])
        toolbar.addSeparator()
        toolbar.addAction(self.annotator_action)
        toolbar.addAction(self.blind_action)
        self.addToolBar(toolbar)

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
        if slot is not None:
            action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _connect(self) -> None:
        self.query_view.query_requested.connect(self.start_query)
        self.query_view.train_requested.connect(self.start_train)
        self.review_view.propose_requested.connect(self.start_pseudo)
        for view in (self.query_view, self.review_view):
            view.open_image.connect(self.open_image)
        self.review_view.pending_changed.connect(
            lambda n: self.tabs.setTabText(1, f"Review pseudo-labels ({n})" if n else "Review pseudo-labels"))
        self.runner.finished.connect(self._on_job_finished)
        self.runner.failed.connect(self._on_job_failed)
        self.runner.cancelled.connect(self._on_job_cancelled)
        self.runner.started.connect(lambda _: self._update_busy())

    def _update_title(self) -> None:
        who = self.ws.annotator or "nobody"
        blind = " · blind" if self.ws.blind else ""
        self.setWindowTitle(f"{self.ws.project.path.name} — ATL Desktop (labelling as {who}{blind})")
        self.annotator_action.setText(f"Annotator: {who}")

    # ---- labelling settings ------------------------------------------------------

    def set_annotator(self, name: str) -> None:
        self.ws.annotator = name.strip()
        if self.settings is not None:
            self.settings.setValue("annotator", self.ws.annotator)
        self._update_title()

    def ask_annotator(self) -> None:
        name, ok = QInputDialog.getText(self, "Who is labelling?", "Your name (recorded with every label):",
                                        text=self.ws.annotator)
        if ok and name.strip():
            self.set_annotator(name)

    def set_blind(self, blind: bool) -> None:
        self.ws.set_blind(blind)
        if self.blind_action.isChecked() != blind:
            self.blind_action.setChecked(blind)
        if self.settings is not None:
            self.settings.setValue("blind", blind)
        self._update_title()

    # ---- jobs ------------------------------------------------------------------

    def start_job(self, name: str, **kwargs: Any) -> bool:
        reason = self.runner.start(name, self.factories[name], self.ws.project,
                                   title=JOB_TITLES[name], group="model", **kwargs)
        if reason is not None:
            messages.show_info(self, "One job at a time", reason)
            return False
        self._update_busy()
        return True

    def start_query(self, strategy: str, batch: int) -> bool:
        return self.start_job("query", strategy=strategy, batch=batch)

    def start_train(self) -> bool:
        return self.start_job("train")

    def start_pseudo(self) -> bool:
        return self.start_job("pseudo")

    def _update_busy(self) -> None:
        busy = self.runner.is_running()
        self.query_view.set_busy(busy)
        self.review_view.set_busy(busy)

    def _on_job_finished(self, name: str, result: Any) -> None:
        self._update_busy()
        if name == "query" and result is not None:
            self.query_view.show_result(result)
            self.tabs.setCurrentWidget(self.query_view)
            self.statusBar().showMessage(f"{len(result.items)} images to label.", 8000)
        elif name == "train":
            self.statusBar().showMessage(f"Training finished: checkpoint #{result}.", 8000)
        elif name == "pseudo":
            self.tabs.setCurrentWidget(self.review_view)
            self.statusBar().showMessage(f"{result} pseudo-labels proposed for review.", 8000)
        self.ws.notify()

    def _on_job_failed(self, name: str, message: str, details: str) -> None:
        self._update_busy()
        self.ws.notify()  # whatever the job committed before failing is shown
        where = f"\n\nThe details are also in {self.runner.log_file}." if self.runner.log_file else ""
        messages.show_error(self, "Job failed", f"{JOB_TITLES.get(name, name)} failed: {message}{where}",
                            details)

    def _on_job_cancelled(self, name: str) -> None:
        self._update_busy()
        self.ws.notify()
        self.statusBar().showMessage(f"{JOB_TITLES.get(name, name)} cancelled.", 8000)

    # ---- other windows -----------------------------------------------------------

    def show_error_message(self, text: str) -> None:
        messages.show_error(self, "ATL Desktop", text)

    def open_image(self, image_id: int) -> ImageViewer:
        path = self.ws.image_path(image_id)
        viewer = ImageViewer(path, f"Image {image_id} — {path.name}", self)
        viewer.destroyed.connect(lambda *_: self.viewers.remove(viewer) if viewer in self.viewers else None)
        self.viewers.append(viewer)
        viewer.show()
        return viewer

    def ask_open(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open project", str(self.ws.project.path.parent),
                                              "ATL Desktop projects (*.atl)")
        if path:
            self.open_other(path)

    def open_other(self, path: str | Path) -> MainWindow | None:
        """Open another project in a new window and close this one (if it opens)."""
        if Path(path).resolve() == self.ws.project.path.resolve():
            return None
        project = open_project_or_explain(path, self)
        if project is None:
            return None
        self._successor = MainWindow(project, annotator=self.ws.annotator, settings=self.settings,
                                     log_file=self.runner.log_file,
                                     query_factory=self.factories["query"],
                                     train_factory=self.factories["train"],
                                     pseudo_factory=self.factories["pseudo"])
        self._successor.show()
        self.close()
        return self._successor

    def closeEvent(self, event) -> None:
        if self.settings is not None:
            self.settings.setValue("tab", self.tabs.currentIndex())
        if self.runner.is_running():
            self.statusBar().showMessage("Stopping the running job…")
            self.runner.cancel_all()
        self.runner.wait_all()
        for viewer in list(self.viewers):
            viewer.close()
        self.ws.thumbs.shutdown()
        self.status.shutdown()
        self.query_view.shutdown()
        self.ws.project.close()
        super().closeEvent(event)
