"""The status bar: the compute device, the running job with its progress, the time
left and a cancel button.

Finding the device imports torch, which takes seconds, so it runs on a pool
thread after the window is up.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QStatusBar

from atl_desktop.gui.background import Background
from atl_desktop.gui.jobrunner import JobRunner, format_seconds_left
from atl_desktop.jobs import Progress


def compute_device_name() -> str:
    import torch  # slow; never on the start-up path

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "CPU"


class StatusBar(QStatusBar):
    def __init__(self, runner: JobRunner, device: str | None = None, parent=None):
        super().__init__(parent)
        self.runner = runner
        self.device = QLabel("Device: …")
        self.job_label = QLabel()
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(220)
        self.bar.setTextVisible(True)
        self.eta = QLabel()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job at its next step")
        self.cancel_button.clicked.connect(self.cancel_current)
        for widget in (self.job_label, self.bar, self.eta, self.cancel_button):
            self.addPermanentWidget(widget)
        self.addPermanentWidget(self.device)
        self._current: str | None = None
        self._show_job(False)
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self._update_eta)
        runner.started.connect(self._on_started)
        runner.progressed.connect(self._on_progress)
        for signal in (runner.finished, runner.failed, runner.cancelled):
            signal.connect(self._on_ended)
        self._background = Background(self)
        if device is not None:
            self.set_device(device)
        else:
            self._background.call(compute_device_name, self._device_found)

    def _device_found(self, result) -> None:
        # A broken torch install must not stop the window; say so where the device goes.
        self.set_device(f"unknown ({type(result).__name__})" if isinstance(result, Exception) else result)

    def set_device(self, name: str) -> None:
        self.device.setText(f"Device: {name}")

    def cancel_current(self) -> None:
        if self._current is not None:
            self.runner.cancel(self._current)
            self.job_label.setText(self.job_label.text() + " — cancelling…")
            self.cancel_button.setEnabled(False)

    def _show_job(self, visible: bool) -> None:
        for widget in (self.job_label, self.bar, self.eta, self.cancel_button):
            widget.setVisible(visible)

    def _title(self, name: str) -> str:
        job = next((j for j in self.runner.running() if j.name == name), None)
        return job.title if job is not None else name

    def _on_started(self, name: str) -> None:
        self._current = name
        self.job_label.setText(self._title(name))
        self.bar.setRange(0, 0)  # busy until the first progress
        self.eta.setText("")
        self.cancel_button.setEnabled(True)
        self._show_job(True)
        self._timer.start()

    def _on_progress(self, name: str, progress: Progress) -> None:
        if name != self._current:
            return
        message = f"{self._title(name)}: {progress.message}" if progress.message else self._title(name)
        self.job_label.setText(message)
        if progress.total:
            self.bar.setRange(0, progress.total)
            self.bar.setValue(min(progress.done, progress.total))
        else:
            self.bar.setRange(0, 0)
        self._update_eta()

    def _update_eta(self) -> None:
        job = next((j for j in self.runner.running() if j.name == self._current), None)
        if job is not None:
            self.eta.setText(format_seconds_left(job.seconds_left(time.monotonic())))

    def _on_ended(self, name: str, *_rest) -> None:
        if name != self._current:
            return
        self._current = None
        self._timer.stop()
        self._show_job(False)
        others = self.runner.running()
        if others:
            self._on_started(others[0].name)

    def shutdown(self) -> None:
        self._timer.stop()
        self._background.wait()
