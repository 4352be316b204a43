"""The main window: the project panel beside the query and review views, menus,
undo/redo, and the jobs (scoring, training, pseudo-labelling) run by one JobRunner.

The engine jobs come from `atl_desktop.loop.session`, imported only when a job
starts; the window takes the job factories as arguments so tests can give it
fakes. A factory is called as `factory(project_handle, **kwargs)` on the job's
own thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QInputDialog,
    QMainWindow,
    QTabWidget,
    QToolBar,
    QUndoView,
)

from atl_desktop.gui import messages
from atl_desktop.gui.annotatorview import AnnotatorView
from atl_desktop.gui.background import Background
from atl_desktop.gui.datadialogs import (
    ExportDialog,
    ImportDialog,
    ImportReportDialog,
    ask_export_model,
    connect_model_export,
    export_job,
    import_job,
)
from atl_desktop.gui.demos import add_demo_menu, ask_report, connect_report
from atl_desktop.gui.encoderdialog import (
    ENCODER_JOB,
    ENCODER_JOB_TITLE,
    ask_encoder,
    connect_encoder,
)
from atl_desktop.gui.gcguard import freeze_what_is_loaded, hold_until_frozen
from atl_desktop.gui.helpdialogs import AboutDialog, PreferencesDialog, ShortcutSheet
from atl_desktop.gui.imageviewer import ImageViewer
from atl_desktop.gui.jobrunner import JobRunner
from atl_desktop.gui.labelerrors import install_label_errors
from atl_desktop.gui.poolbrowser import DEFAULT_SIDE, PoolBrowser
from atl_desktop.gui.projectpanel import ProjectPanel
from atl_desktop.gui.quality import QualityView
from atl_desktop.gui.queryview import QueryView
from atl_desktop.gui.reviewview import ReviewView
from atl_desktop.gui.slideview import install_slide_view
from atl_desktop.gui.statusbar import StatusBar
from atl_desktop.gui.trainingpanel import TrainingPanel
from atl_desktop.gui.wizard import NewProjectWizard, SetupPlan, setup_job
from atl_desktop.gui.workspace import Workspace
from atl_desktop.store import Project, ProjectError

JOB_TITLES = {"query": "Scoring the pool", "train": "Training", "pseudo": "Proposing pseudo-labels",
              "import": "Importing images", "export": "Exporting labels", "export-model": "Exporting the model",
              "setup": "Setting up the project", "evaluate": "Evaluating", "score": "Scoring the pool",
              "pretrain": "Learning an encoder from your images", "similar": "Finding similar images",
              ENCODER_JOB: ENCODER_JOB_TITLE}
RECENT_LIMIT = 8
SIMILAR_K = 24  # images shown by "more like this"
# The method of MainWindow that takes each job's result (jobs not named here only refresh the views).
JOB_HANDLERS = {"score": "_scored", "import": "_imported", "setup": "_set_up", "export": "_exported",
                "query": "_queried", "train": "_trained", "similar": "_found_similar",
                "pretrain": "_pretrained", "pseudo": "_pseudo_proposed"}


def remember_project(settings: QSettings, path: Path) -> None:
    """The last project opens next time; the recent list keeps the newest first."""
    path = str(Path(path).resolve())
    settings.setValue("last_project", path)
    recent = [p for p in recent_projects(settings) if p != path]
    settings.setValue("recent_projects", [path, *recent][:RECENT_LIMIT])


def recent_projects(settings: QSettings) -> list[str]:
    value = settings.value("recent_projects", [])
    return [value] if isinstance(value, str) else list(value or [])


def default_query_job(project, device: str | None = None, **kwargs):
    from atl_desktop.active.scoring import ScoringConfig
    from atl_desktop.loop.session import query_job

    if device is not None:  # Preferences ▸ Compute device
        kwargs["scoring"] = ScoringConfig(device=device, seed=kwargs.get("seed", 0))
    return query_job(project, **kwargs)


def default_train_job(project, device: str | None = None, **kwargs):
    from atl_desktop.loop.session import TRAIN_SETTING, project_train_config, train_job

    if device is not None:
        kwargs["config"] = project_train_config(project, device=device)
    processes = int(project.get_setting(TRAIN_SETTING, {}).get("processes", 1))
    if processes > 1:  # torch.distributed: torchrun's ranks report through the same job
        from atl_desktop.scale.launch import local_train_job

        return local_train_job(project, processes=processes, **kwargs)
    return train_job(project, **kwargs)


def default_pseudo_label_job(project, device: str | None = None, **kwargs):
    from atl_desktop.active.scoring import ScoringConfig
    from atl_desktop.loop.session import pseudo_label_job

    if device is not None:
        kwargs["scoring"] = ScoringConfig(device=device)
    return pseudo_label_job(project, **kwargs)


def default_pretrain_job(project, device: str | None = None):
    """SimCLR on the project's own images (the encoder of the embedding-first loop)."""
    from atl_desktop.transfer.selfsup import SelfSupConfig, pretrain_project

    return pretrain_project(project, SelfSupConfig(device=device or "auto"))


