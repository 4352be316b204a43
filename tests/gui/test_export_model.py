"""File ▸ Export model…: a file dialog, then the ONNX export as a job."""

import json

import pytest
from PySide6.QtWidgets import QFileDialog

from atl_desktop.models.checkpoints import save_checkpoint
from atl_desktop.models.registry import build_model
from atl_desktop.store import Project

pytest.importorskip("onnx")


def test_export_model_menu_writes_onnx_and_card(qtbot, open_window, project_path, tmp_path, monkeypatch):
    with Project.open(project_path) as project:
        classes = project.class_names()
        checkpoint = save_checkpoint(project, build_model("smallcnn", len(classes), seed=0), classes=classes)
    window = open_window(project_path)
    chosen = tmp_path / "handoff"  # no suffix typed: .onnx is added
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(chosen), ""))
    action = next(a for a in window.menuBar().actions()[0].menu().actions() if a.text() == "Export &model…")
    with qtbot.waitSignal(window.runner.finished, timeout=120000):
        action.trigger()
    assert (tmp_path / "handoff.onnx").stat().st_size > 0
    card = json.loads((tmp_path / "handoff.card.json").read_text())
    assert card["checkpoint"]["id"] == checkpoint and card["classes"] == classes
    assert "Exported checkpoint" in window.statusBar().currentMessage()


def test_cancelled_dialog_starts_nothing(qtbot, open_window, project_path, monkeypatch):
    from atl_desktop.gui.datadialogs import ask_export_model

    window = open_window(project_path)
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: ("", ""))
    assert ask_export_model(window) is False and not window.runner.is_running()
