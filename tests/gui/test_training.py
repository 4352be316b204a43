"""The training panel with a real short job: curves fill, Stop keeps the last good
checkpoint, settings are saved for the job; rollback through the checkpoint list."""

from __future__ import annotations

from atl_desktop.gui.mainwindow import default_train_job
from atl_desktop.gui.trainsettings import TRAIN_SETTING, method_catalogue
from atl_desktop.store import Project


def label_some(path, n: int = 6) -> None:
    with Project.open(path) as project:
        classes = [c.id for c in project.classes()]
        for k, image_id in enumerate(project.image_ids()[:n]):
            project.set_label(image_id, classes[k % len(classes)], annotator="alice")


def configure(panel, epochs: int) -> None:
    form = panel.settings
    form.backbone_box.addItem("smallcnn")
    form.backbone_box.setCurrentText("smallcnn")
    form.set_weights(None)
    form.epochs.setValue(epochs)
    form.batch.setValue(2)
    form.lr.setValue(0.01)


def test_a_real_training_job_draws_curves_and_records_a_checkpoint(qtbot, open_window, project_path):
    label_some(project_path)
    window = open_window(project_path, train_factory=default_train_job)
    panel = window.training
    configure(panel, epochs=2)
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        panel.start_button.click()
        assert not panel.start_button.isEnabled() and panel.stop_button.isEnabled()
    saved = window.ws.project.get_setting(TRAIN_SETTING)
    assert (saved["backbone"], saved["weights"], saved["epochs"], saved["batch_size"]) == ("smallcnn", None, 2, 2)
    steps, losses = panel.curves.points["loss"]
    assert steps == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # 6 labelled images, batches of 2, 2 epochs
    assert all(loss > 0 for loss in losses)
    assert len(panel.curves.points["accuracy"][1]) == 6
    assert panel.bar.value() == 6 and panel.bar.maximum() == 6
    assert panel.checkpoints.table.rowCount() == 1
    log = panel.log.toPlainText()
    assert "Finished: checkpoint #1" in log
    assert "epoch 1/2: loss" in log and "(3 steps)" in log  # one line per epoch
    assert len(panel.curves.smoothed["loss"]) == 6
    assert panel.start_button.isEnabled() and not panel.stop_button.isEnabled()


def test_stop_keeps_the_last_good_checkpoint(qtbot, open_window, project_path):
    label_some(project_path)
    window = open_window(project_path, train_factory=default_train_job)
    panel = window.training
    configure(panel, epochs=1)
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        panel.start_button.click()
    assert len(window.ws.project.checkpoints()) == 1

    configure(panel, epochs=500)
    with qtbot.waitSignal(window.runner.cancelled, timeout=60000):
        panel.start_button.click()
        qtbot.waitUntil(lambda: len(panel.curves.points["loss"][0]) >= 3, timeout=30000)
        panel.stop_button.click()
    assert [c.id for c in window.ws.project.checkpoints()] == [1]  # nothing half-trained saved
    assert window.ws.project.latest_checkpoint().id == 1
    assert "Stopped" in panel.log.toPlainText()
    assert panel.start_button.isEnabled()


def test_rollback_to_an_earlier_checkpoint_and_undo(qtbot, open_window, project_path):
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    with Project.open(project_path) as project:
        names = project.class_names()
        first = save_checkpoint(project, build_model("smallcnn", 3, seed=0), classes=names,
                                config={"method": "finetune", "phase": "fine-tuning"},
                                metrics={"val_accuracy": 0.5})
        second = save_checkpoint(project, build_model("smallcnn", 3, seed=1), classes=names,
                                 parent_id=first, metrics={"val_accuracy": 0.75})
    window = open_window(project_path)
    window.tabs.setCurrentWidget(window.training)  # hidden tabs refresh when shown
    checkpoints, project = window.training.checkpoints, window.ws.project
    table = checkpoints.table
    assert [table.item(r, 0).text() for r in range(2)] == [f"{second} ✓", f"{first}"]
    assert table.item(0, 1).text() == str(first)  # the parent column
    assert table.item(1, 3).text() == "finetune"
    assert table.item(1, 4).text() == "val 50.0%"
    assert "fine-tuning with finetune" in table.item(1, 4).toolTip()

    table.selectRow(1)
    checkpoints.rollback_button.click()
    assert project.latest_checkpoint().id == first
    assert table.item(1, 0).text() == f"{first} ✓"
    window.ws.stack.undo()
    assert project.latest_checkpoint().id == second
    window.ws.stack.redo()
    assert project.latest_checkpoint().id == first


def test_method_settings_come_from_the_registry_with_their_papers(qtbot, open_window, project_path):
    window = open_window(project_path)
    form = window.training.settings
    catalogue = method_catalogue()
    form.set_methods(catalogue)
    assert [form.method_box.itemText(i) for i in range(form.method_box.count())] == list(catalogue)
    with_options = next((name for name, info in catalogue.items() if info["options"]), None)
    if with_options is None:
        return  # only plain fine-tuning is registered
    form.method_box.setCurrentText(with_options)
    info = catalogue[with_options]
    assert set(form.values()["method_options"]) == {name for name, _ in info["options"]}
    if info["paper"]:
        assert info["paper"] in form.method_box.toolTip()


