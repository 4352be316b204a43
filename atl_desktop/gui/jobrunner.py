"""One runner for every engine job: a generator of Progress driven on a QThread.

A job factory is called as `factory(project_handle, **kwargs)` inside the
worker thread, with a Project handle of its own (SQLite connections belong to
the thread that made them). Each yielded Progress becomes a signal; a cancel
request stops the generator at its next yield (closing it, so its `finally`
blocks run). Jobs in the same group conflict: a second one is refused with a
message, while labelling goes on during any job.

Progress reaches the GUI thread at most PROGRESS_HZ times a second: a training
step can take a millisecond, and a queued signal per step would keep the event
loop busy painting progress. Every Progress still arrives (in `steps`, in
order), so live curves miss no point; `progressed` carries the newest one.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from atl_desktop.gui.gcguard import collect_on_gui_thread
from atl_desktop.jobs import Cancelled, Progress, run_job

JobFactory = Callable[..., Any]
PROGRESS_HZ = 20


def leave_a_core_for_the_window() -> None:
    """Cap torch's threads for jobs started from this thread at one fewer than the cores.

    With as many compute threads as cores, the GUI thread (and any other program)
    preempts one of them and every parallel step waits for it: on a busy 2-core
    machine a training run took 2.4x as long and the window stuttered. The cap
    is per thread (OpenMP), so it is set in each job's own thread.
    """
    # A plain import, never sys.modules: while the window's warm-up thread is importing
    # torch, sys.modules holds a half-made module; the import waits for it to be complete.
    import torch

    cap = max(1, (os.cpu_count() or 2) - 1)
    if torch.get_num_threads() > cap:
        torch.set_num_threads(cap)


class _Worker(QObject):
    """Lives in the job's thread; everything it touches there is its own."""

    progressed = Signal(str, object)  # job name, list of Progress since the last signal
    succeeded = Signal(str, object)
    failed = Signal(str, str, str)
    cancelled = Signal(str)

    def __init__(self, name: str, factory: JobFactory, project, kwargs: dict[str, Any]):
        super().__init__()
        self.name = name
        self._factory = factory
        self._project = project
        self._kwargs = kwargs
        self.cancel_requested = threading.Event()
        self._pending: list[Progress] = []
        self._last_emit = 0.0

    @Slot()
    def run(self) -> None:
        outcome: tuple = ("cancelled",)
        handle = None
        try:
            leave_a_core_for_the_window()
            handle = self._project.another_connection()
            job = self._factory(handle, **self._kwargs)
            outcome = ("finished", run_job(job, self._forward, self.cancel_requested.is_set))
        except Cancelled:
            pass
        except Exception as error:  # any failure is reported to the user, never lost
            outcome = ("failed", str(error) or type(error).__name__, traceback.format_exc())
        finally:
            if handle is not None:
                handle.close()
        self._flush()
        # Reported only once the job's own handle is closed.
        if outcome[0] == "finished":
            self.succeeded.emit(self.name, outcome[1])
        elif outcome[0] == "failed":
            self.failed.emit(self.name, outcome[1], outcome[2])
        else:
            self.cancelled.emit(self.name)

    def _forward(self, progress: Progress) -> None:
        self._pending.append(progress)
        if time.monotonic() - self._last_emit >= 1.0 / PROGRESS_HZ:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.progressed.emit(self.name, self._pending)
            self._pending = []
        self._last_emit = time.monotonic()


@dataclass
class RunningJob:
    name: str
    title: str
    group: str
    started: float
    worker: _Worker
    thread: QThread
    last: Progress | None = None
    cancelling: bool = False

    def seconds_left(self, now: float) -> float | None:
        """Time remaining, extrapolated from the rate so far (None until it means something)."""
        fraction = self.last.fraction if self.last is not None else None
        elapsed = now - self.started
        if not fraction or elapsed < 0.5:
            return None
        return elapsed * (1.0 - fraction) / fraction


