"""Model ▸ Choose encoder…: the registry's choices, checked on the job runner before they are saved."""

import os

import pytest
from PySide6.QtWidgets import QDialogButtonBox
from safetensors.torch import save_file

from atl_desktop.gui.encoderdialog import ENCODER_JOB, ask_encoder
from atl_desktop.models.foundation import FOUNDATION_MODELS
from atl_desktop.store.keys import ENCODER_SETTING
from tests.engine.models.test_foundation import _reference, _tiny

SHOT = os.environ.get("ATL_ENCODER_SHOT")  # where to save a picture of the dialog, to look at it


def _open(window, qtbot):
    dialog = ask_encoder(window)
    qtbot.waitUntil(lambda: bool(dialog.options), timeout=60_000)  # the registry is read off the GUI thread
    return dialog


def _choose(dialog, name: str, weights: str | None = None) -> None:
    index = [o.name for o in dialog.options].index(name)
    dialog.list.setCurrentItem(dialog.list.topLevelItem(index))
    if weights is not None:
        dialog.weights.setText(weights)


def _ok(dialog) -> None:
    dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()


def _saved(window):
    return window.ws.project.get_setting(ENCODER_SETTING)


def test_lists_the_registry_with_descriptions_and_preselects_the_current(open_window, project_path, qtbot):
    window = open_window(project_path)
    assert window.encoder_action.text() == "Choose &encoder…"
    dialog = _open(window, qtbot)
    rows = {dialog.list.topLevelItem(i).text(0): dialog.list.topLevelItem(i).text(1)
            for i in range(dialog.list.topLevelItemCount())}
    assert {"untrained:resnet18", "resnet18", "dinov2_vits14", "dinov2_vitb14", "uni_vitl16",
            "phikon_vitb16"} <= set(rows)
    assert "UNI ViT-L/16" in rows["uni_vitl16"] and "ImageNet" in rows["resnet18"]
    assert dialog.selected().name == "untrained:resnet18"  # the default, as nothing is saved
    assert not dialog.weights_row.isEnabled() and dialog.size.isEnabled()
    _choose(dialog, "phikon_vitb16")
    assert dialog.weights_row.isEnabled() and not dialog.size.isEnabled()
    assert "model.safetensors" in dialog.hint.text()
    from atl_desktop.gui import encoderdialog
    from atl_desktop.models import encoders

    for name in ("NO_WEIGHTS", "OPTIONAL_WEIGHTS", "REQUIRED_WEIGHTS"):  # copied, to keep torch out
        assert getattr(encoderdialog, name) == getattr(encoders, name)
    if SHOT:
        dialog.grab().save(SHOT)


def test_choosing_the_untrained_backbone_saves_it_and_says_so(open_window, project_path, qtbot):
    window = open_window(project_path)
    dialog = _open(window, qtbot)
    _choose(dialog, "untrained:resnet18")
    dialog.size.setValue(32)
    with qtbot.waitSignal(window.runner.finished, timeout=60_000):
        _ok(dialog)
    assert _saved(window) == {"name": "untrained:resnet18", "weights": None, "checkpoint_id": None,
                              "input_size": 32}
    assert not dialog.isVisible()
    assert "untrained resnet18" in window.statusBar().currentMessage()
    window.panel.refresh()
    assert window.panel.values["Encoder"].text() == "an untrained resnet18 (no weights)"


def test_a_missing_foundation_file_is_explained_in_the_dialog_and_nothing_is_saved(
        open_window, project_path, qtbot, tmp_path, dialogs):
    window = open_window(project_path)
    dialog = _open(window, qtbot)
    missing = str(tmp_path / "no-such-folder")
    _choose(dialog, "dinov2_vits14", missing)
    with qtbot.waitSignal(window.runner.failed, timeout=60_000):
        _ok(dialog)
    assert f"{missing} does not exist" in dialog.problem.text()
    assert "dinov2_vits14_pretrain.pth" in dialog.problem.text()  # names the expected file
    assert dialog.isVisible() and dialog.weights.text() == missing  # kept, to fix the path
    assert dialog.list.isEnabled() and dialog.ok.isEnabled()
    assert _saved(window) is None and dialogs == []  # no extra message box either
    if SHOT:
        qtbot.wait(100)  # the message's lines laid out
        dialog.grab().save(SHOT.replace(".png", "-problem.png"))


