"""Possible label errors: the check runs as a job, its suspects are relabelled or kept by keyboard."""

from __future__ import annotations

from PySide6.QtCore import Qt

from atl_desktop.jobs import Progress
from atl_desktop.store import Project
from atl_desktop.store.keys import LABELS_KEPT_SETTING
from tests.gui.conftest import make_project


def test_check_labels_lists_suspects_and_keys_relabel_or_keep(qtbot, open_window, tmp_path, monkeypatch):
    from atl_desktop.loop import session

    path = make_project(tmp_path, n_images=12)
    with Project.open(path) as p:
        names = {c.name: c.id for c in p.classes()}
        ids = sorted(p.image_ids())
        for k, image_id in enumerate(ids):
            p.set_label(image_id, list(names.values())[k % 3], annotator="bob")
    calls = []

    def fake_check(project, **kwargs):  # what session.check_labels_job returns, without a model
        calls.append(kwargs)
        for step in range(3):
            yield Progress(step + 1, 3, "cross-validating")
        return [session.LabelSuspect(ids[3], names["tumour"], names["stroma"], 0.6, 0.75, 0.15),
                session.LabelSuspect(ids[6], names["tumour"], names["normal"], 0.3, 0.5, 0.2),
                session.LabelSuspect(ids[9], names["tumour"], names["stroma"], 0.1, 0.4, 0.3)]

    monkeypatch.setattr(session, "check_labels_job", fake_check)
    window = open_window(path)
    view = window.label_errors
    assert view.stack.currentWidget() is view.empty  # nothing checked yet
    window.check_labels_action.trigger()
    qtbot.waitUntil(lambda: view.model.rowCount() == 3, timeout=5000)
    qtbot.waitUntil(lambda: not window.runner.is_running(), timeout=5000)
    assert calls == [{}] and window.tabs.currentWidget() is view
    assert [t.image_id for t in view.model.tiles()] == [ids[3], ids[6], ids[9]]  # most suspicious first
    assert view._describe(view.model.index(0, 0)) == (
        "75% stroma", "15% tumour (the label)", "#1 most suspicious: margin 0.60 over the label")
    assert view.grid.current_row() == 0

    qtbot.keyClick(view.grid, Qt.Key.Key_Space)  # take the suggested class
    project = window.ws.project
    assert project.label_of(ids[3]) == names["stroma"]
    event = project.label_history(ids[3])[-1]
    assert (event.annotator, event.strategy, event.kind) == ("alice", "check-labels", "human")
    assert (event.suggestion_class_id, event.suggestion_confidence) == (names["stroma"], 0.75)
    assert view._describe(view.model.index(0, 0))[:2] == ("Relabelled stroma", "was tumour")
    assert view.grid.current_row() == 1

    qtbot.keyClick(view.grid, "k")  # keep as is: remembered, undoable
    assert project.label_of(ids[6]) == names["tumour"]
    assert project.get_setting(LABELS_KEPT_SETTING) == {str(ids[6]): names["tumour"]}
    assert view._describe(view.model.index(1, 0))[0] == "Kept as tumour"
    assert view.summary.text() == ("3 possible label errors, most suspicious first: 1 relabelled, "
                                   "1 kept as they are, 1 to look at")
    qtbot.keyClick(view.grid, Qt.Key.Key_Backspace)  # undoes the keep
    assert project.get_setting(LABELS_KEPT_SETTING) == {}
    view.grid.select_row(2)
    qtbot.keyClick(view.grid, "3")  # a class's key relabels: normal
    assert project.label_of(ids[9]) == names["normal"]
    assert project.label_history(ids[9])[-1].strategy == "check-labels"
    assert "2 relabelled, 0 kept as they are, 1 to look at" in view.summary.text()


def test_the_check_can_be_cancelled(qtbot, open_window, tmp_path, monkeypatch):
    import threading

    from atl_desktop.loop import session

    release = threading.Event()

    def slow_check(project, **kwargs):
        for step in range(1000):
            yield Progress(step, 1000, "cross-validating")
            release.wait(0.01)
        return []

    monkeypatch.setattr(session, "check_labels_job", slow_check)
    window = open_window(make_project(tmp_path))
    window.check_labels_action.trigger()
    qtbot.waitUntil(lambda: window.runner.is_running(), timeout=5000)
    assert not window.label_errors.check_button.isEnabled()
    with qtbot.waitSignal(window.runner.cancelled, timeout=10000):
        window.status.cancel_current()
    qtbot.waitUntil(lambda: window.label_errors.check_button.isEnabled(), timeout=5000)
    assert window.label_errors.model.rowCount() == 0
