"""The training panel: settings, Start and Stop, progress with time left, live curves,
a log, and the checkpoint list with rollback.

Start saves the settings into the project and asks the window to start the
"train" job; Stop cancels it at its next step. The training job writes a
checkpoint only when a phase has finished, so stopping keeps the last good one.
"""

from __future__ import annotations

import re
import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QGroupBox,
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
from atl_desktop.store import ProjectError

JOB = "train"
IDLE_TEXT = "Not training. Start fine-tunes the model on every label so far."
_COUNTER = re.compile(r"\s*\d+/\d+$")  # "validating 3/12": one log line, not twelve


class PhaseSteps:
    """Turns each phase's own step count (source pre-training, then fine-tuning, each from
    1) into one running step axis for the curves."""

    def __init__(self):
        self.offset = 0
        self.phase = ""
        self.last = 0

    def x(self, progress: Progress) -> int:
        phase = progress.message.split(":", 1)[0] if ":" in progress.message else ""
        if phase != self.phase and self.last:
            self.offset += self.last
            self.last = 0
        self.phase = phase
        self.last = max(self.last, progress.done)
        return self.offset + progress.done


class EpochSummary:
    """Collects an epoch's step losses and accuracies; one log line per finished epoch."""

    def __init__(self):
        self.message = ""
        self.losses: list[float] = []
        self.accuracies: list[float] = []

    def add(self, message: str, metrics) -> str | None:
        """Record a training step; returns the previous epoch's line when a new one starts."""
        line = self.flush() if message != self.message else None
        self.message = message
        self.losses.append(float(metrics["loss"]))
        if "accuracy" in metrics:
            self.accuracies.append(float(metrics["accuracy"]))
        return line

    def flush(self) -> str | None:
        if not self.losses:
            return None
        line = f"{self.message}: loss {sum(self.losses) / len(self.losses):.3f}"
        if self.accuracies:
            line += f", accuracy {sum(self.accuracies) / len(self.accuracies):.1%}"
        line += f" ({len(self.losses)} {'step' if len(self.losses) == 1 else 'steps'})"
        self.message, self.losses, self.accuracies = "", [], []
        return line


def log_line(message: str) -> str:
    """What the log keeps of a progress message: epochs stay, batch counters go."""
    return message if "epoch" in message else _COUNTER.sub("", message)


