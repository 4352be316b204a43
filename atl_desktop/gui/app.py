"""`atl-desktop [PROJECT.atl]`: start the window.

With no argument the last project opens (remembered in QSettings); with none
remembered, the bundled demo (a copy in the user's data folder).
`--self-test` runs a headless smoke check and exits.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path

from platformdirs import user_log_dir

from atl_desktop.userconfig import APP_NAME

USAGE = "usage: atl-desktop PROJECT.atl   (make a project with `atl new PROJECT.atl`)"


def log_file() -> Path:
    return Path(user_log_dir(APP_NAME, appauthor=False)) / "atl-desktop.log"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="atl-desktop", description="Open a project in ATL Desktop.")
    parser.add_argument("project", nargs="?", help="the project file (NAME.atl)")
    parser.add_argument("--demo", metavar="NAME", help="open a bundled demo (bloodcells, histology or digits)")
    parser.add_argument("--reset-demo", action="store_true",
                        help="replace your copy of the demo with a fresh one first")
    parser.add_argument("--self-test", action="store_true",
                        help="check the installation without a window and exit (status 0 = fine)")
    return parser.parse_args(argv)


def choose_project(args: argparse.Namespace, settings) -> str | None:
    """The project to open: the argument, else the last one, else your copy of the demo."""
    if args.project:
        return args.project
    if not args.demo and not args.reset_demo:
        last = settings.value("last_project", "", type=str)
        if last and Path(last).exists():
            return last
    from atl_desktop.demo import DEFAULT_DEMO, install_demo

    return str(install_demo(args.demo or DEFAULT_DEMO, reset=args.reset_demo))


def is_demo(path: str | Path) -> bool:
    from atl_desktop.demo import is_demo_copy

    return is_demo_copy(path)


def ask_annotator(settings, *, ask: bool = True) -> str:
    """Who labels: remembered; asked once; the login name if the question is dismissed.
    On a demo nothing is asked (the window opens at once); the login name is used."""
    name = settings.value("annotator", "", type=str)
    if name:
        return name
    if not ask:
        return getpass.getuser()
    from PySide6.QtWidgets import QInputDialog

    name, ok = QInputDialog.getText(None, "Who is labelling?",
                                    "Your name (recorded with every label you give):",
                                    text=getpass.getuser())
    name = name.strip() if ok and name.strip() else getpass.getuser()
    settings.setValue("annotator", name)
    return name


def app_icon():
    from PySide6.QtGui import QIcon

    from atl_desktop.demo import resources_dir
    from atl_desktop.store import ProjectError

    icon = QIcon()
    try:
        for png in sorted((resources_dir() / "icons").glob("atl-desktop-*.png")):
            icon.addFile(str(png))
    except ProjectError:  # a broken install: no icon, but the window still opens
        pass
    return icon


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.self_test:
        from atl_desktop.selftest import run_self_test

        return run_self_test()
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from atl_desktop.gui.gcguard import collect_on_gui_thread
    from atl_desktop.gui.mainwindow import MainWindow, open_project_or_explain
    from atl_desktop.gui.theme import follow_system_theme, prepare_high_dpi

    prepare_high_dpi()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    follow_system_theme(app)
    collect_on_gui_thread()
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(APP_NAME)
    settings = QSettings(APP_NAME, APP_NAME)
    from atl_desktop.store import ProjectError

    try:
        path = choose_project(args, settings)
    except ProjectError as error:
        print(f"atl-desktop: {error}\n{USAGE}", file=sys.stderr)
        return 2
    project = open_project_or_explain(path)
    if project is None:
        return 1
    app.setWindowIcon(app_icon())
    window = MainWindow(project, annotator=ask_annotator(settings, ask=not is_demo(path)), settings=settings,
                        log_file=log_file())
    window.show()
    return app.exec()
