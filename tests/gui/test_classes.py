"""Class edits from the project panel, each committed at once and undoable."""

from __future__ import annotations


def names(project):
    return [c.name for c in project.classes()]


def test_add_rename_recolour_and_undo(qtbot, open_window, project_path):
    window = open_window(project_path)
    panel, project, stack = window.panel, window.ws.project, window.ws.stack
    assert panel.model.rowCount() == 3
    assert panel.add_class("debris")
    assert names(project) == ["tumour", "stroma", "normal", "debris"]
    qtbot.waitUntil(lambda: panel.model.rowCount() == 4, timeout=2000)  # refreshes follow shortly
    debris = project.class_by_name("debris")
    assert panel.rename_class(debris, "mucus")
    assert panel.recolour_class(project.class_by_name("mucus"), "#123456")
    assert project.class_by_name("mucus").colour == "#123456"

    stack.undo()
    assert project.class_by_name("mucus").colour == debris.colour
    stack.undo()
    assert names(project)[-1] == "debris"
    stack.undo()
    assert names(project) == ["tumour", "stroma", "normal"]
    stack.redo()
    assert project.class_by_name("debris").id == debris.id  # the same class comes back


def test_refused_edits_show_a_message_and_stay_off_the_stack(open_window, project_path, dialogs):
    window = open_window(project_path)
    panel, project = window.panel, window.ws.project
    tumour = project.class_by_name("tumour")
    assert not panel.rename_class(tumour, "stroma")
    assert "already a class called 'stroma'" in dialogs[-1]["text"]
    assert not panel.set_class_key(tumour, "x")
    assert not panel.set_class_key(tumour, "2")
    assert "already labels stroma" in dialogs[-1]["text"]
    assert window.ws.stack.count() == 0
    assert panel.set_class_key(tumour, "t")
    assert project.class_by_name("tumour").key == "t"
    window.ws.stack.undo()
    assert project.class_by_name("tumour").key == "1"


def test_merge_and_delete_restore_labels_on_undo(qtbot, open_window, project_path):
    window = open_window(project_path)
    panel, project, stack = window.panel, window.ws.project, window.ws.stack
    a, b, c = project.image_ids()[:3]
    tumour, stroma = project.class_by_name("tumour"), project.class_by_name("stroma")
    project.set_label(a, tumour.id, annotator="bob")
    project.set_label(b, stroma.id, kind="import")
    project.set_label(c, tumour.id, annotator="bob")
    window.ws.notify()
    qtbot.waitUntil(lambda: panel.model.data(panel.model.index(0, 2)) == "2", timeout=2000)

    assert panel.merge_class(tumour, stroma)
    assert project.current_labels() == {a: stroma.id, b: stroma.id, c: stroma.id}
    assert names(project) == ["stroma", "normal"]
    stack.undo()
    assert project.current_labels() == {a: tumour.id, b: stroma.id, c: tumour.id}
    assert project.label_history(a)[-1].annotator == "bob"
    assert set(names(project)) == {"tumour", "stroma", "normal"}

    assert panel.delete_class(project.class_by_name("stroma"))
    assert project.current_labels() == {a: tumour.id, c: tumour.id}
    stack.undo()
    assert project.current_labels() == {a: tumour.id, b: stroma.id, c: tumour.id}
    assert project.label_history(b)[-1].kind == "import"  # the old event, as it was
    stack.redo()
    assert b not in project.current_labels()


def test_panel_counts(qtbot, open_window, project_path):
    window = open_window(project_path)
    project = window.ws.project
    first, second = project.image_ids()[:2]
    project.set_label(first, project.class_by_name("normal").id, annotator="alice")
    project.add_pseudo_labels([(second, project.class_by_name("tumour").id, 0.9, 0.2)])
    window.ws.notify()
    values = window.panel.values
    qtbot.waitUntil(lambda: values["Labelled"].text() == "1 of 8", timeout=2000)
    assert values["Unlabelled"].text() == "7"
    assert values["By who"].text() == "human:alice: 1"
    assert values["Pseudo-labels"].text() == "1 waiting for review"
    assert values["Checkpoint"].text().startswith("none yet")
