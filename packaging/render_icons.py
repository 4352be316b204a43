"""Render resources/icons/atl-desktop.svg to the PNG sizes desktops use, and to a Windows
.ico (and a macOS .icns with --icns). Run after changing the SVG:

    python packaging/render_icons.py [--icns]
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"
SVG = ICONS / "atl-desktop.svg"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def render_png(size: int) -> bytes:
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(SVG))
    if not renderer.isValid():
        raise SystemExit(f"cannot read {SVG}")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--icns", action="store_true", help="also write atl-desktop.icns (macOS)")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PIL import Image
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841 (QImage needs one)
    images = {}
    for size in SIZES:
        png = render_png(size)
        (ICONS / f"atl-desktop-{size}.png").write_bytes(png)
        images[size] = Image.open(io.BytesIO(png))
    largest = images[max(SIZES)]
    largest.save(ICONS / "atl-desktop.ico", sizes=[(s, s) for s in SIZES if s <= 256])
    if args.icns:
        largest.save(ICONS / "atl-desktop.icns")
    print(f"wrote {len(SIZES)} PNGs and atl-desktop.ico to {ICONS}")


if __name__ == "__main__":
    main()
