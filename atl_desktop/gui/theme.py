"""A light or dark palette that follows the system's colour scheme (Qt 6.5+), and
high-DPI scaling that stays sharp.

Fusion is used everywhere so the palette applies the same on every platform;
the tiles and curves read palette roles, so they follow too. Qt 6 scales by the
screen's device pixel ratio itself; fractional ratios (125 %, 150 %) are passed
through rather than rounded, so text and thumbnails are drawn at the real size.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette

DARK = {
    QPalette.ColorRole.Window: "#2B2B2B", QPalette.ColorRole.WindowText: "#E6E6E6",
    QPalette.ColorRole.Base: "#1F1F1F", QPalette.ColorRole.AlternateBase: "#2F2F2F",
    QPalette.ColorRole.Text: "#E6E6E6", QPalette.ColorRole.Button: "#353535",
    QPalette.ColorRole.ButtonText: "#E6E6E6", QPalette.ColorRole.Highlight: "#3D7CC9",
    QPalette.ColorRole.HighlightedText: "#FFFFFF", QPalette.ColorRole.ToolTipBase: "#353535",
    QPalette.ColorRole.ToolTipText: "#E6E6E6", QPalette.ColorRole.PlaceholderText: "#9A9A9A",
    QPalette.ColorRole.Mid: "#555555", QPalette.ColorRole.Link: "#6FA8FF",
}


def prepare_high_dpi() -> None:
    """Before the QApplication exists: keep fractional scale factors as they are."""
    if QGuiApplication.instance() is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)


def is_dark() -> bool:
    return QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark


def palette_for(dark: bool) -> QPalette:
    app = QGuiApplication.instance()
    if not dark:
        return app.style().standardPalette()
    palette = QPalette()
    for role, colour in DARK.items():
        palette.setColor(role, QColor(colour))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#7A7A7A"))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#7A7A7A"))
    return palette


def follow_system_theme(app) -> None:
    """Fusion with the system's light or dark scheme, updated when the system changes."""
    app.setStyle("Fusion")
    app.setPalette(palette_for(is_dark()))
    app.styleHints().colorSchemeChanged.connect(
        lambda scheme: app.setPalette(palette_for(scheme == Qt.ColorScheme.Dark)))