class TrainingPanel(QWidget):
    start_requested = Signal(bool)  # from scratch

    def __init__(self, workspace: Workspace, runner: JobRunner, parent=None,
                 load_registries: bool = True):
        super().__init__(parent)
        self.ws = workspace
        self.runner = runner
        self._last_logged = ""
        self._steps = PhaseSteps()
        self._epoch = EpochSummary()
        self.settings = TrainSettings(workspace.project, load_registries=load_registries)
        self.settings.changed.connect(self._update_start)
        self.start_button = QPushButton("Start training")
        self.start_button.setToolTip("Fine-tune on every label so far (Ctrl+T)")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop at the next step; the last finished checkpoint is kept")
        self.stop_button.clicked.connect(self.stop)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.state = QLabel(IDLE_TEXT)
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
            "Stopped. No checkpoint was written for the unfinished training; the last finished "
            "checkpoint is kept.") if name == JOB else None)
        workspace.changed.connect(self._on_store_changed)
        self._set_running(False)

    def _build(self) -> None:
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button, 1)
        buttons.addWidget(self.stop_button)
        settings_box = QGroupBox("Settings")
        settings_layout = QVBoxLayout(settings_box)
        settings_layout.addWidget(self.settings)
        settings_layout.addLayout(buttons)
        checkpoints_box = QGroupBox("Checkpoints")
        QVBoxLayout(checkpoints_box).addWidget(self.checkpoints)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(settings_box)
        left_layout.addWidget(checkpoints_box, 1)

        status = QHBoxLayout()
        status.addWidget(self.state, 1)
        status.addWidget(self.eta)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addLayout(status)
        right_layout.addWidget(self.bar)
        right_split = QSplitter(Qt.Orientation.Vertical)
        right_split.addWidget(self.curves)
        right_split.addWidget(self.log)
        right_split.setStretchFactor(0, 3)
        right_split.setStretchFactor(1, 1)
        right_split.setSizes([520, 150])
        right_layout.addWidget(right_split, 1)
        split = QSplitter()
        split.setChildrenCollapsible(False)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([500, 700])
        layout = QVBoxLayout(self)
        layout.addWidget(split)

    # ---- control -------------------------------------------------------------------

    def start(self) -> None:
        problem = self.settings.problem()
        if problem:
            self.ws.report(problem)
            return
        self.settings.save()
        self.start_requested.emit(self.settings.from_scratch())

    def stop(self) -> None:
        if self.runner.is_running(JOB):
            self.runner.cancel(JOB)
            self.state.setText("Stopping at the next step…")
            self.stop_button.setEnabled(False)

    def set_busy(self, busy: bool) -> None:
        """Another model job is running: training cannot start now."""
        if not self.runner.is_running(JOB):
            self._update_start()

    def _update_start(self) -> None:
        running = self.runner.is_running()
        problem = self.settings.problem()
        self.start_button.setEnabled(not running and problem is None)
        self.start_button.setToolTip(problem or "Fine-tune on every label so far (Ctrl+T)")

    def _set_running(self, running: bool) -> None:
        self.stop_button.setEnabled(running)
        self.settings.setEnabled(not running)
        self._update_start()

    def _on_store_changed(self) -> None:
        if self.runner.is_running(JOB):
            return
        try:
            self.settings.set_checkpoint(self.ws.project.latest_checkpoint())  # a rollback, say
        except ProjectError:
            return  # the project is closing

    # ---- job signals -----------------------------------------------------------------

    def _on_started(self) -> None:
        self.curves.clear()
        self._steps = PhaseSteps()
        self._epoch = EpochSummary()
        self.bar.setRange(0, 0)
        self.bar.setFormat("starting…")
        self.eta.setText("")
        self.state.setText("Training: preparing the images and the model…")
        self._last_logged = ""
        values = self.settings.values()
        record = self.settings.continues_from
        start = "a new model" if self.settings.from_scratch() or record is None else f"checkpoint #{record.id}"
        self.append_log(f"Training {values['backbone']} with {values['method']} from {start}: "
                        f"{values['epochs']} epochs, batches of {values['batch_size']}, "
                        f"learning rate {values['lr']:g}, {values['freeze']} frozen stages.")
        self._set_running(True)
        self._timer.start()

    def _on_steps(self, batch: list[Progress]) -> None:
        for progress in batch:
            metrics = progress.metrics or {}
            if metrics:
                self.curves.add(self._steps.x(progress), metrics)
            if "loss" in metrics:  # a training step: summarised when its epoch ends
                self._log_if(self._epoch.add(progress.message, metrics))
                continue
            self._log_if(self._epoch.flush())
            if "val_accuracy" in metrics:
                self.append_log(f"{progress.message}: validation accuracy {metrics['val_accuracy']:.1%}, "
                                f"loss {metrics.get('val_loss', float('nan')):.3f}")
            else:
                line = log_line(progress.message)
                if line and line != self._last_logged:
                    self.append_log(line)
                    self._last_logged = line
        last = batch[-1]
        loss = (last.metrics or {}).get("loss")
        self.state.setText(f"Training: {last.message}" + ("" if loss is None else f" · loss {loss:.3f}"))
        if last.total:
            self.bar.setRange(0, last.total)
            self.bar.setValue(min(last.done, last.total))
            self.bar.setFormat(f"{log_line(last.message)} · %p%")
        else:
            self.bar.setRange(0, 0)
        self._update_eta()

    def _on_ended(self, text: str) -> None:
        self._timer.stop()
        self._log_if(self._epoch.flush())
        self.eta.setText("")
        self.state.setText(text)
        if self.bar.maximum() == 0:
            self.bar.setRange(0, 1)
        self.bar.setFormat("%p%")
        self.append_log(text)
        self._set_running(False)
        self.checkpoints.refresh()
        self._on_store_changed()

    def _update_eta(self) -> None:
        job = next((j for j in self.runner.running() if j.name == JOB), None)
        if job is not None:
            self.eta.setText(format_seconds_left(job.seconds_left(time.monotonic())))

    def _log_if(self, line: str | None) -> None:
        if line:
            self.append_log(line)

    def append_log(self, text: str) -> None:
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")

    def shutdown(self) -> None:
        self._timer.stop()
        self.settings.shutdown()