def test_start_over_trains_a_new_model_instead_of_continuing(qtbot, open_window, project_path):
    label_some(project_path)
    window = open_window(project_path, train_factory=default_train_job)
    panel = window.training
    configure(panel, epochs=1)
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        panel.start_button.click()
    form = panel.settings
    assert form.continues_from.id == 1 and form.start_over.isVisibleTo(form)
    assert "Continues from checkpoint #1" in form.note.text()
    assert not form.weights_box.isEnabled()  # continuing keeps the checkpoint's weights

    form.backbone_box.addItem("resnet18")
    form.backbone_box.setCurrentText("resnet18")
    assert not panel.start_button.isEnabled()  # a resnet18 cannot continue a smallcnn
    assert "tick Start over" in form.note.text() and "tick Start over" in panel.start_button.toolTip()
    form.backbone_box.setCurrentText("smallcnn")
    form.start_over.setChecked(True)
    assert form.weights_box.isEnabled() and panel.start_button.isEnabled()
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        panel.start_button.click()
    newest = window.ws.project.latest_checkpoint()
    assert newest.id == 2 and newest.parent_id is None  # started over, not from #1
    assert "from a new model" in panel.log.toPlainText()


def test_phase_steps_run_on_across_phases():
    from atl_desktop.gui.trainingpanel import PhaseSteps
    from atl_desktop.jobs import Progress

    steps = PhaseSteps()
    xs = [steps.x(Progress(d, 3, f"{phase}: epoch 1/1")) for phase, d in
          (("source pre-training", 1), ("source pre-training", 2), ("source pre-training", 3),
           ("fine-tuning", 1), ("fine-tuning", 2))]
    assert xs == [1, 2, 3, 4, 5]


def test_epoch_summary_and_smoothing_by_hand():
    from atl_desktop.gui.curves import Smoother
    from atl_desktop.gui.trainingpanel import EpochSummary, log_line

    summary = EpochSummary()
    assert summary.add("epoch 1/2", {"loss": 1.0, "accuracy": 0.5}) is None
    assert summary.add("epoch 1/2", {"loss": 0.5, "accuracy": 1.0}) is None
    assert summary.add("epoch 2/2", {"loss": 0.2}) == "epoch 1/2: loss 0.750, accuracy 75.0% (2 steps)"
    assert summary.flush() == "epoch 2/2: loss 0.200 (1 step)"
    assert summary.flush() is None
    assert log_line("fine-tuning: validating 3/12") == "fine-tuning: validating"

    smoother = Smoother(alpha=0.1)
    assert smoother.add(1.0) == 1.0  # bias-corrected: the first value is itself
    assert abs(smoother.add(0.0) - 0.09 / 0.19) < 1e-12  # (0.9*0.1*1 + 0.1*0) / (1 - 0.9**2)


def test_the_settings_note_gets_the_height_its_wrapped_text_needs(qtbot):
    from atl_desktop.gui.trainsettings import WrappedNote

    note = WrappedNote()
    qtbot.addWidget(note)
    note.show()  # a hidden widget gets its resize events only once shown
    note.resize(150, 10)
    qtbot.waitUntil(lambda: note.width() == 150)
    note.setText("Continues from checkpoint #4 (smallcnn): weights apply when starting over.")
    one_line = note.fontMetrics().lineSpacing()
    assert note.minimumHeight() >= 3 * one_line  # wrapped over three lines or more at 150 px
    note.resize(2000, note.height())
    qtbot.waitUntil(lambda: note.width() == 2000)
    assert note.minimumHeight() < 2 * one_line  # one line once wide enough


def test_the_recipe_fields_show_the_project_s_settings_and_save_back(qtbot, open_window, project_path):
    """Minimum steps, schedule and augmentation: what a new project trains with, editable."""
    from atl_desktop.store.keys import NEW_PROJECT_TRAINING

    window = open_window(project_path)
    project = window.ws.project
    project.set_setting(TRAIN_SETTING, {**project.get_setting(TRAIN_SETTING, {}), **NEW_PROJECT_TRAINING})
    form = window.training.settings
    form.load()
    assert (form.min_steps.value(), form.schedule.currentData(), form.augment.currentData()) == (
        NEW_PROJECT_TRAINING["min_steps"], "onecycle", "histology")
    form.min_steps.setValue(0)
    form.augment.setCurrentIndex(form.augment.findData("natural"))
    saved = form.save()
    assert (saved["min_steps"], saved["schedule"], saved["augment"]) == (None, "onecycle", "natural")
    assert project.get_setting(TRAIN_SETTING)["augment"] == "natural"