def test_an_empty_path_for_a_foundation_model_asks_for_it_without_a_job(open_window, project_path, qtbot):
    window = open_window(project_path)
    dialog = _open(window, qtbot)
    _choose(dialog, "uni_vitl16", "")
    _ok(dialog)
    assert "uni_vitl16 needs its weights" in dialog.problem.text()
    assert not window.runner.is_running(ENCODER_JOB) and _saved(window) is None


@pytest.fixture
def tiny_dino(monkeypatch, tmp_path):
    """A two-block DINOv2-shaped ViT in the registry, with random weights saved as a snapshot folder."""
    model = _tiny("tiny_dino", "vit_small_patch14_dinov2", 28, pooling="cls+mean")
    monkeypatch.setitem(FOUNDATION_MODELS, model.name, model)
    folder = tmp_path / "snapshot"
    folder.mkdir()
    save_file(_reference(model).state_dict(), str(folder / "model.safetensors"))
    return folder


def test_a_foundation_model_from_a_snapshot_folder_is_loaded_then_saved(
        open_window, project_path, qtbot, tiny_dino):
    window = open_window(project_path)
    dialog = _open(window, qtbot)
    _choose(dialog, "tiny_dino", str(tiny_dino))
    with qtbot.waitSignal(window.runner.finished, timeout=60_000):
        _ok(dialog)
    assert _saved(window) == {"name": "tiny_dino", "weights": str(tiny_dino), "checkpoint_id": None,
                              "input_size": None}
    assert f"tiny_dino ({tiny_dino})" in window.statusBar().currentMessage()
    # Opened again, the dialog shows the saved choice and its path.
    again = _open(window, qtbot)
    assert again.selected().name == "tiny_dino" and again.weights.text() == str(tiny_dino)


def test_cancel_leaves_the_setting_as_it_was(open_window, project_path, qtbot, tiny_dino):
    window = open_window(project_path)
    before = {"name": "untrained:resnet18", "weights": None, "checkpoint_id": None, "input_size": 48}
    window.ws.project.set_setting(ENCODER_SETTING, before)
    dialog = _open(window, qtbot)
    assert dialog.size.value() == 48
    _choose(dialog, "tiny_dino", str(tiny_dino))
    dialog.buttons.button(QDialogButtonBox.StandardButton.Cancel).click()
    assert not dialog.isVisible() and not window.runner.is_running()
    assert _saved(window) == before


def test_a_checkpoint_is_chosen_by_making_it_current_undoably(open_window, project_path, qtbot):
    from atl_desktop.store import Project

    with Project.open(project_path) as project:
        ssl = project.add_checkpoint(file="a.safetensors", sha256="a", backbone="resnet18", classes=[],
                                     config={"phase": "self-supervised"})
        trained = project.add_checkpoint(file="b.safetensors", sha256="b", backbone="resnet18",
                                         classes=["tumour"], config={"method": "finetune"})
    window = open_window(project_path)
    window.panel.refresh()
    assert window.panel.values["Encoder"].text() == f"checkpoint #{trained} (resnet18)"
    dialog = _open(window, qtbot)
    assert dialog.list.topLevelItem(1).text(0) == f"checkpoint #{ssl}"
    assert "self-supervised" in dialog.list.topLevelItem(1).text(1)
    dialog.list.setCurrentItem(dialog.list.topLevelItem(1))
    _ok(dialog)
    assert window.ws.project.latest_checkpoint().id == ssl and not dialog.isVisible()
    assert not window.runner.is_running() and _saved(window) is None  # nothing to load, nothing saved
    window.panel.refresh()
    assert window.panel.values["Encoder"].text() == f"checkpoint #{ssl} (self-supervised resnet18)"
    window.ws.stack.undo()
    assert window.ws.project.latest_checkpoint().id == trained
