"""Import and export from the window: dialogs give the job's arguments, the jobs run on
the runner with progress, and bad files show in a report that can be saved."""

from __future__ import annotations

import csv
import json

import numpy as np
from PIL import Image

from atl_desktop.gui.datadialogs import ExportDialog, ImportDialog


def test_export_dialog_output_csv_json_and_class_folders(qtbot, open_window, project_path, tmp_path):
    window = open_window(project_path)
    project = window.ws.project
    a, b = project.image_ids()[:2]
    project.set_label(a, project.class_by_name("tumour").id, annotator="alice")
    project.set_label(b, project.class_by_name("normal").id, annotator="bob")

    dialog = ExportDialog(project.path, window)
    assert dialog.request()["out"].endswith("tiny-labels.csv")  # a suggestion beside the project
    for fmt, name in (("csv", "labels.csv"), ("json", "labels.json"), ("imagefolder", "folders")):
        dialog.format_box.setCurrentIndex(dialog.format_box.findData(fmt))
        dialog.path_edit.setText(str(tmp_path / name))
        with qtbot.waitSignal(window.runner.finished, timeout=10000):
            assert window.start_export(**dialog.request())
    with open(tmp_path / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["label"], r["who"]) for r in rows) == [("normal", "human:bob"), ("tumour", "human:alice")]
    document = json.loads((tmp_path / "labels.json").read_text())
    assert sum(1 for image in document["images"] if image["label"] is not None) == 2
    folders = tmp_path / "folders"
    assert sorted(p.parent.name for p in folders.rglob("*.png")) == ["normal", "tumour"]
    assert "Exported 2 labelled images" in window.statusBar().currentMessage()


def test_import_more_images_reports_bad_files_and_saves_the_report(qtbot, open_window, project_path, tmp_path):
    source = tmp_path / "more"
    (source / "debris").mkdir(parents=True)
    (source / "tumour").mkdir()
    rng = np.random.default_rng(3)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(source / "debris" / f"d{k}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(source / "tumour" / "t.png")
    (source / "tumour" / "broken.png").write_bytes(b"not a png at all")

    window = open_window(project_path)
    dialog = ImportDialog(tmp_path, window)
    dialog.source_edit.setText(str(source))
    request = dialog.request()
    assert request["options"]["domain"] == "target" and request["options"]["labels"] == "labels"
    with qtbot.waitSignal(window.runner.finished, timeout=20000):
        assert window.start_import(**request)
    project = window.ws.project
    assert len(project.image_ids()) == 8 + 4
    assert project.class_by_name("debris") is not None
    report = window.import_report
    assert report.isVisible() and not report.isModal()
    assert "broken.png" in report.text.toPlainText()
    saved = tmp_path / "report.txt"
    report.save_to(saved)
    assert "broken.png" in saved.read_text() and "4 new images" in saved.read_text()
    qtbot.waitUntil(lambda: window.pool_browser.model.total() == 12, timeout=2000)
    report.close()
