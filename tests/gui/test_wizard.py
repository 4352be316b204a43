"""The new-project wizard end to end on a tiny generated class-per-folder dataset:
pages, the offline weights check, the project it writes, then the imports and the
first scoring job run by the window, with the bad file reported."""

from __future__ import annotations

import numpy as np
from PIL import Image

from atl_desktop.gui.trainsettings import TRAIN_SETTING, weights_problem
from atl_desktop.gui.wizard import NewProjectWizard


def make_imagefolder(root, per_class: int = 4):
    rng = np.random.default_rng(11)
    for name in ("adipose", "lymph", "mucus"):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}{k}.png")
    (root / "mucus" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def test_the_wizard_creates_a_project_and_the_first_batch(qtbot, open_window, tmp_path):
    data = make_imagefolder(tmp_path / "slides")
    wizard = NewProjectWizard(tmp_path, load_choices=False)
    qtbot.addWidget(wizard)
    wizard.show()
    (tmp_path / "taken.atl").write_bytes(b"")
    wizard.name_page.name.setText("taken")
    assert not wizard.name_page.isComplete()
    assert "already exists" in wizard.name_page.where.text()
    wizard.name_page.name.setText("colon")
    assert wizard.name_page.isComplete()
    assert wizard.name_page.where.text() == f"Creates {tmp_path / 'colon.atl'}"
    wizard.next()
    assert not wizard.data_page.isComplete()  # no images chosen yet
    wizard.data_page.target.setText(str(data))
    assert wizard.data_page.isComplete()
    wizard.next()
    classes = wizard.classes_page
    qtbot.waitUntil(lambda: classes.names() == ["adipose", "lymph", "mucus"], timeout=5000)
    assert "Found 3 classes" in classes.found.text()  # read from the class folders
    wizard.next()
    model = wizard.model_page
    assert wizard.currentPage() is model
    model.backbone.setCurrentText("smallcnn")
    model.weights.setCurrentIndex(model.weights.findData("imagenet"))
    assert not model.isComplete()
    assert "no ImageNet weights" in model.check.text()  # explained, not a crash later
    model.weights.setCurrentIndex(model.weights.findData(None))
    assert model.isComplete() and model.check.text().startswith("✓")
    model.batch.setValue(4)

    path, plan = wizard.create_project()
    assert path == tmp_path / "colon.atl" and path.exists()
    assert (plan.backbone, plan.weights, plan.strategy, plan.batch) == ("smallcnn", None, "entropy", 4)

    window = open_window(path)
    settings = window.ws.project.get_setting(TRAIN_SETTING)
    assert (settings["backbone"], settings["weights"], settings["method"]) == ("smallcnn", None, "finetune")
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        assert window.start_setup(plan)
    project = window.ws.project
    assert project.class_names() == ["adipose", "lymph", "mucus"]
    assert len(project.image_ids()) == 12
    assert len(project.current_labels()) == 12  # the folders' labels were imported
    report = window.import_report
    assert "truncated.png" in report.text.toPlainText()
    assert report.isVisible() and "1 file could not be imported" in report.heading.text()
    report.save_to(tmp_path / "report.txt")
    assert "truncated.png" in (tmp_path / "report.txt").read_text()
    report.close()


def test_the_first_batch_is_queried_when_the_target_is_unlabelled(qtbot, open_window, tmp_path):
    data = make_imagefolder(tmp_path / "slides", per_class=3)
    flat = tmp_path / "flat"
    flat.mkdir()
    for png in data.rglob("*.png"):
        if png.name != "truncated.png":
            (flat / png.name).write_bytes(png.read_bytes())
    wizard = NewProjectWizard(tmp_path, load_choices=False)
    qtbot.addWidget(wizard)
    wizard.name_page.name.setText("flat")
    wizard.data_page.target.setText(str(flat))
    wizard.classes_page.text.setPlainText("adipose\nlymph\nmucus\nadipose\n")
    wizard.model_page.backbone.setCurrentText("smallcnn")
    wizard.model_page.weights.setCurrentIndex(wizard.model_page.weights.findData(None))
    wizard.model_page.batch.setValue(5)
    # "random" needs no model: the cold-start scoring path (ModelChoice(pretrained=...))
    # belongs to the engine's tests.
    wizard.model_page.strategy.setCurrentText("random")
    path, plan = wizard.create_project()

    window = open_window(path)
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        assert window.start_setup(plan)
    assert window.ws.project.class_names() == ["adipose", "lymph", "mucus"]
    tiles = window.query_view.model.tiles()
    assert len(tiles) == 5 and all("random" in t.reason for t in tiles)
    assert window.ws.project.rounds()[-1].strategy == "random"
    assert window.tabs.currentWidget() is window.query_view


def test_the_offline_check_names_the_missing_file(tmp_path):
    problem = weights_problem("resnet18", "imagenet")
    if problem is not None:  # the weights are not cached on this machine
        assert "resnet18-" in problem and "Nothing is downloaded" in problem
    assert "does not exist" in weights_problem("resnet18", str(tmp_path / "none.safetensors"))
    assert weights_problem("smallcnn", None) is None
