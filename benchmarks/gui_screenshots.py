"""Screenshots for the docs: the wizard, the pool browser, the training panel during a job.

Run under a real X server (Xvfb), e.g.
    /work/shared/tools/gui-shot /tmp/shot.png --wait 90 -- .venv/bin/python benchmarks/gui_screenshots.py
It works on a copy of the bundled histology demo, starts a real training job and
grabs each window with QWidget.grab() into docs/ (the gui-shot image is not needed).
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "resources" / "demo" / "histology.atl"
DOCS = ROOT / "docs"


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


def until(condition, timeout_ms: int = 60_000) -> None:
    waited = 0
    while not condition() and waited < timeout_ms:
        wait(100)
        waited += 100


def main() -> int:
    app = QApplication(sys.argv[:1])
    app.setApplicationName("ATL Desktop")
    from atl_desktop.gui.mainwindow import MainWindow
    from atl_desktop.gui.theme import follow_system_theme
    from atl_desktop.gui.wizard import NewProjectWizard
    from atl_desktop.store import Project

    follow_system_theme(app)
    with tempfile.TemporaryDirectory() as tmp:
        path = copy_demo(Path(tmp))
        window = MainWindow(Project.open(path), annotator="pathologist", device="CPU")
        window.resize(1400, 860)
        window.show()
        until(lambda: window.engine_ready)

        window.tabs.setCurrentWidget(window.pool_browser)
        window.pool_browser.grid.selectionModel().select(
            window.pool_browser.model.index(3), window.pool_browser.grid.selectionModel().SelectionFlag.Select)
        wait(1500)
        window.grab().save(str(DOCS / "pool_browser.png"))

        window.tabs.setCurrentWidget(window.training)
        window.training.settings.epochs.setValue(30)
        window.training.start_button.click()
        until(lambda: len(window.training.curves.points["loss"][0]) > 120)
        wait(400)
        window.grab().save(str(DOCS / "training_panel.png"))
        window.runner.cancel("train")
        until(lambda: not window.runner.is_running())

        wizard = NewProjectWizard(Path(tmp), window)
        wizard.name_page.name.setText("colon-biopsies")
        wizard.data_page.target.setText(str(Path(tmp)))
        for _ in range(3):
            wizard.next()
        wizard.resize(760, 520)
        wizard.show()
        until(lambda: wizard.model_page.backbone.count() > 2, 20_000)
        wizard.model_page.backbone.setCurrentText("resnet50")
        wizard.model_page.check_weights()
        wait(800)
        wizard.grab().save(str(DOCS / "wizard.png"))
        wizard.close()
        window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
