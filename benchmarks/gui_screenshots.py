"""Screenshots for the docs: the query view while labelling, the review of pseudo-labels, the
wizard, the pool browser, the training panel during a job, model quality and annotator
agreement.

Run under a real X server (Xvfb), e.g.
    ../shared/tools/gui-shot /tmp/shot.png --wait 240 -- .venv/bin/python benchmarks/gui_screenshots.py
It works on a copy of the bundled histology demo, starts a real training job and
grabs each window with QWidget.grab() into docs/ (or --out); the gui-shot image
itself is not needed. `--only pool,training` takes some of them.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PySide6.QtCore import QEventLoop, QItemSelectionModel, QTimer
from PySide6.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "resources" / "demo" / "histology.atl"
SHOTS = ("query", "review", "wizard", "pool", "training", "quality", "annotators")


def copy_demo(folder: Path) -> Path:
    target = folder / DEMO.name
    with sqlite3.connect(f"{DEMO.resolve().as_uri()}?mode=ro", uri=True) as source, \
            sqlite3.connect(target) as copy:
        source.backup(copy)  # consistent even with a WAL beside the file
    shutil.copytree(DEMO.with_name(DEMO.name + ".d"), target.with_name(target.name + ".d"),
                    ignore=shutil.ignore_patterns("lock"))
    return target


def wait(ms: int) -> None:
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def until(condition, timeout_ms: int = 60_000) -> bool:
    waited = 0
    while not condition() and waited < timeout_ms:
        wait(100)
        waited += 100
    return bool(condition())


def tiles_as_class_folders(project, folder: Path, per_class: int = 6) -> Path:
    """A small class-per-folder dataset from the demo's own tiles, for the wizard."""
    by_class: dict[int, list[int]] = {}
    for image_id, class_id in project.current_labels(domain="source").items():
        by_class.setdefault(class_id, []).append(image_id)
    names = {c.id: c.name for c in project.classes()}
    for class_id, ids in sorted(by_class.items()):
        out = folder / names[class_id]
        out.mkdir(parents=True, exist_ok=True)
        for image_id in ids[:per_class]:
            shutil.copy(project.image_path(project.image(image_id)), out / f"{image_id}.png")
    return folder


def shoot_query(window, out: Path) -> None:
    """The demo's queried batch with three tiles labelled (by the hidden truth, as an expert
    would) and one marked unsure, the fifth current."""
    from PySide6.QtTest import QTest

    from atl_desktop.gui.models import TileRole

    view, project = window.query_view, window.ws.project
    window.tabs.setCurrentWidget(view)
    until(lambda: view.model.rowCount() > 4)
    keys = {c.id: c.key for c in window.ws.book().classes}
    truth = project.truth()
    view.grid.setFocus()
    for row in range(3):
        image_id = view.model.index(row).data(TileRole).image_id
        QTest.keyClick(view.grid, keys[truth[image_id]])
    QTest.keyClick(view.grid, "x")
    wait(2500)  # thumbnails decode off the GUI thread
    window.grab().save(str(out / "query_view.png"))


def shoot_review(window, out: Path) -> None:
    """The pseudo-labels waiting for review, the largest group open."""
    view = window.review_view
    window.tabs.setCurrentWidget(view)
    until(lambda: view.groups.count() > 0)
    sizes = Counter(p.class_id for p in window.ws.project.pseudo_labels())
    view.select_group(sizes.most_common(1)[0][0])
    wait(2500)
    window.grab().save(str(out / "review_view.png"))


def shoot_pool(window, out: Path) -> None:
    """The unlabelled target pool, most uncertain first, three tiles selected."""
    from atl_desktop.gui.poolmodel import LABEL_NONE

    browser = window.pool_browser
    window.tabs.setCurrentWidget(browser)
    for box, value in ((browser.domain_box, "target"), (browser.label_box, LABEL_NONE),
                       (browser.sort_box, "score")):
        box.setCurrentIndex(box.findData(value))
    browser.apply_filters()
    until(lambda: browser.model.query.sort == "score" and browser.model.rowCount() > 0)
    if browser.score_button.isVisible():  # the bundled demo ships without score caches
        browser.score_button.click()
        until(lambda: browser.model.row_data(0) is not None and browser.model.row_data(0).score is not None)
    selection = browser.grid.selectionModel()
    for row in (3, 4, 12):
        selection.select(browser.model.index(row), QItemSelectionModel.SelectionFlag.Select)
    wait(2500)  # thumbnails decode off the GUI thread
    window.grab().save(str(out / "pool_browser.png"))