def default_similar_job(project, image_id: int, k: int = SIMILAR_K):
    from atl_desktop.loop.session import similar_job

    return similar_job(project, image_id, k=k)


def default_score_job(project):
    """Score the target pool with the current checkpoint (for the pool browser's sorting)."""
    from atl_desktop.loop.session import score_job

    yield from score_job(project)


def warm_engine() -> bool:
    """Import the engine and take one tiny optimiser step, ahead of the first job.

    Loading torch's libraries (and the ~1000 modules its first optimiser step
    pulls in) holds Python's GIL for up to 200 ms at a time: done inside the
    first job it froze the window; done at start-up, off the GUI thread, it
    costs a few stutters before the user has started anything.
    """
    import torch

    import atl_desktop.data.datasets  # noqa: F401
    import atl_desktop.loop.session  # noqa: F401
    import atl_desktop.models.checkpoints  # noqa: F401
    import atl_desktop.transfer.train  # noqa: F401

    weight = torch.zeros(2, requires_grad=True)
    optimiser = torch.optim.AdamW([weight])
    (weight * weight).sum().backward()
    optimiser.step()
    try:  # the curves' library: seconds to import, so not on the GUI thread either
        import pyqtgraph  # noqa: F401
    except ImportError:
        pass  # the curves say how to install it
    return True


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
        warm: bool = True,
    ):
        super().__init__()
        self.settings = settings
        self.factories = {"query": query_factory, "train": train_factory, "pseudo": pseudo_factory}
        self._similar_of: int | None = None  # the image whose neighbours the running job finds
        self.ws = Workspace(project, annotator, self.show_error_message, parent=self)
        self.runner = JobRunner(self, log_file=log_file)
        self.engine_ready = False
        self._warmer = Background(self)
        self._warm = warm  # successor windows do as this one (tests open them cold)
        self.viewers: list[ImageViewer] = []
        self._successor: MainWindow | None = None

        self.panel = ProjectPanel(self.ws)
        self.query_view = QueryView(self.ws)
        self.review_view = ReviewView(self.ws)
        side = settings.value("thumbnail_side", DEFAULT_SIDE, type=int) if settings is not None else DEFAULT_SIDE
        self.pool_browser = PoolBrowser(self.ws, thumbnail_side=side)
        self.training = TrainingPanel(self.ws, self.runner, load_registries=warm)
        self.quality = QualityView(self.ws, self.runner)
        self.annotators = AnnotatorView(self.ws)
        self.tabs = QTabWidget()
        for widget, title in ((self.query_view, "Label queried images"),
                              (self.review_view, "Review pseudo-labels"), (self.pool_browser, "Pool"),
                              (self.training, "Training"), (self.quality, "Model quality"),
                              (self.annotators, "Annotators")):
            self.tabs.addTab(widget, title)
        self.setCentralWidget(self.tabs)
        self.project_dock = self._dock("Project", "project_dock", self.panel,
                                       Qt.DockWidgetArea.LeftDockWidgetArea)
        self.history_dock = self._dock("History", "history_dock", QUndoView(self.ws.stack),
                                       Qt.DockWidgetArea.RightDockWidgetArea)
        self.history_dock.hide()
        self.status = StatusBar(self.runner, device=device)
        self.setStatusBar(self.status)
        self._build_actions()
        self._connect()
        install_slide_view(self)  # the Slides tab and View > Show on slide
        install_label_errors(self)  # the Possible label errors tab and Model > Check labels…

        self.resize(1320, 860)
        if settings is not None:
            self.blind_action.setChecked(settings.value("blind", False, type=bool))
            strategy = settings.value("default_strategy", "", type=str)
            if strategy:
                self.query_view.strategy_box.setCurrentText(strategy)
            self.tabs.setCurrentIndex(settings.value("tab", 0, type=int))
            self.restoreGeometry(settings.value("geometry", QByteArray()))
            self.restoreState(settings.value("window_state", QByteArray()))
        self._update_title()
        self.panel.refresh()
        self.query_view.load_saved()
        self.review_view.refresh()
        if settings is not None:
            remember_project(settings, project.path)
        if warm:
            hold_until_frozen()  # released by _engine_warmed
            self._warmer.call(warm_engine, self._engine_warmed)

    def _dock(self, title: str, name: str, widget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)  # saveState() needs it
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _engine_warmed(self, result) -> None:
        self.engine_ready = result is True  # an import error shows when a job starts
        self.training.curves.ensure_plots()  # now, not in the middle of the first job
        freeze_what_is_loaded()  # later full collections stay short

    # ---- set-up ----------------------------------------------------------------

    def _build_actions(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        self._action(file_menu, "&New project…", self.ask_new_project, QKeySequence.StandardKey.New)
        self._action(file_menu, "&Open project…", self.ask_open, QKeySequence.StandardKey.Open)
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        file_menu.addSeparator()
        self._action(file_menu, "&Import images…", self.ask_import, QKeySequence("Ctrl+I"))
        self._action(file_menu, "&Export labels…", self.ask_export, QKeySequence("Ctrl+E"))
        self._action(file_menu, "Export &report…", lambda: ask_report(self))
        self._action(file_menu, "Export &model…", lambda: ask_export_model(self))
        file_menu.addSeparator()
        self.demo_menu = add_demo_menu(self, file_menu)
        file_menu.addSeparator()
        self._action(file_menu, "&Preferences…", self.ask_preferences, QKeySequence.StandardKey.Preferences)
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)

        edit = menu.addMenu("&Edit")
        self.undo_action = self.ws.stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcut(QKeySequence.StandardKey.Undo)
        self.redo_action = self.ws.stack.createRedoAction(self, "&Redo")
        self.redo_action.setShortcuts([QKeySequence.StandardKey.Redo, QKeySequence("Ctrl+Y")])
        edit.addActions([self.undo_action, self.redo_action])
        history = self.history_dock.toggleViewAction()
        history.setText("&History")
        history.setShortcut(QKeySequence("Ctrl+H"))
        edit.addAction(history)
        view = menu.addMenu("&View")
        view.addAction(self.project_dock.toggleViewAction())
        view.addAction(history)
        for index in range(self.tabs.count()):
            self._action(view, self.tabs.tabText(index),
                         lambda _=False, i=index: self.tabs.setCurrentIndex(i), QKeySequence(f"Alt+{index + 1}"))

        labelling = menu.addMenu("&Labelling")
        self.annotator_action = self._action(labelling, "Who is labelling…", self.ask_annotator)
        self.blind_action = self._action(labelling, "&Blind mode (hide the model's suggestions)",
                                         None, QKeySequence("Ctrl+B"))
        self.blind_action.setCheckable(True)
        self.blind_action.toggled.connect(self.set_blind)

        jobs = menu.addMenu("&Model")
        self._action(jobs, "&Query next batch", lambda: self.query_view.query_button.click(),
                     QKeySequence("Ctrl+R"))
        self._action(jobs, "&Train", self.training.start, QKeySequence("Ctrl+T"))
        self._action(jobs, "&Propose pseudo-labels", self.start_pseudo)
        self.pretrain_action = self._action(jobs, "&Learn an encoder from these images (self-supervised)",
                                            self.start_pretrain)
        self.pretrain_action.setToolTip("SimCLR on the unlabelled images: no weights or labels needed. "
                                        "Queries then fit a light head on its embeddings after every label.")
        self.encoder_action = self._action(jobs, "Choose &encoder…", lambda: ask_encoder(self))
        self.encoder_action.setToolTip("The encoder queries embed images with: an untrained backbone, "
                                       "ImageNet weights, a foundation model file, or a checkpoint")
        self._action(jobs, "&Release the audit images…", self.release_audit)
        self._action(jobs, "&Cancel the running job", self.status.cancel_current,
                     QKeySequence("Ctrl+."))

        help_menu = menu.addMenu("&Help")
        self._action(help_menu, "&Start your own project…", self.ask_new_project)
        self._action(help_menu, "&Keyboard shortcuts", self.show_shortcuts,
                     [QKeySequence(Qt.Key.Key_F1), QKeySequence("?")])
        self._action(help_menu, "&About ATL Desktop", lambda: AboutDialog(self).exec())

        toolbar = QToolBar("Main")
        toolbar.setObjectName("main_toolbar")
        toolbar.setMovable(False)
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        toolbar.addActions([self.undo_action, self.redo_action])
        toolbar.addSeparator()
        toolbar.addAction(self.annotator_action)
        toolbar.addAction(self.blind_action)
        self.addToolBar(toolbar)

    def release_audit(self) -> bool:
        """Model ▸ Release the audit images: they train the model from then on (undoable)."""
        from atl_desktop.gui.undo import ReleaseAudit

        held = self.ws.project.counts()["audit"]
        if not held["held_out"]:
            messages.show_info(self, "Release the audit images", "No audit images are held out.")
            return False
        if not messages.ask(self, "Release the audit images",
                            f"{held['held_out']} audit images ({held['labelled']} labelled) are kept out of "
                            "training so that they can measure the model. Released, they train it from the "
                            "next training on, and the audit estimate starts again from new audit images.",
                            "Release"):
            return False
        return self.ws.do(ReleaseAudit(self.ws.project, report=self.ws.report))

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if isinstance(shortcut, list):
            action.setShortcuts(shortcut)
        elif shortcut is not None:
            action.setShortcut(shortcut)
        if slot is not None:
            action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _connect(self) -> None:
        self.query_view.query_requested.connect(self.start_query)
        self.panel.new_project_requested.connect(lambda: self.ask_new_project())
        self.query_view.train_requested.connect(self.training.start)  # saves the panel's settings
        self.review_view.propose_requested.connect(self.start_pseudo)
        for view in (self.query_view, self.review_view):
            view.open_image.connect(self.open_image)
        self.review_view.pending_changed.connect(
            lambda n: self.tabs.setTabText(1, f"Review pseudo-labels ({n})" if n else "Review pseudo-labels"))
        self.runner.finished.connect(self._on_job_finished)
        connect_report(self)
        connect_model_export(self)
        connect_encoder(self)
        self.runner.failed.connect(self._on_job_failed)
        self.runner.cancelled.connect(self._on_job_cancelled)
        self.runner.started.connect(lambda _: self._update_busy())
        self.pool_browser.send_to_query.connect(self.label_chosen)
        self.pool_browser.similar_requested.connect(self.start_similar)
        self.query_view.similar_requested.connect(self.start_similar)
        self.pool_browser.score_requested.connect(
            lambda: self._start_other("score", default_score_job, JOB_TITLES["score"], "model"))
        self.annotators.send_to_query.connect(lambda ids: self.label_chosen(ids, "the two annotators disagreed"))
        self.annotators.show_in_pool.connect(self.show_annotator_in_pool)
        self.pool_browser.open_image.connect(self.open_image)
        self.training.start_requested.connect(self.start_train)

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
        device = self.settings.value("device", "auto", type=str) if self.settings is not None else "auto"
        if device != "auto":
            kwargs["device"] = device
        reason = self.runner.start(name, self.factories[name], self.ws.project,
                                   title=JOB_TITLES[name], group="model", **kwargs)
        if reason is not None:
            messages.show_info(self, "One job at a time", reason)
            return False
        self._update_busy()
        return True

    def start_query(self, strategy: str, batch: int) -> bool:
        if not self.resolve_open_round():
            return False
        return self.start_job("query", strategy=strategy, batch=batch)

    def resolve_open_round(self) -> bool:
        """The engine's rule (rounds.check_can_query): one open round at a time. While one is
        open, offer to discard it (its labels stay); Train finishes it instead."""
        from atl_desktop.loop.rounds import RoundOpenError, check_can_query, discard_round

        try:
            check_can_query(self.ws.project)
        except RoundOpenError as error:
            text = (f"Round {error.round_id} is still open: {error.labelled} of its {error.chosen} images "
                    "are labelled. Press Train to learn from them and finish the round, or discard it "
                    "(the labels given stay) and query a new batch.")
            if not messages.ask(self, "A round is open", text, "Discard round and query",
                                "Keep labelling"):
                return False
            discard_round(self.ws.project)
            self.ws.notify()
        return True

    def start_train(self, from_scratch: bool = False) -> bool:
        return self.start_job("train", **({"from_scratch": True} if from_scratch else {}))

    def start_pseudo(self) -> bool:
        return self.start_job("pseudo")

    def start_similar(self, image_id: int) -> bool:
        self._similar_of = image_id
        return self._start_other("similar", default_similar_job, JOB_TITLES["similar"], "model", image_id=image_id)

    def start_pretrain(self) -> bool:
        device = self.settings.value("device", "auto", type=str) if self.settings is not None else "auto"
        return self._start_other("pretrain", default_pretrain_job, JOB_TITLES["pretrain"], "model",
                                 **({} if device == "auto" else {"device": device}))

    def _update_busy(self) -> None:
        busy = self.runner.is_running()
        self.query_view.set_busy(busy)
        self.review_view.set_busy(busy)
        self.training.set_busy(busy)

    def label_chosen(self, image_ids: list[int], reason: str = "chosen in the pool browser") -> None:
        """Images sent from the pool browser, to label one by one in the query view."""
        if image_ids:
            self.query_view.show_chosen(image_ids, reason)
            self.tabs.setCurrentWidget(self.query_view)

    def show_annotator_in_pool(self, who: str) -> None:
        self.pool_browser.show_annotator(who)
        self.tabs.setCurrentWidget(self.pool_browser)

    def start_import(self, source: str, options: dict) -> bool:
        return self._start_other("import", import_job, "Importing images", "model",
                                 source=source, options=options)

    def start_export(self, format: str, out: str, overwrite: bool = False) -> bool:
        return self._start_other("export", export_job, "Exporting labels", "data",
                                 format=format, out=out, overwrite=overwrite)

    def start_setup(self, plan: SetupPlan) -> bool:
        """After the wizard: the imports, then the first scoring job."""
        return self._start_other("setup", setup_job, "Setting up the project", "model", plan=plan)

    def _start_other(self, name: str, factory, title: str, group: str, **kwargs) -> bool:
        reason = self.runner.start(name, factory, self.ws.project, title=title, group=group, **kwargs)
        if reason is not None:
            messages.show_info(self, "One job at a time", reason)
            return False
        self._update_busy()
        return True

    def show_import_report(self, reports: list) -> ImportReportDialog:
        """Not modal: the user may keep it open beside the window, and save it."""
        self.import_report = ImportReportDialog(reports, self)
        self.import_report.show()
        return self.import_report

    def _on_job_finished(self, name: str, result: Any) -> None:
        """Each job's result goes to its own handler (JOB_HANDLERS); then every view refreshes."""
        self._update_busy()
        handler = getattr(self, JOB_HANDLERS[name], None) if name in JOB_HANDLERS else None
        if handler is not None:
            handler(result)
        self.ws.notify()

    def _scored(self, result: Any) -> None:
        self.pool_browser.apply_filters()  # sort by the new scores

    def _imported(self, report: Any) -> None:
        self._show_imports([report])

    def _set_up(self, result: Any) -> None:
        reports, query = result
        self._show_imports(reports)
        if query is not None:
            self.query_view.show_result(query)
            self.tabs.setCurrentWidget(self.query_view)

    def _show_imports(self, reports: list) -> None:
        if any(r.skipped for r in reports):
            self.show_import_report(reports)
        self.statusBar().showMessage(f"Imported {sum(r.added for r in reports)} images.", 8000)

    def _exported(self, result: Any) -> None:
        self.statusBar().showMessage(result.summary(), 12000)

    def _queried(self, result: Any) -> None:
        if result is None:
            return
        self.query_view.show_result(result)
        self.tabs.setCurrentWidget(self.query_view)
        self.statusBar().showMessage(f"{len(result.items)} images to label.", 8000)

    def _trained(self, checkpoint_id: int) -> None:
        self.statusBar().showMessage(f"Training finished: checkpoint #{checkpoint_id}.", 8000)

    def _found_similar(self, result: list) -> None:
        of = self._similar_of
        self.query_view.show_chosen([r.image_id for r in result], f"like image {of}",
                                    reasons={r.image_id: f"like image {of} (cosine {r.similarity:.2f})"
                                             for r in result})
        self.tabs.setCurrentWidget(self.query_view)
        self.statusBar().showMessage(f"{len(result)} unlabelled images like image {of}.", 8000)

    def _pretrained(self, checkpoint_id: int) -> None:
        self.statusBar().showMessage(f"Encoder learnt: checkpoint #{checkpoint_id}. Queries now fit a head "
                                     "on its embeddings after every label.", 12000)

    def _pseudo_proposed(self, count: int) -> None:
        self.tabs.setCurrentWidget(self.review_view)
        self.statusBar().showMessage(f"{count} pseudo-labels proposed for review.", 8000)

    def _on_job_failed(self, name: str, message: str, details: str) -> None:
        self._update_busy()
        self.ws.notify()  # whatever the job committed before failing is shown
        if name == ENCODER_JOB:
            return  # the encoder dialog shows why, and keeps its values to fix the path
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

    def ask_import(self) -> None:
        dialog = ImportDialog(self.ws.project.path.parent, self)
        if dialog.exec():
            request = dialog.request()
            if request["source"]:
                self.start_import(**request)

    def ask_export(self) -> None:
        dialog = ExportDialog(self.ws.project.path, self)
        if dialog.exec():
            self.start_export(**dialog.request())

    def ask_new_project(self) -> None:
        wizard = NewProjectWizard(self.ws.project.path.parent, self)
        if not wizard.exec():
            return
        try:
            path, plan = wizard.create_project()
        except ProjectError as error:
            messages.show_error(self, "Cannot create the project", str(error))
            return
        successor = self.open_other(path)
        if successor is not None:
            successor.start_setup(plan)

    def ask_preferences(self) -> None:
        if self.settings is None:
            return
        strategies = [self.query_view.strategy_box.itemText(i)
                      for i in range(self.query_view.strategy_box.count())]
        dialog = PreferencesDialog(self.settings, strategies, self)
        if dialog.exec():
            dialog.save()
            self.query_view.strategy_box.setCurrentText(dialog.strategy.currentText())
            self.pool_browser.set_thumbnail_side(dialog.thumbnail.value())

    def show_shortcuts(self) -> ShortcutSheet:
        sheet = ShortcutSheet(self)
        sheet.setModal(False)
        sheet.show()
        self.shortcut_sheet = sheet
        return sheet

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        paths = recent_projects(self.settings) if self.settings is not None else []
        for path in paths:
            action = self.recent_menu.addAction(path)
            action.setEnabled(Path(path).exists() and Path(path) != self.ws.project.path.resolve())
            action.triggered.connect(lambda _=False, p=path: self.open_other(p))
        if not paths:
            self.recent_menu.addAction("No recent projects").setEnabled(False)

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
        successor = self.successor(project)
        self.close()
        return successor

    def successor(self, project: Project) -> MainWindow:
        """A window on `project` with this one's annotator, settings and job factories."""
        self._successor = MainWindow(project, annotator=self.ws.annotator, settings=self.settings,
                                     log_file=self.runner.log_file,
                                     query_factory=self.factories["query"],
                                     train_factory=self.factories["train"],
                                     pseudo_factory=self.factories["pseudo"], warm=self._warm)
        self._successor.show()
        return self._successor

    def closeEvent(self, event) -> None:
        if self.settings is not None:
            self.settings.setValue("tab", self.tabs.currentIndex())
            self.settings.setValue("geometry", self.saveGeometry())
            self.settings.setValue("window_state", self.saveState())
        if self.runner.is_running():
            self.statusBar().showMessage("Stopping the running job…")
            self.runner.cancel_all()
        self.runner.wait_all()
        for viewer in list(self.viewers):
            viewer.close()
        self.ws.thumbs.shutdown()
        self.pool_browser.shutdown()
        self.training.shutdown()
        self.quality.shutdown()
        self.annotators.shutdown()
        self._warmer.wait()
        self.status.shutdown()
        self.query_view.shutdown()
        self.label_errors.shutdown()
        self.ws.project.close()
        super().closeEvent(event)
