"""File menu items for the bundled demo projects (open, reset) and the project report."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QApplication, QFileDialog, QMenu, QMessageBox

from atl_desktop.gui import messages
from atl_desktop.store import ProjectError

REPORT_JOB = "report"


def report_job(project, *, out: str):
    from atl_desktop.report import report_job as job

    return job(project, out)


def add_demo_menu(window, file_menu: QMenu) -> QMenu:
    """File ▸ Demo projects: open or reset each bundled demo."""
    from atl_desktop.demo import DEMOS

    menu = file_menu.addMenu("&Demo projects")
    for name, about in DEMOS.items():
        action = menu.addAction(f"Open the {name} demo", lambda n=name: open_demo(window, n))
        action.setToolTip(about)
    menu.addSeparator()
    for name in DEMOS:
        menu.addAction(f"Reset the {name} demo…", lambda n=name: reset_demo(window, n))
    return menu


def open_demo(window, name: str):
    """Your copy of a demo (made on first use) in place of this window's project."""
    from atl_desktop.demo import install_demo

    try:
        path = install_demo(name)
    except ProjectError as error:
        messages.show_error(window, "Cannot open the demo", str(error))
        return None
    if Path(path).resolve() == window.ws.project.path.resolve():
        return window
    return window.open_other(path)


def reset_demo(window, name: str, *, confirm: bool = True):
    """Replace your copy of a demo with a fresh one (your labels in it are lost), then open
    it. When this window has that demo open, it closes first: the copy is locked while open."""
    from atl_desktop.demo import install_demo, user_demo_dir
    from atl_desktop.gui.mainwindow import open_project_or_explain

    if confirm and QMessageBox.question(
            window, "Reset the demo", f"Replace your copy of the {name} demo with a fresh one? "
            "Everything you did in it (labels, rounds, checkpoints) is lost.") != QMessageBox.StandardButton.Yes:
        return None
    if window.runner.is_running():
        messages.show_info(window, "A job is running", "Wait for the running job to finish, or cancel it, first.")
        return None
    copy = user_demo_dir() / f"{name}.atl"
    if not (copy.exists() and copy.resolve() == window.ws.project.path.resolve()):
        try:
            install_demo(name, reset=True)
        except ProjectError as error:
            messages.show_error(window, "Cannot reset the demo", str(error))
            return None
        return window.open_other(copy)
    app = QApplication.instance()
    quits = app.quitOnLastWindowClosed()
    app.setQuitOnLastWindowClosed(False)  # this window closes before the fresh one opens
    try:
        window.close()
        try:
            install_demo(name, reset=True)
        except ProjectError as error:
            messages.show_error(None, "Cannot reset the demo", f"{error} Your copy is unchanged.")
        project = open_project_or_explain(copy)
        if project is None:
            app.quit()
            return None
        return window.successor(project)
    finally:
        app.setQuitOnLastWindowClosed(quits)


def ask_report(window) -> bool:
    """File ▸ Export report: one HTML file, written by a job."""
    project = window.ws.project.path
    out, _ = QFileDialog.getSaveFileName(window, "Export report", str(project.with_name(f"{project.stem}-report.html")),
                                         "HTML files (*.html)")
    if not out:
        return False
    if not out.lower().endswith((".html", ".htm")):
        out += ".html"
    return start_report(window, out)


def start_report(window, out: str) -> bool:
    return window._start_other(REPORT_JOB, report_job, "Writing the report", "data", out=out)


def connect_report(window) -> None:
    window.runner.finished.connect(
        lambda name, result: window.statusBar().showMessage(f"Report written to {result}.", 12000)
        if name == REPORT_JOB else None)
