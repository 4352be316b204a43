"""A project held open by another process: a message, no crash."""

from __future__ import annotations

import subprocess
import sys

import pytest

from atl_desktop.gui import app
from tests.gui.conftest import make_project

HOLDER = (
    "import sys\n"
    "from atl_desktop.store import Project\n"
    "p = Project.open(sys.argv[1])\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def locked_project(project_path):
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(project_path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "ready"
        yield project_path
        holder.stdin.close()  # the holder reads to the end of its input, then exits


def test_main_explains_a_locked_project(qapp, locked_project, dialogs):
    assert app.main([str(locked_project)]) == 1
    assert len(dialogs) == 1
    assert dialogs[0]["title"] == "Cannot open project"
    assert "already open for writing" in dialogs[0]["text"]


def test_main_explains_a_file_that_is_no_project(qapp, tmp_path, dialogs):
    bogus = tmp_path / "notes.atl"
    bogus.write_text("hello")
    assert app.main([str(bogus)]) == 1
    assert "not an ATL Desktop project" in dialogs[0]["text"]


def test_window_keeps_its_project_when_another_is_locked(
        qtbot, open_window, tmp_path, locked_project, dialogs):
    other = make_project(tmp_path / "other")
    window = open_window(other)
    assert window.open_other(locked_project) is None
    assert "already open for writing" in dialogs[-1]["text"]
    assert not window.ws.project.closed
    assert window.isVisible()
