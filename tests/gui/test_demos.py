"""File ▸ Demo projects (open, reset while open) and File ▸ Export report."""

import pytest

from atl_desktop.demo import install_demo
from atl_desktop.gui.demos import open_demo, reset_demo, start_report
from atl_desktop.store import Project


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ATL_DESKTOP_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def _texts(menu):
    return [a.text() for a in menu.actions() if a.text()]


def test_file_menu_opens_and_resets_each_demo(qtbot, open_window, project_path):
    window = open_window(project_path)
    assert _texts(window.demo_menu) == [
        "Open the bloodcells demo", "Open the histology demo", "Open the digits demo",
        "Reset the bloodcells demo…", "Reset the histology demo…", "Reset the digits demo…"]
    digits = open_demo(window, "digits")
    try:
        assert digits.ws.project.path == install_demo("digits") and not window.isVisible()
        assert digits.ws.project.class_names()[:3] == ["0", "1", "2"]
    finally:
        digits.close()


def test_resetting_the_open_demo_reopens_a_fresh_copy(qtbot, open_window):
    copy = install_demo("histology")
    window = open_window(copy)
    window.ws.project.add_class("my own class")
    fresh = reset_demo(window, "histology", confirm=False)
    try:
        assert fresh is not None and fresh is not window and fresh.isVisible()
        assert fresh.ws.project.path == copy
        assert "my own class" not in fresh.ws.project.class_names()
    finally:
        fresh.close()
    with Project.open(copy, readonly=True):  # closed cleanly: nothing holds it
        pass


def test_export_report_writes_the_html_file(qtbot, open_window, project_path, tmp_path):
    window = open_window(project_path)
    out = tmp_path / "tiny-report.html"
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        assert start_report(window, str(out))
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert "Report written" in window.statusBar().currentMessage()
