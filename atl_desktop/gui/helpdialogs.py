"""The keyboard shortcut sheet, About (versions, data credits, citations) and Preferences."""

from __future__ import annotations

import platform

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
)

SHORTCUTS = (
    ("Labelling (query view)", ""),
    ("1–9 or a class's key", "Label the current image and move to the next"),
    ("Space", "Accept the model's suggestion"),
    ("X", "Unsure: skip the image (it is not asked again)"),
    ("Arrow keys", "Move between images"),
    ("Backspace", "Undo the last label"),
    ("Enter", "Open the image at full size"),
    ("Ctrl+B", "Blind mode: hide the model's suggestions"),
    ("Pool browser", ""),
    ("Ctrl/Shift+click, Ctrl+A", "Select images"),
    ("A class's key", "Label every selected image"),
    ("Jobs and project", ""),
    ("Ctrl+R", "Query the next batch"),
    ("Ctrl+T", "Train"),
    ("Ctrl+.", "Cancel the running job"),
    ("Ctrl+Z / Ctrl+Shift+Z", "Undo / redo (Edit ▸ History shows every step)"),
    ("Ctrl+N / Ctrl+O", "New / open project"),
    ("Ctrl+I / Ctrl+E", "Import images / export labels"),
    ("F1 or ?", "This sheet"),
)

CREDITS = """
<h3>Data</h3>
<ul>
<li><b>Blood cells</b> (the bloodcells demo) — A. Acevedo, A. Merino, S. Alférez, Á. Molina,
L. Boldú, J. Rodellar, <i>A dataset of microscopic peripheral blood cell images for development of
automatic recognition systems</i>, Data in Brief 30 (2020) 105474, doi:10.1016/j.dib.2020.105474;
Mendeley Data doi:10.17632/snkd93bnjr.1. Licence CC BY 4.0
(https://creativecommons.org/licenses/by/4.0/); the demo ships a 10 % subset, resized.</li>
<li><b>MNIST</b> — Y. LeCun, C. Cortes, C. J. C. Burges; LeCun et al., <i>Gradient-based learning
applied to document recognition</i>, Proc. IEEE 1998. Licence CC BY-SA 3.0.</li>
<li><b>USPS</b> — J. J. Hull, <i>A database for handwritten text recognition research</i>,
IEEE TPAMI 16(5), 1994.</li>
<li><b>PathMNIST</b> — J. Yang et al., <i>MedMNIST v2</i>, Scientific Data 2023; from
<b>NCT-CRC-HE-100K</b>, J. N. Kather et al., PLOS Medicine 2019. Licence CC BY 4.0.</li>
</ul>
<h3>Methods</h3>
<ul>
<li>CEAL — K. Wang et al., IEEE TCSVT 2017. AIFT — Z. Zhou et al., CVPR 2017.</li>
<li>BALD — N. Houlsby et al. 2011; Y. Gal et al., ICML 2017. Core-set — O. Sener &amp; S. Savarese, ICLR 2018.</li>
<li>DDC — E. Tzeng et al. 2014. DAN — M. Long et al., ICML 2015. JAN — M. Long et al., ICML 2017.</li>
<li>DANN — Y. Ganin &amp; V. Lempitsky, ICML 2015. ADDA — E. Tzeng et al., CVPR 2017.</li>
<li>Calibration — C. Guo et al., ICML 2017. Stopping — M. Bloodgood &amp; K. Vijay-Shanker, CoNLL 2009.</li>
</ul>
"""


def versions() -> str:
    from PySide6 import __version__ as pyside

    import atl_desktop

    parts = [f"ATL Desktop {atl_desktop.__version__}", f"Python {platform.python_version()}",
             f"PySide6 {pyside}"]
    for name in ("torch", "torchvision", "numpy"):
        try:
            module = __import__(name)
            parts.append(f"{name} {module.__version__}")
        except ImportError:
            parts.append(f"{name} not installed")
    return " · ".join(parts)


class ShortcutSheet(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        rows = []
        for keys, what in SHORTCUTS:
            if not what:
                rows.append(f"<tr><td colspan=2><h4>{keys}</h4></td></tr>")
            else:
                rows.append(f"<tr><td><b>{keys}</b>&nbsp;&nbsp;</td><td>{what}</td></tr>")
        text = QLabel("<table>" + "".join(rows) + "</table>")
        text.setTextFormat(Qt.TextFormat.RichText)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(text)
        layout.addWidget(buttons)


class AboutDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("About ATL Desktop")
        self.resize(640, 520)
        browser = QTextBrowser()
        browser.setOpenExternalLinks(False)
        browser.setHtml(f"<h2>ATL Desktop</h2><p>Active and transfer learning on your own images, "
                        f"on your own machine.</p><p>{versions()}</p>{CREDITS}")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(browser)
        layout.addWidget(buttons)


class PreferencesDialog(QDialog):
    """Thumbnail size, compute device and default query strategy, kept in QSettings."""

    def __init__(self, settings: QSettings, strategies: list[str], parent=None):
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.settings = settings
        self.thumbnail = QSpinBox()
        self.thumbnail.setRange(48, 256)
        self.thumbnail.setSuffix(" px")
        self.thumbnail.setValue(settings.value("thumbnail_side", 96, type=int))
        self.thumbnail.setToolTip("Tile size in the pool browser")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.setCurrentText(settings.value("device", "auto", type=str))
        self.device.setToolTip("Where training and scoring run; auto uses a GPU when there is one")
        self.strategy = QComboBox()
        self.strategy.addItems(strategies)
        self.strategy.setCurrentText(settings.value("default_strategy", "entropy", type=str))
        form = QFormLayout()
        form.addRow("Thumbnail size", self.thumbnail)
        form.addRow("Compute device", self.device)
        form.addRow("Default strategy", self.strategy)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def save(self) -> None:
        self.settings.setValue("thumbnail_side", self.thumbnail.value())
        self.settings.setValue("device", self.device.currentText())
        self.settings.setValue("default_strategy", self.strategy.currentText())
