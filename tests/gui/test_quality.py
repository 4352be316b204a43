"""Model quality: rounds' recorded accuracy, calibration and stopping signal; an
evaluation job for the current checkpoint fills recall and the confusion matrix."""

from __future__ import annotations

from atl_desktop.gui.quality import NO_ROUNDS, stop_words
from atl_desktop.store import Project


def test_empty_state_then_recorded_rounds(qtbot, open_window, project_path):
    window = open_window(project_path)
    view = window.quality
    assert view.stop_label.text() == NO_ROUNDS
    assert "No calibration recorded" in view.reliability_note.text()

    project = window.ws.project
    bins = [{"lower": 0.5, "upper": 0.75, "count": 3, "confidence": 0.6, "accuracy": 1 / 3},
            {"lower": 0.75, "upper": 1.0, "count": 1, "confidence": 0.9, "accuracy": 1.0}]
    for accuracy, kappa, stop in ((0.5, None, False), (0.75, 0.995, True)):
        round_id = project.start_round("entropy")
        project.finish_round(round_id, {"labels": 4, "test": {"accuracy": accuracy,
                                        "calibration": {"ece": 0.2, "bins": bins}},
                                        "stop": {"kappa": kappa, "stop": stop}})
    window.ws.notify()
    assert view.rounds_table.rowCount() == 2
    assert view.rounds_table.item(1, 3).text() == "0.750"
    assert "stabilised" in view.stop_label.text() and "0.995" in view.stop_label.text()
    assert "ECE) 0.200 over 4 test images" in view.reliability_note.text()


def test_stop_words_before_two_rounds():
    summaries = [{"kappa": None, "stop": False}]
    assert "not yet known" in stop_words(summaries)
    assert "keep going" in stop_words([*summaries, {"kappa": 0.7, "stop": False}])


def test_evaluating_the_current_checkpoint(qtbot, open_window, project_path):
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
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        assert view.start_evaluation()
    result = view.result
    assert result.n == 6
    assert view.recall_table.rowCount() == 3
    assert [view.recall_table.item(r, 2).text() for r in range(3)] == ["2", "2", "2"]
    total = sum(int(view.confusion_table.item(i, j).text()) for i in range(3) for j in range(3))
    assert total == 6
    assert f"{result.accuracy:.1%}" in view.eval_note.text()
