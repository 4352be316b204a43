"""Several annotators in the window: agreement and confusion of two annotators, their
disagreements sent to the query view, the pool filtered by annotator, and a repeat set
measuring one annotator's consistency."""

from __future__ import annotations

from PySide6.QtCore import Qt

from atl_desktop.active.annotators import REPEAT
from atl_desktop.store import Project


def _two_annotators(path) -> list[int]:
    """alice and bob label images 0-5; they disagree on images 4 and 5."""
    with Project.open(path) as project:
        tumour, stroma, _ = (c.id for c in project.classes())
        ids = project.image_ids()
        for k, image_id in enumerate(ids[:6]):
            project.set_label(image_id, tumour if k < 3 else stroma, annotator="alice")
            project.set_label(image_id, tumour if k < 4 else stroma if k == 4 else tumour, annotator="bob")
        return ids


def test_agreement_between_two_annotators_and_review(qtbot, open_window, project_path):
    ids = _two_annotators(project_path)
    window = open_window(project_path)
    view = window.annotators
    window.tabs.setCurrentWidget(view)
    qtbot.waitUntil(lambda: view.summary is not None, timeout=10000)
    assert [view.people.item(r, 0).text() for r in range(view.people.rowCount())] == ["human:alice", "human:bob"]
    assert view.people.item(1, 1).text() == "6"  # bob labelled last: every current label is his
    assert (view.first_box.currentText(), view.second_box.currentText()) == ("human:alice", "human:bob")
    # alice: T T T S S S; bob: T T T T S T -> agree on 4 of 6. Confusion rows alice, columns bob:
    # [[3, 0], [2, 1]]; p_o = 4/6, p_e = (3*5 + 3*1)/36 = 0.5, kappa = (2/3 - 1/2) / (1/2) = 1/3.
    assert "6 images labelled by both. They agree on 4 (66.7%)" in view.pair_note.text()
    assert "κ = 0.33, fair agreement" in view.pair_note.text()
    cells = [[view.confusion.item(i, j).text() for j in range(2)] for i in range(2)]
    assert cells == [["3", "0"], ["2", "1"]]

    assert view.review_button.text() == "Review the 2 disagreements"
    view.review_button.click()
    assert window.tabs.currentWidget() is window.query_view
    assert [t.image_id for t in window.query_view.model.tiles()] == [ids[3], ids[5]]
    assert all("disagreed" in t.reason for t in window.query_view.model.tiles())

    view.people.selectRow(0)
    view.pool_button.click()
    assert window.tabs.currentWidget() is window.pool_browser
    assert window.pool_browser.who_box.currentData() == "human:alice"
    assert window.pool_browser.model.total() == 0  # bob's labels replaced all of alice's


def test_a_repeat_set_measures_consistency(qtbot, open_window, project_path):
    with Project.open(project_path) as project:
        tumour, stroma, _ = (c.id for c in project.classes())
        ids = project.image_ids()[:3]
        for image_id in ids:
            project.set_label(image_id, tumour, annotator="alice")
    window = open_window(project_path)
    view = window.annotators
    window.tabs.setCurrentWidget(view)
    qtbot.waitUntil(lambda: view.summary is not None, timeout=10000)
    assert "alice" in view.repeat_note.text()
    view.repeat_count.setValue(5)  # only 3 of alice's labels exist
    dialog = view.start_repeat_check()
    assert sorted(dialog.image_ids) == sorted(ids)
    assert "tumour" not in dialog.counter.text()  # the earlier answer is not shown
    qtbot.keyClick(dialog, Qt.Key.Key_1)  # tumour: the same as before
    qtbot.keyClick(dialog, Qt.Key.Key_2)  # stroma: changed
    qtbot.keyClick(dialog, Qt.Key.Key_1)
    assert dialog.same_count() == 2 and "2 of 3 images (67%)" in dialog.image.text()
    events = [e for e in window.ws.project.label_history() if e.strategy == REPEAT]
    assert len(events) == 3 and all(e.annotator == "alice" for e in events)
    dialog.accept()

    qtbot.waitUntil(lambda: view.summary is not None and "human:alice" in view.summary.consistency,
                    timeout=10000)
    assert view.people.item(0, 4).text() == "2 of 3 (67%)"
    assert "2 of 3 images shown again (67%)" in view.repeat_note.text()
    window.ws.stack.undo()  # a repeat answer is an ordinary undoable label, and stops counting
    assert window.ws.project.label_of(dialog.image_ids[2]) == tumour
    qtbot.waitUntil(lambda: view.people.item(0, 4).text() == "1 of 2 (50%)", timeout=10000)
