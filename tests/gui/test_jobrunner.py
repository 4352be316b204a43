"""The job runner: progress, result, cancel, errors, conflicts, and labelling during a job."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from atl_desktop.gui.jobrunner import JobRunner, format_seconds_left
from atl_desktop.jobs import Progress
from atl_desktop.store import Project


@pytest.fixture
def project(project_path):
    with Project.open(project_path) as handle:
        yield handle


def counting_job(handle, *, n, seen):
    seen["thread"] = threading.get_ident()
    seen["handle"] = handle
    seen["images"] = len(handle.image_ids())  # the job's own connection works in its thread
    for i in range(n):
        yield Progress(i + 1, n, f"step {i + 1}")
    return n * 10


def test_progress_and_result(qtbot, project):
    runner = JobRunner()
    seen, progress = {}, []
    runner.steps.connect(lambda name, batch: progress.extend((name, p.done) for p in batch))
    with qtbot.waitSignal(runner.finished, timeout=5000) as finished:
        assert runner.start("count", counting_job, project, n=3, seen=seen) is None
    assert finished.args == ["count", 30]
    assert progress == [("count", 1), ("count", 2), ("count", 3)]
    assert seen["thread"] != threading.get_ident()
    assert seen["handle"] is not project and seen["handle"].closed  # closed by the runner
    assert seen["images"] == 8
    assert not runner.is_running()
    assert runner.wait_all(5000)


def test_cancel_stops_at_the_next_yield_and_closes_the_generator(qtbot, project):
    runner = JobRunner()
    released, closed, steps = threading.Event(), threading.Event(), []

    def endless(handle):
        try:
            while True:
                steps.append(1)
                yield Progress(len(steps), None, "forever")
                released.wait(5)
        finally:
            closed.set()

    runner.progressed.connect(lambda name, p: runner.cancel(name))
    with qtbot.waitSignal(runner.cancelled, timeout=5000) as cancelled:
        runner.start("endless", endless, project)
        qtbot.waitUntil(lambda: bool(steps), timeout=5000)
        released.set()
    assert cancelled.args == ["endless"]
    assert closed.is_set()
    assert len(steps) <= 2
    assert runner.wait_all(5000)


def test_errors_are_reported_with_details_and_logged(qtbot, project, tmp_path):
    log = tmp_path / "logs" / "atl.log"
    runner = JobRunner(log_file=log)

    def broken(handle):
        yield Progress(1, 2, "half way")
        raise ValueError("the scores came out as NaN")

    with qtbot.waitSignal(runner.failed, timeout=5000) as failed:
        runner.start("broken", broken, project, title="Scoring")
    name, message, details = failed.args
    assert (name, message) == ("broken", "the scores came out as NaN")
    assert "Traceback" in details and "ValueError" in details
    text = log.read_text()
    assert "Scoring" in text and "the scores came out as NaN" in text
    runner.wait_all(5000)


def test_a_conflicting_job_is_refused_with_a_reason(qtbot, project):
    runner = JobRunner()
    release = threading.Event()

    def waiting(handle):
        yield Progress(0, 1, "waiting")
        release.wait(5)

    assert runner.start("train", waiting, project, title="Training") is None
    reason = runner.start("train", waiting, project, title="Training")
    assert reason is not None and "Training is still running" in reason
    other = runner.start("query", waiting, project, title="Scoring", group="model")
    assert other is not None and "Training" in other
    with qtbot.waitSignal(runner.finished, timeout=5000):
        release.set()
    assert runner.start("query", waiting, project, title="Scoring") is None  # free again
    release.set()
    qtbot.waitUntil(lambda: not runner.is_running(), timeout=5000)
    runner.wait_all(5000)


def test_seconds_left_wording():
    assert format_seconds_left(None) == ""
    assert format_seconds_left(12.4) == "12 s left"
    assert format_seconds_left(150) == "about 2 min left"
    assert format_seconds_left(5400) == "about 1.5 h left"


def test_window_shows_a_failed_job_and_labelling_goes_on_during_a_job(
        qtbot, open_window, project_path, dialogs):
    release = threading.Event()

    def slow_train(handle, **kwargs):
        yield Progress(1, 2, "epoch 1")
        release.wait(5)
        raise RuntimeError("out of memory")

    window = open_window(project_path, train_factory=slow_train)
    assert window.start_train()
    assert not window.query_view.train_button.isEnabled()
    assert not window.start_train()  # a second training is refused, with a message
    assert dialogs[-1]["text"].startswith("Training is still running")
    qtbot.waitUntil(lambda: window.status.bar.value() == 1, timeout=5000)
    assert window.status.cancel_button.isVisible()

    project = window.ws.project  # labelling during the job
    first = project.image_ids()[0]
    window.panel.add_class("debris")
    project.set_label(first, project.class_by_name("debris").id, annotator="alice")
    assert project.label_of(first) is not None

    release.set()
    qtbot.waitUntil(lambda: not window.runner.is_running(), timeout=5000)
    failure = dialogs[-1]
    assert failure["title"] == "Job failed"
    assert "Training failed: out of memory" in failure["text"]
    assert "RuntimeError" in failure["details"]
    assert window.query_view.train_button.isEnabled()
    assert not window.status.cancel_button.isVisible()


def test_cancel_button_cancels_the_running_job(qtbot, open_window, project_path):
    def endless(handle, **kwargs):
        while True:
            yield Progress(0, None, "scoring")

    window = open_window(project_path, query_factory=endless)
    with qtbot.waitSignal(window.runner.cancelled, timeout=5000):
        window.start_query("entropy", 4)
        window.status.cancel_button.click()
    assert "cancelled" in window.statusBar().currentMessage()


def test_a_real_scoring_job_ranks_the_pool_by_entropy(qtbot, open_window, project_path):
    from atl_desktop.gui.mainwindow import default_query_job
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    with Project.open(project_path) as project:
        model = build_model("smallcnn", len(project.class_names()), seed=0)
        checkpoint = save_checkpoint(project, model, classes=project.class_names())
    window = open_window(project_path, query_factory=default_query_job)
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        assert window.start_query("entropy", 3)
    tiles = window.query_view.model.tiles()
    assert len(tiles) == 3
    assert {t.image_id for t in tiles} <= set(window.ws.project.image_ids())
    scores = [t.score for t in tiles]
    assert scores == sorted(scores, reverse=True)  # most uncertain first
    assert all("nats" in t.reason for t in tiles)
    assert all(len(t.top) == 3 and abs(sum(p.probability for p in t.top) - 1) < 1e-4 for t in tiles)
    assert window.query_view.checkpoint_id == checkpoint
    assert len(window.ws.project.get_setting("last_query")) == 3


RACE_SCRIPT = """
import sys, threading
from PySide6.QtCore import QCoreApplication, QTimer
app = QCoreApplication([])
assert "torch" not in sys.modules
from atl_desktop.gui.jobrunner import JobRunner
from atl_desktop.store import Project

def job(handle):
    yield from ()
    return "done"

def warm():
    import torch  # noqa: F401  (what the window's warm-up thread does at start)

threading.Thread(target=warm).start()
while "torch" not in sys.modules:
    pass  # start the job while torch is half imported
runner = JobRunner()
outcome = []
runner.finished.connect(lambda name, result: (outcome.append(result), app.quit()))
runner.failed.connect(lambda name, message, details: (outcome.append(message), app.quit()))
QTimer.singleShot(60000, app.quit)
with Project.open(sys.argv[1]) as project:
    runner.start("job", job, project)
    app.exec()
print(outcome)
"""


def test_a_job_started_while_the_warm_up_imports_torch_runs(project_path):
    """The job's thread caps torch's threads: it must wait for the half-imported torch."""
    done = subprocess.run([sys.executable, "-c", RACE_SCRIPT, str(project_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['done']"
