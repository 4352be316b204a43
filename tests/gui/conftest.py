"""Tiny projects with generated PNG images, a window with fake jobs, recorded dialogs."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

from atl_desktop.jobs import Progress
from atl_desktop.store import Project
from atl_desktop.store.files import sha256_file

CLASSES = ("tumour", "stroma", "normal")


@pytest.fixture(autouse=True)
def collect_garbage_here(qapp):
    """Each test's windows are collected on this, the GUI, thread before the next test; the
    tests outside tests/gui run with automatic collection as usual."""
    yield
    gc.collect()
    gc.enable()


@dataclass(frozen=True)
class FakeItem:
    image_id: int
    score: float
    reason: str
    top: list = field(default_factory=list)


@dataclass(frozen=True)
class FakeResult:
    round_id: int
    items: list


def make_project(folder: Path, n_images: int = 8, classes=CLASSES, side: int = 24) -> Path:
    """A closed project with `n_images` random PNG images (referenced in place) and classes."""
    rng = np.random.default_rng(7)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.atl"
    with Project.create(path) as project:
        for name in classes:
            project.add_class(name)
        for i in range(n_images):
            file = images / f"img{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(file)
            project.add_image(sha256=sha256_file(file), location=project.relative_location(file),
                              stored="ref", original_path=str(file), width=side, height=side,
                              mode="RGB", bit_depth=8)
    return path


def fake_query_job(project, *, strategy, batch, checkpoint_id=None, params=None):
    """Scores nothing real, but uses the job's own handle like the session does."""
    labelled = project.current_labels()
    pool = [i for i in project.image_ids() if i not in labelled][:batch]
    round_id = project.start_round(strategy, {"batch": batch})
    for step in range(3):
        yield Progress(step + 1, 3, "scoring")
    items = [FakeItem(image_id, 1.0 - k / 10, f"entropy {1.0 - k / 10:.2f} nats, rank {k + 1}",
                      [(k % 3, 0.7), ((k + 1) % 3, 0.2)])
             for k, image_id in enumerate(pool)]
    return FakeResult(round_id, items)


def fake_job(project, **kwargs):
    yield Progress(1, 1, "nothing")
    return 0


@pytest.fixture
def project_path(tmp_path) -> Path:
    return make_project(tmp_path)


@pytest.fixture
def dialogs(monkeypatch) -> list[dict]:
    """Every QMessageBox shown, recorded instead of blocking the test."""
    shown: list[dict] = []

    def record(box):
        shown.append({"title": box.windowTitle(), "text": box.text(), "details": box.detailedText()})
        return QMessageBox.StandardButton.Ok

    monkeypatch.setattr(QMessageBox, "exec", record)
    return shown


@pytest.fixture
def settings(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def open_window(qtbot, tmp_path, settings, dialogs):
    """Opens a MainWindow on a project with fake jobs; closes every window at the end."""
    from atl_desktop.gui.mainwindow import MainWindow

    windows = []

    def open_(path: Path, **factories) -> MainWindow:
        factories.setdefault("query_factory", fake_query_job)
        factories.setdefault("train_factory", fake_job)
        factories.setdefault("pseudo_factory", fake_job)
        window = MainWindow(Project.open(path), annotator="alice", settings=settings,
                            device="CPU (test)", log_file=tmp_path / "log" / "atl.log",
                            warm=False, **factories)
        qtbot.addWidget(window)
        windows.append(window)
        window.show()
        return window

    yield open_
    for window in windows:
        window.close()
