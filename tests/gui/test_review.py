"""Pseudo-label review: groups by predicted class, accept, reject, relabel, undo."""

from __future__ import annotations

from PySide6.QtCore import Qt


def propose(window, confidences_by_class):
    """Pending pseudo-labels: {class name: [confidence, ...]} over the first images."""
    project = window.ws.project
    ids = iter(project.image_ids())
    items = [(next(ids), project.class_by_name(name).id, c, 0.1)
             for name, confidences in confidences_by_class.items() for c in confidences]
    project.add_pseudo_labels(items)
    window.ws.notify()
    return items


def test_groups_sorted_by_confidence(open_window, project_path):
    window = open_window(project_path)
    view = window.review_view
    window.tabs.setCurrentWidget(view)  # hidden tabs refresh when shown
    assert view.pages.currentIndex() == 0  # the empty state
    items = propose(window, {"stroma": [0.91, 0.99, 0.95], "tumour": [0.97]})
    assert view.pages.currentIndex() == 1
    assert [view.groups.item(i).text().split("\n")[0] for i in range(view.groups.count())] == [
        "tumour", "stroma"]  # class order
    assert window.tabs.tabText(1) == "Review pseudo-labels (4)"
    view.select_group(window.ws.project.class_by_name("stroma").id)
    assert [p.confidence for p in view.model.pseudo()] == [0.99, 0.95, 0.91]
    assert [p.image_id for p in view.model.pseudo()] == [items[1][0], items[2][0], items[0][0]]


def test_accept_group_with_marked_wrong_ones_then_undo(qtbot, open_window, project_path):
    window = open_window(project_path)
    view = window.review_view
    window.tabs.setCurrentWidget(view)  # hidden tabs refresh when shown
    propose(window, {"stroma": [0.99, 0.98, 0.97]})
    project = window.ws.project
    stroma = project.class_by_name("stroma").id
    right, wrong, right2 = view.model.pseudo()
    view.grid.select_row(1)
    qtbot.keyClick(view.grid, Qt.Key.Key_Space)  # mark the middle one wrong
    assert view.accept_button.text() == "Accept 2 as stroma, reject 1"

    view.accept_button.click()
    assert project.pseudo_labels() == []
    assert project.current_labels() == {right.image_id: stroma, right2.image_id: stroma}
    assert project.label_history(right.image_id)[-1].kind == "accepted-pseudo"
    assert project.rejected_pseudo() == {(wrong.image_id, stroma)}
    assert view.pages.currentIndex() == 0

    window.undo_action.trigger()
    assert {p.id for p in project.pseudo_labels()} == {right.id, wrong.id, right2.id}
    assert project.current_labels() == {}
    window.redo_action.trigger()
    assert set(project.current_labels()) == {right.image_id, right2.image_id}


def test_click_marks_and_reject_marked(qtbot, open_window, project_path):
    window = open_window(project_path)
    view = window.review_view
    window.tabs.setCurrentWidget(view)  # hidden tabs refresh when shown
    propose(window, {"tumour": [0.9, 0.8]})
    first, second = view.model.pseudo()
    rect = view.grid.visualRect(view.model.index(1))
    qtbot.mouseClick(view.grid.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert view.model.wrong_ids() == [second.id]
    view.reject_button.click()
    project = window.ws.project
    assert [p.id for p in project.pseudo_labels()] == [first.id]
    assert project.current_labels() == {}


def test_relabel_with_a_key(qtbot, open_window, project_path):
    window = open_window(project_path)
    view = window.review_view
    window.tabs.setCurrentWidget(view)  # hidden tabs refresh when shown
    propose(window, {"tumour": [0.9]})
    (item,) = view.model.pseudo()
    view.grid.select_row(0)
    qtbot.keyClick(view.grid, "3")  # it is "normal", not tumour
    project = window.ws.project
    normal = project.class_by_name("normal").id
    assert project.label_of(item.image_id) == normal
    event = project.label_history(item.image_id)[-1]
    assert (event.kind, event.annotator, event.suggestion_class_id) == (
        "human", "alice", project.class_by_name("tumour").id)
    assert project.pseudo_labels() == []
    window.ws.stack.undo()
    assert project.label_of(item.image_id) is None
    assert [p.id for p in project.pseudo_labels()] == [item.id]


def test_a_hidden_review_tab_reads_the_store_only_when_shown(open_window, project_path):
    window = open_window(project_path)
    view = window.review_view
    window.tabs.setCurrentWidget(window.query_view)
    propose(window, {"stroma": [0.91]})
    assert view.pages.currentIndex() == 0  # not re-read while hidden: labels stay quick
    assert window.tabs.tabText(1) == "Review pseudo-labels (1)"  # but the count is kept
    window.tabs.setCurrentWidget(view)
    assert view.pages.currentIndex() == 1 and view.groups.count() == 1
