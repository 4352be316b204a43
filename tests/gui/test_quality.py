"""Model quality: the learning curve with the random baseline, the stopping signal in
words, calibration and confusion from what the rounds recorded, and an evaluation job
for a checkpoint no round assessed."""

from __future__ import annotations

from atl_desktop.gui.quality import NO_ROUNDS, stop_words
from atl_desktop.store import Project
from atl_desktop.store.keys import BASELINE_SETTING, SOURCE_SETTING

BINS = [{"lower": 0.5, "upper": 0.75, "count": 3, "confidence": 0.6, "accuracy": 1 / 3},
        {"lower": 0.75, "upper": 1.0, "count": 1, "confidence": 0.9, "accuracy": 1.0}]


def test_empty_state_then_recorded_rounds(qtbot, open_window, project_path):
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    window = open_window(project_path)
    view = window.quality
    assert view.accuracy_plot is None  # pyqtgraph plots are built when the tab is first shown
    window.tabs.setCurrentWidget(view)
    assert view.accuracy_plot is not None
    assert view.stop_label.text() == NO_ROUNDS
    assert "No checkpoint yet" in view.eval_note.text()
    assert not view.evaluate_button.isEnabled()

    project = window.ws.project
    checkpoint = save_checkpoint(project, build_model("smallcnn", 3, seed=0), classes=project.class_names())
    confusion = [[2, 0, 0], [1, 0, 0], [0, 0, 1]]
    test = {"n": 4, "accuracy": 0.75, "balanced_accuracy": 2 / 3, "per_class_recall": [1.0, 0.0, 1.0],
            "confusion": confusion, "classes": ["tumour", "stroma", "normal"],
            "calibration": {"ece": 0.2, "bins": BINS}}
    for labels, accuracy, stop in ((4, 0.5, {"kappa": None, "agreement": None, "n": 50, "stop": False}),
                                   (8, 0.75, {"kappa": 0.995, "agreement": 0.996, "n": 500, "stop": True})):
        round_id = project.start_round("entropy")
        project.finish_round(round_id, {"labels": labels, "test": {**test, "accuracy": accuracy},
                                        "stop": stop}, checkpoint_id=checkpoint)
    project.set_setting(SOURCE_SETTING, {"accuracy": 0.3, "labels": 0})
    project.set_setting(BASELINE_SETTING, {"strategy": "random", "labels": [0, 4, 8], "accuracy": [0.3, 0.4, 0.5]})
    window.ws.notify()

    assert view.rounds_table.rowCount() == 2
    assert [view.rounds_table.item(1, c).text() for c in (2, 3, 5)] == ["8", "75.0%", "0.4%"]
    assert view.stop_label.text().startswith("Predictions changed on 0.4% of the stop set (500 images)")
    assert "unlikely to help much" in view.stop_label.text()
    curves = {item.name(): item.getData() for item in view.accuracy_plot.getPlotItem().listDataItems()}
    assert [list(v) for v in curves["this project"]] == [[0.0, 4.0, 8.0], [0.3, 0.5, 0.75]]
    assert [list(v) for v in curves["random sampling (baseline)"]] == [[0, 4, 8], [0.3, 0.4, 0.5]]
    # The current checkpoint's numbers come from the round that assessed it.
    assert "assessed at the end of round 2" in view.eval_note.text()
    assert "ECE) 0.200 over 4 test images" in view.reliability_note.text()
    assert "Not temperature-scaled" in view.reliability_note.text()
    assert view.suggestion_note.text() == ""
    # A round whose assessment fitted a temperature, and a query whose head fitted one out of fold.
    scaled = {"ece": 0.05, "temperature": 1.8205, "fitted_on": "80 labelled validation images",
              "bins": [{**BINS[0], "confidence": 0.4}, {**BINS[1], "confidence": 0.95}]}
    round_id = project.start_round("margin", {"chosen": [], "temperature": {
        "temperature": 2.5, "ece_before": 0.21, "ece_after": 0.06, "fitted_on": "out-of-fold predictions"}})
    project.finish_round(round_id, {"labels": 12, "test": {**test, "calibration": {
        "ece": 0.2, "bins": BINS, "scaled": scaled}}, "stop": {}}, checkpoint_id=checkpoint)
    window.ws.notify()
    assert ("Temperature scaling: ECE 0.20 → 0.05 (T = 1.8), T fitted on 80 labelled validation images"
            in view.reliability_note.text())
    assert view.suggestion_note.text().startswith(
        f"Suggestions (round {round_id}): ECE 0.21 → 0.06 (T = 2.5) out of fold")
    after = [i for i in view.reliability_plot.getPlotItem().listDataItems() if i.name() == "after temperature scaling"]
    assert [list(v) for v in after[0].getData()] == [[0.4, 0.95], [1 / 3, 1.0]]
    assert [view.recall_table.item(r, 1).text() for r in range(3)] == ["100.0%", "0.0%", "100.0%"]
    assert view.confusion_table.item(1, 0).text() == "1"  # a stroma image predicted as tumour
    assert "1 of 1 stroma images predicted as tumour" in view.confusion_table.item(1, 0).toolTip()


def test_stop_words_before_two_rounds_and_while_changing():
    first = {"kappa": None, "agreement": None, "stop": False}
    assert "not known yet" in stop_words([first])
    changing = stop_words([first, {"kappa": 0.7, "agreement": 0.88, "stop_n": 200, "stop": False}])
    assert changing.startswith("Predictions changed on 12.0% of the stop set (200 images)")
    assert "still changing" in changing


