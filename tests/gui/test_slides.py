"""The slide view: patches over the slide, labels in class colours, a heatmap, click to label
and back; the query view's context inset for patches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor

from atl_desktop.data.slides import SLIDES
from atl_desktop.data.tiling import TilingParams, add_slide
from atl_desktop.jobs import run_job
from atl_desktop.store import Project
from tests.slidefiles import tissue_image, write_pyramid


@pytest.fixture
def slide_project(tmp_path):
    write_pyramid(tmp_path / "s.tif", tissue_image())
    path = tmp_path / "slides.atl"
    with Project.create(path) as project:
        tumour = project.add_class("tumour", colour="#E69F00")
        project.add_class("stroma", colour="#0072B2")
        report = run_job(add_slide(project, tmp_path / "s.tif", TilingParams(patch=128, tissue_side=256)))
        project.set_label(report.image_ids[0], tumour)
    yield path, report.image_ids
    SLIDES.close()


def _loaded(qtbot, window):
    view = window.slide_view
    qtbot.waitUntil(lambda: view.canvas.data is not None, timeout=10000)
    return view


def test_slide_view_shows_patches_labels_and_heatmap(qtbot, open_window, slide_project):
    path, ids = slide_project
    window = open_window(path)
    view = _loaded(qtbot, window)
    canvas = view.canvas
    assert len(canvas.data.patches) == 9 and canvas.data.image is not None
    assert canvas.labels == {ids[0]: QColor("#E69F00")}
    assert "9 patches" in view.status.text() and "0 scored" in view.status.text()
    for overlay in ("Uncertainty", "Predicted class", "Tissue", "Grid only", "Labels"):
        view.overlay_box.setCurrentText(overlay)
        assert not canvas.grab().isNull()  # nothing scored yet: draws without a heatmap

    # A heatmap from scores: patch 1 predicted stroma with certainty, drawn at full opacity.
    probs = np.tile([[0.5, 0.5]], (9, 1))
    probs[1] = (0.0, 1.0)
    canvas.data = dataclasses.replace(canvas.data, classes=("tumour", "stroma"), probs=probs,
                                      uncertainty=np.where(np.arange(9) == 1, 0.0, 1.0))
    view.overlay_box.setCurrentText("Predicted class")
    view.opacity.setValue(100)
    centre = canvas.patch_rect(1).center().toPoint()
    assert canvas.grab().toImage().pixelColor(centre) == QColor("#0072B2")
    view.overlay_box.setCurrentText("Uncertainty")
    sure = canvas.grab().toImage().pixelColor(centre)
    unsure = canvas.grab().toImage().pixelColor(canvas.patch_rect(2).center().toPoint())
    assert sure.green() > unsure.green()  # pale yellow (sure) against red (unsure)
    assert "unsure" in view.legend.text()
    patch = canvas.data.patches[1].image_id
    assert view.known_top([patch]) == {patch: [[1, 1.0], [0, 0.0]]}  # for the query view


def test_click_a_patch_to_label_it_then_back_to_the_slide(qtbot, open_window, slide_project):
    path, ids = slide_project
    window = open_window(path)
    view = _loaded(qtbot, window)
    window.tabs.setCurrentWidget(view)
    qtbot.waitExposed(view.canvas)
    target = 4
    qtbot.mouseClick(view.canvas, Qt.MouseButton.LeftButton,
                     pos=view.canvas.patch_rect(target).center().toPoint())
    image_id = view.canvas.data.patches[target].image_id
    assert window.tabs.currentWidget() is window.query_view
    assert [t.image_id for t in window.query_view.model.tiles()] == [image_id]
    assert window.query_view.model.tiles()[0].reason == "chosen on the slide"

    # The tile shows the patch's surroundings in an inset, read off the GUI thread.
    delegate = window.query_view.grid.itemDelegate()
    window.query_view.grid.viewport().repaint()
    qtbot.waitUntil(lambda: image_id in delegate.insets._images, timeout=10000)
    inset, box = delegate.insets._images[image_id]
    assert not inset.isNull() and box == pytest.approx((0.375, 0.375, 0.625, 0.625))

    # Label it from the keyboard, then Ctrl+L shows it on the slide, in its class colour.
    qtbot.keyClick(window.query_view.grid, Qt.Key.Key_2)
    view.canvas.highlight = None
    qtbot.keyClick(window, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    assert window.tabs.currentWidget() is view
    assert view.canvas.highlight == target
    assert view.canvas.labels[image_id] == QColor("#0072B2")


def test_stain_dialog_previews_and_keeps_the_choice(qtbot, open_window, slide_project):
    from atl_desktop.store.keys import STAIN_SETTING

    path, ids = slide_project
    window = open_window(path)
    view = _loaded(qtbot, window)
    view.canvas.highlight = 0
    dialog = view.ask_stain()
    dialog.method.setCurrentText("reinhard")
    dialog.preview()
    qtbot.waitUntil(lambda: dialog.use_button.isEnabled(), timeout=10000)
    assert dialog.previews.count() == 8  # four patches, before and after
    dialog.use()
    setting = window.ws.project.get_setting(STAIN_SETTING)
    assert setting["method"] == "reinhard" and setting["reference_image"] == f"image {ids[0]}"
    dialog.turn_off()
    assert window.ws.project.get_setting(STAIN_SETTING) is None
    dialog.accept()
