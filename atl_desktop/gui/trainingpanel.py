"""The training panel: settings, Start and Stop, progress with time left, live curves,
a log, and the checkpoint list with rollback.

Start saves the settings into the project and asks the window to start the
"train" job; Stop cancels it at its next step. The training job writes a
checkpoint only when a phase has finished, so stopping keeps the last good one.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.gui.checkpointlist import CheckpointList
from atl_desktop.gui.curves import TrainingCurves
from atl_desktop.gui.jobrunner import JobRunner, format_seconds_left
from atl_desktop.gui.trainsettings import TrainSettings
from atl_desktop.gui.workspace import Workspace
from atl_desktop.jobs import Progress

JOB = "train"


class TrainingPanel(QWidget):
    start_requested = Signal()

    def __init__(self, workspace: Workspace, runner: JobRunner, parent=None,
                 load_registries: bool = True):
        super().__init__(parent)
        self.ws = workspace
        self.runner = runner
        self._last_message = ""
        self.settings = TrainSettings(workspace.project, load_registries=load_registries)
        self.start_button = QPushButton("Start training")
        self.start_button.setToolTip("Fine-tune on every label so far (Ctrl+T)")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop at the next step; the last finished checkpoint is kept")
        self.stop_button.clicked.connect(lambda: self.runner.cancel(JOB))
        self.bar = QProgressBar()
        self.eta = QLabel()
        self.curves = TrainingCurves()
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.log.setPlaceholderText("What the training job reports appears here.")
        self.checkpoints = CheckpointList(workspace)
        self._build()
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self._update_eta)
        runner.started.connect(lambda name: self._on_started() if name == JOB else None)
        runner.steps.connect(lambda name, batch: self._on_steps(batch) if name == JOB else None)
        runner.finished.connect(lambda name, result: self._on_ended(f"Finished: checkpoint #{result}.")
                                if name == JOB else None)
        runner.failed.connect(lambda name, message, _d: self._on_ended(f"Failed: {message}")
                              if name == JOB else None)
        runner.cancelled.connect(lambda name: self._on_ended(
            "Stopped. The last finished checkpoint is kept.") if name == JOB else None)
        self._set_running(False)

    def _build(self) -> None:
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(self.settings)
        left_layout.addLayout(buttons)
        left_layout.addWidget(QLabel("Checkpoints"))
        left_layout.addWidget(self.checkpoints, 1)
        progress = QHBoxLayout()
        progress.addWidget(self.bar, 1)
        progress.addWidget(self.eta)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addLayout(progress)
        right_split = QSplitter(Qt.Orientation.Vertical)
        right_split.addWidget(self.curves)
        right_split.addWidget(self.log)
        right_split.setSizes([500, 160])
        right_layout.addWidget(right_split, 1)
        split = QSplitter()
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([420, 800])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(split)

    # ---- control -------------------------------------------------------------------

    def start(self) -> None:
        self.settings.save()
        self.start_requested.emit()

    def set_busy(self, busy: bool) -> None:
        """Another model job is running: training cannot start now."""
        if not self.runner.is_running(JOB):
            self.start_button.setEnabled(not busy)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running and not self.runner.is_running())
        self.stop_button.setEnabled(running)
        self.settings.setEnabled(not running)

    # ---- job signals -----------------------------------------------------------------

    def _on_started(self) -> None:
        self.curves.clear()
        self.bar.setRange(0, 0)
        self.eta.setText("")
        self._last_message = ""
        values = self.settings.values()
        self.append_log(f"Training {values['backbone']} with {values['method']}, "
                        f"{values['epochs']} epochs, lr {values['lr']:g}, "
                        f"{values['freeze']} frozen stages.")
        self._set_running(True)
        self._timer.start()

    def _on_steps(self, batch: list[Progress]) -> None:
        for progress in batch:
            metrics = progress.metrics or {}
            if metrics:
                self.curves.add(progress.done, metrics)
            if "val_accuracy" in metrics:
                self.append_log(f"{progress.message}: validation accuracy "
                                f"{metrics['val_accuracy']:.1%}, loss {metrics.get('val_loss', float('nan')):.3f}")
            elif progress.message and progress.message != self._last_message:
                self.append_log(progress.message)
            self._last_message = progress.message
        last = batch[-1]
        if last.total:
            self.bar.setRange(0, last.total)
            self.bar.setValue(min(last.done, last.total))
            loss = (last.metrics or {}).get("loss")
            self.bar.setFormat(f"%v / %m steps{'' if loss is None else f' · loss {loss:.3f}'}")
        self._update_eta()

    def _on_ended(self, text: str) -> None:
        self._timer.stop()
        self.eta.setText("")
        self.append_log(text)
        self._set_running(False)
        self.checkpoints.refresh()

    def _update_eta(self) -> None:
        job = next((j for j in self.runner.running() if j.name == JOB), None)
        if job is not None:
            self.eta.setText(format_seconds_left(job.seconds_left(time.monotonic())))

    def append_log(self, text: str) -> None:
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")

    def shutdown(self) -> None:
        self._timer.stop()
        self.settings.shutdown()
