"""Menus and habits: the shortcut sheet (F1 / ?), About, recent projects, window layout
remembered, preferences and the theme."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from atl_desktop.gui.helpdialogs import AboutDialog, PreferencesDialog, versions
from atl_desktop.gui.mainwindow import recent_projects
from atl_desktop.gui.theme import palette_for
from tests.gui.conftest import make_project


def test_f1_opens_the_shortcut_sheet_without_blocking(qtbot, open_window, project_path):
    window = open_window(project_path)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=2000)
    qtbot.keyClick(window.query_view.grid, Qt.Key.Key_F1)
    sheet = window.shortcut_sheet
    assert sheet.isVisible() and not sheet.isModal()
    sheet.close()
    window.shortcut_sheet = None
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=2000)
    qtbot.keyClick(window.query_view.grid, "?")
    assert window.shortcut_sheet is not None and window.shortcut_sheet.isVisible()
    window.shortcut_sheet.close()


def test_about_names_versions_and_data_credits(qtbot):
    about = AboutDialog()
    qtbot.addWidget(about)
    text = about.findChild(type(about.layout().itemAt(0).widget())).toPlainText()
    assert "PySide6" in text and "torch" in versions()
    for credit in ("MNIST", "CC BY-SA 3.0", "USPS", "PathMNIST", "NCT-CRC-HE-100K", "CC BY 4.0"):
        assert credit in text
    # The default demo's photographs (CC BY 4.0 asks for the authors, the source and the licence).
    for credit in ("Acevedo", "Data in Brief 30 (2020) 105474", "10.17632/snkd93bnjr.1",
                   "creativecommons.org/licenses/by/4.0"):
        assert credit in text


def test_recent_projects_and_layout_are_remembered(qtbot, open_window, project_path, settings, tmp_path):
    other = make_project(tmp_path / "other")
    window = open_window(project_path)
    window.history_dock.show()
    window.close()
    second = open_window(other)
    assert recent_projects(settings)[:2] == [str(other.resolve()), str(project_path.resolve())]
    assert second.history_dock.isVisible()  # the dock layout came back
    second.recent_menu.aboutToShow.emit()
    texts = [a.text() for a in second.recent_menu.actions()]
    assert str(project_path.resolve()) in texts


def test_preferences_are_saved(qtbot, settings):
    dialog = PreferencesDialog(settings, ["entropy", "margin"])
    qtbot.addWidget(dialog)
    dialog.thumbnail.setValue(128)
    dialog.strategy.setCurrentText("margin")
    dialog.save()
    assert settings.value("thumbnail_side", type=int) == 128
    assert settings.value("default_strategy") == "margin"


def test_dark_palette_is_dark():
    assert QApplication.instance() is not None
    assert palette_for(True).window().color().lightness() < 80


def test_the_device_preference_reaches_the_jobs(qtbot, open_window, project_path, settings):
    from atl_desktop.jobs import Progress

    received = []

    def recording_job(project, **kwargs):
        received.append(kwargs)
        yield Progress(1, 1, "done")
        return 0

    settings.setValue("device", "cpu")
    window = open_window(project_path, train_factory=recording_job)
    with qtbot.waitSignal(window.runner.finished, timeout=10000):
        assert window.start_train(from_scratch=True)
    assert received == [{"device": "cpu", "from_scratch": True}]
    settings.setValue("device", "auto")  # auto: the engine picks, nothing is passed
    with qtbot.waitSignal(window.runner.finished, timeout=10000):
        assert window.start_train()
    assert received[1] == {}