def test_evaluating_a_checkpoint_no_round_assessed(qtbot, open_window, project_path):
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    with Project.open(project_path) as project:
        classes = [c.id for c in project.classes()]
        ids = project.image_ids()
        with project.transaction() as db:
            db.execute("UPDATE images SET split = 'test' WHERE id <= ?", (ids[5],))
        for k, image_id in enumerate(ids[:6]):
            project.set_truth(image_id, classes[k % 3])
        save_checkpoint(project, build_model("smallcnn", 3, seed=0), classes=project.class_names())
    window = open_window(project_path)
    view = window.quality
    assert "has not been assessed" in view.eval_note.text()
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        assert view.start_evaluation()
    result = view.result
    assert result["n"] == 6
    assert view.recall_table.rowCount() == 3
    assert [view.recall_table.item(r, 2).text() for r in range(3)] == ["2", "2", "2"]
    total = sum(int(view.confusion_table.item(i, j).text()) for i in range(3) for j in range(3))
    assert total == 6
    assert "evaluated here" in view.eval_note.text() and f"{result['accuracy']:.1%}" in view.eval_note.text()
    assert "ECE" in view.reliability_note.text()


def test_evaluating_without_labelled_test_images_says_what_to_do(qtbot, open_window, project_path):
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    with Project.open(project_path) as project:
        save_checkpoint(project, build_model("smallcnn", 3, seed=0), classes=project.class_names())
    window = open_window(project_path)
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        assert window.quality.start_evaluation()
    assert "No labelled test images" in window.quality.eval_note.text()


def test_audit_estimate_and_stopping_rule_follow_the_audit_labels(qtbot, open_window, project_path):
    from atl_desktop.active.audit import WHY_AUDIT
    from atl_desktop.jobs import run_job
    from atl_desktop.loop.session import score_job
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    with Project.open(project_path) as project:
        save_checkpoint(project, build_model("smallcnn", 3, seed=0), classes=project.class_names())
        run_job(score_job(project))  # the cache the window reads
        ids = project.image_ids()
        project.mark_audit(ids[:4], seed=0)
        tumour = project.classes()[0].id
        for image_id in ids[:3]:
            project.set_label(image_id, tumour)
    window = open_window(project_path)
    view = window.quality
    window.tabs.setCurrentWidget(view)
    qtbot.waitUntil(lambda: view.audit is not None and view.audit.n == 3, timeout=20000)
    assert view.audit_note.text().startswith("3 audit labels: accuracy")
    assert view.audit_table.item(0, 2).text() == "3"  # three tumour audit labels
    assert "Keep labelling" in view.rule_label.text()
    assert "no audit label yet for stroma, normal" in view.rule_label.text()
    assert WHY_AUDIT in view.audit_box.toolTip()
    window.ws.project.set_label(ids[3], window.ws.project.classes()[1].id)
    window.ws.notify()
    qtbot.waitUntil(lambda: view.audit.n == 4, timeout=20000)
    assert view.audit_table.item(1, 2).text() == "1"
    window.ws.project.release_audit()
    window.ws.notify()
    qtbot.waitUntil(lambda: view.audit is None, timeout=20000)
    assert "no labelled audit images yet" in view.audit_note.text()


def test_releasing_the_audit_images_is_asked_and_undoable(open_window, project_path, monkeypatch, dialogs):
    from atl_desktop.gui import messages

    asked = []
    monkeypatch.setattr(messages, "ask", lambda parent, title, text, yes, no="Cancel": asked.append(text) or True)
    window = open_window(project_path)
    assert not window.release_audit()  # nothing held out: said so, nothing done
    assert dialogs[-1]["text"] == "No audit images are held out."
    project = window.ws.project
    ids = project.image_ids()
    project.mark_audit(ids[:2])
    assert window.release_audit()
    assert "2 audit images (0 labelled)" in asked[-1]
    assert project.audit_ids(held_out=True) == set()
    window.ws.stack.undo()
    assert project.audit_ids(held_out=True) == set(ids[:2])
    window.ws.stack.redo()
    assert project.audit_ids(held_out=False) == set(ids[:2])


def test_the_recorded_audit_is_shown_until_the_new_model_has_scored_the_audit_images(
        qtbot, open_window, project_path):
    from atl_desktop.active.audit import audit_estimate
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    with Project.open(project_path) as project:
        checkpoint = save_checkpoint(project, build_model("smallcnn", 3, seed=0), classes=project.class_names())
        ids = project.image_ids()
        project.mark_audit(ids[:1])
        project.set_label(ids[0], project.classes()[0].id)
        recorded = audit_estimate([0, 0, 1], [0, 1, 1], project.class_names())
        round_id = project.start_round("entropy")
        project.finish_round(round_id, {"audit": recorded.to_json(), "stop": {"stop": True}},
                             checkpoint_id=checkpoint)
    window = open_window(project_path)
    view = window.quality
    window.tabs.setCurrentWidget(view)
    qtbot.waitUntil(lambda: "as recorded at the end of round 1" in view.audit_note.text(), timeout=20000)
    assert view.audit == recorded and view.audit_table.item(0, 2).text() == "2"
