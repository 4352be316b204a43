"""Labelling the queried batch from the keyboard; every label is in the store at once."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from atl_desktop.gui.queryview import EMPTY_TEXT
from atl_desktop.gui.undo import skipped_images
from atl_desktop.store import Project
from atl_desktop.store.keys import LAST_QUERY


def query(qtbot, window, batch=4):
    assert window.start_query("entropy", batch)
    qtbot.waitUntil(lambda: window.query_view.model.rowCount() == batch, timeout=5000)
    qtbot.waitUntil(lambda: not window.runner.is_running(), timeout=5000)
    return window.query_view


def test_empty_state_before_any_query(open_window, project_path):
    window = open_window(project_path)
    view = window.query_view
    assert view.stack.currentWidget() is view.empty
    assert view.empty.text() == EMPTY_TEXT


def test_keys_label_skip_and_survive_reopening(qtbot, open_window, project_path):
    window = open_window(project_path)
    view = query(qtbot, window)
    ids = [t.image_id for t in view.model.tiles()]
    names = {c.name: c.id for c in window.ws.project.classes()}
    assert view.grid.current_row() == 0

    qtbot.keyClick(view.grid, "1")  # tumour, then the next tile
    assert view.grid.current_row() == 1
    qtbot.keyClick(view.grid, "3")  # normal
    qtbot.keyClick(view.grid, Qt.Key.Key_Space)  # tile 2's top prediction: position 2, normal
    qtbot.keyClick(view.grid, "x")  # unsure: stays unlabelled
    project = window.ws.project
    assert project.current_labels() == {ids[0]: names["tumour"], ids[1]: names["normal"],
                                        ids[2]: names["normal"]}
    assert skipped_images(project) == {ids[3]}
    event = project.label_history(ids[0])[-1]
    assert (event.annotator, event.strategy, event.kind) == ("alice", "entropy", "human")
    assert event.round_id == project.rounds()[-1].id
    assert event.suggestion_class_id == names["tumour"]  # fake top for rank 1 is position 0
    assert event.suggestion_confidence == 0.7
    assert "3 labelled, 1 skipped, 0 to go" in view.summary.text()

    window.close()
    with Project.open(project_path) as reopened:
        assert reopened.current_labels() == {ids[0]: names["tumour"], ids[1]: names["normal"],
                                             ids[2]: names["normal"]}
        assert [item["image_id"] for item in reopened.get_setting(LAST_QUERY)] == ids

    again = open_window(project_path).query_view
    assert [t.image_id for t in again.model.tiles()] == ids  # the last batch comes back
    assert again.model.label(ids[1]).name == "normal"
    assert again.grid.current_row() == 3  # the first tile still unlabelled


def test_backspace_undo_and_redo(qtbot, open_window, project_path):
    window = open_window(project_path)
    view = query(qtbot, window)
    first, second = (t.image_id for t in view.model.tiles()[:2])
    project = window.ws.project
    qtbot.keyClick(view.grid, "2")
    qtbot.keyClick(view.grid, "2")
    assert set(project.current_labels()) == {first, second}

    qtbot.keyClick(view.grid, Qt.Key.Key_Backspace)
    assert set(project.current_labels()) == {first}
    assert view.model.label(second) is None
    window.undo_action.trigger()
    assert project.current_labels() == {}
    window.redo_action.trigger()
    window.redo_action.trigger()
    assert set(project.current_labels()) == {first, second}
    assert view.model.label(second).name == "stroma"


def test_relabelling_then_undo_restores_the_first_label(qtbot, open_window, project_path):
    window = open_window(project_path)
    view = query(qtbot, window)
    first = view.model.tiles()[0].image_id
    qtbot.keyClick(view.grid, "1")
    view.grid.select_row(0)
    qtbot.keyClick(view.grid, "3")
    project = window.ws.project
    assert project.label_of(first) == project.class_by_name("normal").id
    window.ws.stack.undo()
    assert project.label_of(first) == project.class_by_name("tumour").id
    assert project.label_history(first)[-1].annotator == "alice"


def test_blind_mode_hides_and_does_not_record_suggestions(qtbot, open_window, project_path):
    window = open_window(project_path)
    view = query(qtbot, window)
    window.blind_action.trigger()
    assert window.ws.blind and "blind" in window.windowTitle()
    first = view.model.tiles()[0].image_id
    headline, second, _ = view._describe(view.model.index(0))
    assert (headline, second) == ("Suggestion hidden (blind mode)", "")
    qtbot.keyClick(view.grid, Qt.Key.Key_Space)  # no suggestion to accept
    assert window.ws.project.current_labels() == {}
    qtbot.keyClick(view.grid, "2")
    event = window.ws.project.label_history(first)[-1]
    assert event.suggestion_class_id is None and event.suggestion_confidence is None


def test_enter_opens_the_full_image(qtbot, open_window, project_path):
    window = open_window(project_path)
    view = query(qtbot, window, batch=2)
    qtbot.keyClick(view.grid, Qt.Key.Key_Return)
    assert len(window.viewers) == 1
    viewer = window.viewers[0]
    qtbot.waitUntil(lambda: "24 × 24 px" in viewer.status.text(), timeout=5000)
    assert viewer.view.item is not None
    viewer.close()


def test_thumbnails_are_decoded_off_the_gui_thread(qtbot, open_window, project_path):
    window = open_window(project_path)
    view = query(qtbot, window, batch=2)
    thumbs = window.ws.thumbs
    first = view.model.tiles()[0].image_id
    qtbot.waitUntil(lambda: thumbs.get(first, window.ws.image_path(first)) is not None, timeout=5000)
    image = thumbs.get(first, window.ws.image_path(first))
    assert image.width() == 24 * (176 // 24)  # small images are enlarged by a whole factor


def test_strategies_come_from_the_engine_registry(qtbot, open_window, project_path):
    active = pytest.importorskip("atl_desktop.active")
    box = open_window(project_path).query_view.strategy_box
    qtbot.waitUntil(lambda: box.count() == len(active.STRATEGIES), timeout=30000)
    assert [box.itemText(i) for i in range(box.count())] == list(active.STRATEGIES)
    assert box.currentText() == "entropy"