def shoot_training(window, out: Path) -> None:
    panel = window.training
    window.tabs.setCurrentWidget(panel)
    panel.settings.epochs.setValue(60)
    panel.settings.batch.setValue(8)
    panel.start_button.click()
    running = until(lambda: len(panel.curves.points["loss"][0]) > 90, 120_000)
    wait(1200)  # one more tick of the time-left estimate
    if not running or not window.runner.is_running("train"):
        raise SystemExit("the training job ended before the screenshot")
    window.grab().save(str(out / "training_panel.png"))
    window.runner.cancel("train")
    until(lambda: not window.runner.is_running())


def shoot_quality(window, out: Path) -> None:
    window.tabs.setCurrentWidget(window.quality)
    if window.quality.start_evaluation():
        until(lambda: window.quality.result is not None)
    wait(800)
    window.grab().save(str(out / "model_quality.png"))


SECOND_READER = "second reader (simulated)"


def add_second_reader(project, n: int = 30, error_rate: float = 0.2, seed: int = 7) -> None:
    """A simulated second annotator on n of the expert's images: the hidden ground truth,
    with a share of answers replaced by a random class (the demo has one expert only)."""
    rng = np.random.default_rng(seed)
    truth = project.truth()
    expert = [e.image_id for e in project.label_history() if e.kind == "human" and e.image_id in truth]
    classes = [c.id for c in project.classes()]
    for image_id in rng.permutation(sorted(set(expert)))[:n]:
        answer = truth[int(image_id)] if rng.random() > error_rate else int(rng.choice(classes))
        project.set_label(int(image_id), answer, annotator=SECOND_READER)


def shoot_annotators(window, out: Path) -> None:
    view = window.annotators
    add_second_reader(window.ws.project)
    window.ws.notify()
    window.tabs.setCurrentWidget(view)
    until(lambda: view.summary is not None and len(view.summary.given) > 2)
    wait(800)
    window.grab().save(str(out / "annotators.png"))


def shoot_wizard(window, folder: Path, out: Path) -> None:
    from atl_desktop.gui.wizard import NewProjectWizard

    data = tiles_as_class_folders(window.ws.project, folder / "colon-tiles")
    wizard = NewProjectWizard(folder, window)
    wizard.resize(820, 560)
    wizard.show()
    wizard.name_page.name.setText("colon-biopsies")
    wizard.next()
    wizard.data_page.target.setText(str(data))
    wizard.next()
    until(lambda: len(wizard.classes_page.names()) > 2, 20_000)
    wait(400)
    wizard.grab().save(str(out / "wizard_classes.png"))
    wizard.next()
    until(lambda: wizard.model_page.backbone.count() > 2, 30_000)
    wizard.model_page.backbone.setCurrentText("resnet50")
    wait(800)
    wizard.grab().save(str(out / "wizard.png"))
    wizard.reject()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--only", default=",".join(SHOTS), help=f"comma-separated, of {', '.join(SHOTS)}")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    app = QApplication(sys.argv[:1])
    app.setApplicationName("ATL Desktop")
    from atl_desktop.gui.mainwindow import MainWindow
    from atl_desktop.gui.theme import follow_system_theme
    from atl_desktop.store import Project

    follow_system_theme(app)
    with tempfile.TemporaryDirectory() as tmp:
        path = copy_demo(Path(tmp))
        window = MainWindow(Project.open(path), annotator="pathologist", device="CPU")
        window.resize(1400, 860)
        window.show()
        until(lambda: window.engine_ready)
        if "query" in wanted:
            shoot_query(window, args.out)
        if "review" in wanted:
            shoot_review(window, args.out)
        if "pool" in wanted:
            shoot_pool(window, args.out)
        if "training" in wanted:
            shoot_training(window, args.out)
        if "quality" in wanted:
            shoot_quality(window, args.out)
        if "annotators" in wanted:  # last: it adds a simulated second reader's labels
            shoot_annotators(window, args.out)
        if "wizard" in wanted:
            shoot_wizard(window, Path(tmp), args.out)
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