class JobRunner(QObject):
    """Starts jobs, forwards their progress, and reports how each one ended."""

    started = Signal(str)  # job name
    progressed = Signal(str, object)  # job name, the newest Progress
    steps = Signal(str, object)  # job name, every Progress since the last signal (a list)
    finished = Signal(str, object)  # job name, the generator's return value
    failed = Signal(str, str, str)  # job name, message, details (traceback)
    cancelled = Signal(str)  # job name

    def __init__(self, parent: QObject | None = None, log_file: Path | None = None):
        super().__init__(parent)
        collect_on_gui_thread()  # jobs' threads must not finalise the window's objects
        self.log_file = log_file
        self._jobs: dict[str, RunningJob] = {}
        # Each thread and its worker are kept until the thread has really ended.
        self._threads: dict[QThread, _Worker] = {}

    # ---- queries -------------------------------------------------------------

    def running(self) -> list[RunningJob]:
        return list(self._jobs.values())

    def is_running(self, name: str | None = None) -> bool:
        return bool(self._jobs) if name is None else name in self._jobs

    def conflict(self, name: str, group: str) -> str | None:
        """Why a job may not start now, in words; None when it may."""
        for job in self._jobs.values():
            if job.name == name or job.group == group:
                return (
                    f"{job.title} is still running. Wait for it to finish or cancel it "
                    f"before starting another."
                )
        return None

    # ---- control -------------------------------------------------------------

    def start(
        self,
        name: str,
        factory: JobFactory,
        project,
        *,
        title: str | None = None,
        group: str = "model",
        **kwargs: Any,
    ) -> str | None:
        """Start a job; returns None, or the reason it was refused."""
        reason = self.conflict(name, group)
        if reason is not None:
            return reason
        thread = QThread()
        thread.setObjectName(f"job-{name}")
        worker = _Worker(name, factory, project, kwargs)
        worker.moveToThread(thread)
        job = RunningJob(name, title or name, group, time.monotonic(), worker, thread)
        self._jobs[name] = job
        self._threads[thread] = worker
        thread.started.connect(worker.run)
        # Bound methods of this GUI-thread object, so each signal is queued to the GUI thread.
        worker.progressed.connect(self._on_progress)
        worker.succeeded.connect(self._on_success)
        worker.failed.connect(self._on_failure)
        worker.cancelled.connect(self._on_cancel)
        thread.finished.connect(self._reap_threads)
        thread.start()
        self.started.emit(name)
        return None

    def cancel(self, name: str) -> None:
        job = self._jobs.get(name)
        if job is not None:
            job.cancelling = True
            job.worker.cancel_requested.set()

    def cancel_all(self) -> None:
        for name in list(self._jobs):
            self.cancel(name)

    def wait_all(self, timeout_ms: int = 60_000) -> bool:
        """Block until every job thread has ended (used when the window closes)."""
        deadline = time.monotonic() + timeout_ms / 1000
        for thread in list(self._threads):
            left = max(0, int((deadline - time.monotonic()) * 1000))
            if not thread.wait(left):
                return False
        return True

    # ---- signals from workers (arrive on the GUI thread) -----------------------

    @Slot(str, object)
    def _on_progress(self, name: str, batch: list[Progress]) -> None:
        job = self._jobs.get(name)
        if job is None or not batch:
            return
        job.last = batch[-1]
        self.steps.emit(name, batch)
        self.progressed.emit(name, batch[-1])

    @Slot(str, object)
    def _on_success(self, name: str, result: Any) -> None:
        if self._end(name) is not None:
            self.finished.emit(name, result)

    @Slot(str)
    def _on_cancel(self, name: str) -> None:
        if self._end(name) is not None:
            self.cancelled.emit(name)

    @Slot(str, str, str)
    def _on_failure(self, name: str, message: str, details: str) -> None:
        job = self._end(name)
        if job is not None:
            self._log_failure(job, message, details)
            self.failed.emit(name, message, details)

    def _end(self, name: str) -> RunningJob | None:
        job = self._jobs.pop(name, None)
        if job is not None:
            job.thread.quit()
        return job

    @Slot()
    def _reap_threads(self) -> None:
        self._threads = {t: w for t, w in self._threads.items() if t.isRunning()}

    def _log_failure(self, job: RunningJob, message: str, details: str) -> None:
        if self.log_file is None:
            return
        try:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "a", encoding="utf-8") as log:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                log.write(f"{stamp} job {job.name!r} ({job.title}) failed: {message}\n{details}\n")
        except OSError:
            pass  # a log we cannot write must not hide the error dialog


def format_seconds_left(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{max(1, round(seconds))} s left"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"
