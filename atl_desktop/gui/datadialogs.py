"""Import images into the open project and export its labels: the dialogs that ask
what to do, the jobs that do it (run by the window's JobRunner, with progress and
cancel), and the report of files that could not be imported, which can be saved.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
)

from atl_desktop.gui.forms import choice_box, path_row
from atl_desktop.jobs import Progress

EXPORT_FORMATS = (("CSV (path, label, who, round, confidence)", "csv"),
                  ("JSON (classes, labels and their full history)", "json"),
                  ("Class folders (ImageFolder; copies the images)", "imagefolder"))
IMPORT_FORMATS = (("Detect from the source", None), ("A folder of images", "folder"),
                  ("Class-per-subfolder (ImageFolder)", "imagefolder"), ("CSV of path,label", "csv"),
                  ("NumPy .npz (x, y, classes)", "npz"))


# ---- jobs ------------------------------------------------------------------------------


def export_job(project, *, format: str, out: str, overwrite: bool = False):
    """Export labels as `format` to `out`; returns an ExportReport."""
    from atl_desktop.data import export

    if format == "imagefolder":
        return (yield from export.export_imagefolder(project, out, overwrite=overwrite))
    yield Progress(0, 1, f"writing {Path(out).name}")
    writer = export.export_csv if format == "csv" else export.export_json
    report = writer(project, out, overwrite=overwrite)
    yield Progress(1, 1, f"wrote {Path(out).name}")
    return report


def model_export_job(project, *, out: str, overwrite: bool = True):
    """The latest checkpoint as ONNX with its model card; returns a ModelExportReport.
    (The file dialog has already asked before replacing a file.)"""
    from atl_desktop.models.onnx_export import export_onnx

    return (yield from export_onnx(project, out, overwrite=overwrite))


MODEL_EXPORT_JOB = "export-model"


def ask_export_model(window) -> bool:
    """File ▸ Export model: a file dialog, then the export as a job."""
    project = window.ws.project.path
    out, _ = QFileDialog.getSaveFileName(window, "Export model (ONNX and model card)",
                                         str(project.with_name(f"{project.stem}-model.onnx")),
                                         "ONNX models (*.onnx)")
    if not out:
        return False
    if not out.lower().endswith(".onnx"):
        out += ".onnx"
    return start_model_export(window, out)


def start_model_export(window, out: str) -> bool:
    return window._start_other(MODEL_EXPORT_JOB, model_export_job, "Exporting the model", "data", out=out)


def connect_model_export(window) -> None:
    window.runner.finished.connect(
        lambda name, result: window.statusBar().showMessage(result.summary(), 12000)
        if name == MODEL_EXPORT_JOB else None)


def import_job(project, *, source: str, options: dict):
    """Import `source` with ImportOptions(**options); returns an ImportReport."""
    from atl_desktop.data.importers import ImportOptions, import_source

    return (yield from import_source(project, source, ImportOptions(**options)))


# ---- dialogs ------------------------------------------------------------------------------


class ExportDialog(QDialog):
    def __init__(self, project_path: Path, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Export labels")
        self.format_box = choice_box(EXPORT_FORMATS)
        self.format_box.currentIndexChanged.connect(self._suggest)
        self.path_edit = QLineEdit()
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        self.overwrite = QCheckBox("Replace an existing file (or write into a non-empty folder)")
        self.base = project_path.with_suffix("")
        form = QFormLayout()
        form.addRow("Format", self.format_box)
        form.addRow("Save to", path_row(self.path_edit, browse))
        form.addRow("", self.overwrite)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)
        self._suggest()

    def _suggest(self) -> None:
        fmt = self.format_box.currentData()
        suffix = {"csv": "-labels.csv", "json": "-labels.json", "imagefolder": "-labels"}[fmt]
        self.path_edit.setText(str(self.base) + suffix)

    def _browse(self) -> None:
        if self.format_box.currentData() == "imagefolder":
            path = QFileDialog.getExistingDirectory(self, "Export into folder", self.path_edit.text())
        else:
            path, _ = QFileDialog.getSaveFileName(self, "Export labels", self.path_edit.text())
        if path:
            self.path_edit.setText(path)

    def request(self) -> dict:
        """The export job's arguments."""
        return {"format": self.format_box.currentData(), "out": self.path_edit.text().strip(),
                "overwrite": self.overwrite.isChecked()}


class ImportDialog(QDialog):
    def __init__(self, start_folder: Path, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Import images")
        self.start_folder = start_folder
        self.source_edit = QLineEdit()
        folder = QPushButton("Folder…")
        folder.clicked.connect(self._browse_folder)
        file = QPushButton("File…")
        file.clicked.connect(self._browse_file)
        self.format_box = choice_box(IMPORT_FORMATS)
        self.domain_box = choice_box((("Target: the images to classify", "target"),
                                  ("Source: labelled images of another domain", "source")))
        self.split_box = choice_box((("Pool (from the source; npz keys decide)", None), ("Pool", "pool"),
                                 ("Validation", "val"), ("Test", "test")))
        self.labels_box = choice_box((("Labels become labels", "labels"),
                                  ("Labels are hidden ground truth (simulation)", "truth"),
                                  ("Ignore labels", "none")))
        self.copy = QCheckBox("Copy the files into the project (otherwise they are referenced)")
        form = QFormLayout()
        form.addRow("Source", path_row(self.source_edit, folder, file))
        for text, widget in (("Format", self.format_box), ("Domain", self.domain_box),
                             ("Split", self.split_box), ("Labels", self.labels_box), ("", self.copy)):
            form.addRow(text, widget)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Import")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of images", str(self.start_folder))
        if path:
            self.source_edit.setText(path)

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "CSV, .npz or image", str(self.start_folder),
                                              "Sources (*.csv *.tsv *.txt *.npz);;DICOM (*.dcm *.dicom);;"
                                              "All files (*)")
        if path:
            self.source_edit.setText(path)

    def request(self) -> dict:
        """The import job's arguments."""
        options = {"format": self.format_box.currentData(), "domain": self.domain_box.currentData(),
                   "split": self.split_box.currentData(), "labels": self.labels_box.currentData(),
                   "copy": self.copy.isChecked()}
        return {"source": self.source_edit.text().strip(), "options": options}


class ImportReportDialog(QDialog):
    """What an import did, with every skipped file and why; Save writes it as text."""

    def __init__(self, reports: list, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Import report")
        self.resize(760, 460)
        skipped = sum(len(r.skipped) for r in reports)
        added = sum(r.added for r in reports)
        self.heading = QLabel(
            f"{added:,} images imported. {skipped:,} {'file' if skipped == 1 else 'files'} could not be "
            "imported: each is listed below with the reason. Save the report to fix them later."
            if skipped else f"{added:,} images imported; every file could be read.")
        self.heading.setWordWrap(True)
        self.text = QPlainTextEdit("\n\n".join(r.summary(max_listed=100_000) for r in reports))
        self.text.setReadOnly(True)
        save = QPushButton("Save report…")
        save.clicked.connect(self._ask_save)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(save)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.heading)
        layout.addWidget(self.text, 1)
        layout.addLayout(buttons)

    def save_to(self, path: str | Path) -> None:
        Path(path).write_text(self.text.toPlainText() + "\n", encoding="utf-8")

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save import report", "import-report.txt",
                                              "Text (*.txt)")
        if path:
            self.save_to(path)
