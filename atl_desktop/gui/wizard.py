"""The new-project wizard: name and place, the images (target, and optionally a
labelled source domain), the classes, the model (backbone, weights with an
offline check, transfer method) and the query strategy.

`NewProjectWizard.create_project()` writes the project file with its classes
and settings and returns a `SetupPlan`; the window then runs `setup_job`
(imports, then the first scoring) on its job runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWizard,
    QWizardPage,
)

from atl_desktop.data.importers import class_names_in
from atl_desktop.gui.background import Background
from atl_desktop.gui.forms import choice_box, path_row
from atl_desktop.gui.trainsettings import (
    TRAIN_SETTING,
    WEIGHT_CHOICES,
    weights_problem,
    weights_problem_html,
)
from atl_desktop.jobs import relabel
from atl_desktop.store import Project

FALLBACK_BACKBONES = ("resnet18", "smallcnn")
FALLBACK_STRATEGIES = ("entropy", "margin", "least_confidence", "random")


@dataclass(frozen=True)
class SetupPlan:
    """What to do once the project file exists: imports, then the first query."""

    target: str
    source: str | None = None
    strategy: str = "entropy"
    batch: int = 16
    backbone: str = "resnet18"
    weights: str | None = "imagenet"
    reports: list = field(default_factory=list, compare=False)


def setup_job(project, *, plan: SetupPlan):
    """Import the target (and source) images, then score the pool and query the first batch.

    Returns (import reports, the QueryResult or None when there is nothing to query:
    fewer than two classes, or every target image already labelled)."""
    from atl_desktop.data.importers import ImportOptions, import_source
    from atl_desktop.loop.session import ModelChoice, query_job
    from atl_desktop.store.keys import init_training_defaults

    init_training_defaults(project)
    reports = [(yield from relabel(import_source(project, plan.target, ImportOptions()),
                                   "importing the target images"))]
    if plan.source:
        reports.append((yield from relabel(
            import_source(project, plan.source, ImportOptions(domain="source")),
            "importing the source images")))
    labelled = project.current_labels(domain="target", split="pool")
    unlabelled = [i for i in project.image_ids(domain="target", split="pool") if i not in labelled]
    if len(project.class_names()) < 2 or not unlabelled:
        return reports, None  # nothing to choose from (yet): the user adds classes or images
    model = ModelChoice(pretrained=plan.backbone, weights=plan.weights)
    result = yield from relabel(query_job(project, strategy=plan.strategy, batch=plan.batch, model=model),
                                "choosing the first images to label")
    return reports, result


def _choices() -> dict:
    """Backbones, and methods and strategies with their descriptions (imports torch: slow)."""
    from atl_desktop.active.strategies import STRATEGIES
    from atl_desktop.gui.trainsettings import method_catalogue, method_tooltip
    from atl_desktop.models import available_backbones

    return {"backbones": {name: "" for name in available_backbones()},
            "methods": {name: method_tooltip(info) for name, info in method_catalogue().items()},
            "strategies": {name: getattr(s, "help", "") for name, s in STRATEGIES.items()}}


class NamePage(QWizardPage):
    def __init__(self, folder: Path):
        super().__init__()
        self.setTitle("Name and place")
        self.setSubTitle("The project is one .atl file with a folder beside it for checkpoints "
                         "and copied images.")
        self.name = QLineEdit("my-project")
        self.folder = QLineEdit(str(folder))
        browse = QPushButton("Choose…")
        browse.clicked.connect(lambda: self._pick(self.folder))
        self.where = QLabel()
        self.where.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("Name", self.name)
        form.addRow("Folder", path_row(self.folder, browse))
        form.addRow("", self.where)
        for edit in (self.name, self.folder):
            edit.textChanged.connect(self.completeChanged)
            edit.textChanged.connect(self._describe)
        self._describe()

    def path(self) -> Path:
        name = self.name.text().strip()
        return Path(self.folder.text()) / (name if name.endswith(".atl") else f"{name}.atl")

    def problem(self) -> str | None:
        if not self.name.text().strip():
            return "Give the project a name."
        if not Path(self.folder.text()).is_dir():
            return "Choose a folder that exists."
        if self.path().exists():
            return f"{self.path().name} already exists there: choose another name."
        return None

    def _describe(self) -> None:
        problem = self.problem()
        self.where.setText(f"⚠ {problem}" if problem else f"Creates {self.path()}")

    def isComplete(self) -> bool:
        return self.problem() is None

    def _pick(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder", edit.text())
        if path:
            edit.setText(path)


class DataPage(QWizardPage):
    def __init__(self):
        super().__init__()
        self.setTitle("Images")
        self.setSubTitle("The target images are the ones to classify: a folder, a class-per-subfolder "
                         "tree, a CSV of path,label or a NumPy .npz. A labelled source domain "
                         "(e.g. a public dataset of similar images) is optional.")
        self.target = QLineEdit()
        self.source = QLineEdit()
        form = QFormLayout(self)
        for label, edit in (("Target images", self.target), ("Source domain (optional)", self.source)):
            folder, file = QPushButton("Folder…"), QPushButton("File…")
            folder.clicked.connect(lambda _=False, e=edit: _browse(self, e, True))
            file.clicked.connect(lambda _=False, e=edit: _browse(self, e, False))
            form.addRow(label, path_row(edit, folder, file))
        self.target.textChanged.connect(self.completeChanged)

    def isComplete(self) -> bool:
        return Path(self.target.text().strip()).exists() if self.target.text().strip() else False


class ClassesPage(QWizardPage):
    """The classes: found in the import (class folders, a CSV's labels, an .npz's names)
    and shown here to edit, or typed in for a folder of unlabelled images."""

    def __init__(self):
        super().__init__()
        self.setTitle("Classes")
        self.setSubTitle("One class per line. Classes found in the images are filled in; "
                         "add, rename or remove them here (and later in the class panel).")
        self.text = QPlainTextEdit()
        self.text.setPlaceholderText("tumour\nstroma\nnormal")
        self.found = QLabel()
        self.found.setWordWrap(True)
        self._background = Background(self)
        self._filled_from: str | None = None  # the target whose classes were filled in
        layout = QVBoxLayout(self)
        layout.addWidget(self.found)
        layout.addWidget(self.text, 1)

    def initializePage(self) -> None:
        target = self.field_target()
        if not target or target == self._filled_from:
            return
        self.found.setText("Looking for classes in the images…")
        self._background.call(lambda: class_names_in(target), lambda names: self.show_found(target, names))

    def field_target(self) -> str:
        wizard = self.wizard()
        return wizard.data_page.target.text().strip() if wizard is not None else ""

    def show_found(self, target: str, names) -> None:
        """Fill in the classes found in `target` (a list, or the error that stopped the look)."""
        if isinstance(names, Exception):
            self.found.setText(f"Could not read classes from the images: {names}")
            return
        self._filled_from = target
        if not names:
            self.found.setText("The images carry no labels: type the classes, one per line "
                               "(at least two are needed to train).")
            return
        self.found.setText(f"Found {len(names)} classes in the images; their labels are imported too.")
        typed = self.names()
        self.text.setPlainText("\n".join(dict.fromkeys([*names, *typed])))

    def names(self) -> list[str]:
        return list(dict.fromkeys(n.strip() for n in self.text.toPlainText().splitlines() if n.strip()))

    def shutdown(self) -> None:
        self._background.wait()


class ModelPage(QWizardPage):
    def __init__(self, load_choices: bool):
        super().__init__()
        self.setTitle("Model and strategy")
        self.setSubTitle("Nothing is downloaded: pretrained weights must already be on this machine.")
        self.backbone = choice_box(FALLBACK_BACKBONES)
        self.weights = QComboBox()
        for text, value in WEIGHT_CHOICES:
            self.weights.addItem(text, value)
        self.weights.addItem("A local weights file…", "file")
        self.weights.activated.connect(self._maybe_file)
        self.method = choice_box(("finetune",))
        self.strategy = choice_box(FALLBACK_STRATEGIES)
        self.batch = QSpinBox()
        self.batch.setRange(1, 1000)
        self.batch.setValue(16)
        self.check = QLabel()
        self.check.setWordWrap(True)
        self.check.setTextFormat(Qt.TextFormat.RichText)
        self.check.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form = QFormLayout()
        for text, widget in (("Backbone", self.backbone), ("Weights", self.weights),
                             ("Transfer method", self.method), ("Query strategy", self.strategy),
                             ("First batch", self.batch)):
            form.addRow(text, widget)
        self.next_steps = QLabel("Create project writes the project, imports the images, then "
                                 "scores them and shows the first batch to label.")
        self.next_steps.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addSpacing(12)
        layout.addWidget(self.check)
        layout.addStretch(1)
        layout.addWidget(self.next_steps)
        self.backbone.currentTextChanged.connect(lambda _: self.check_weights())
        self.weights.currentIndexChanged.connect(lambda _: self.check_weights())
        for box in (self.method, self.strategy):
            box.currentIndexChanged.connect(
                lambda i, b=box: b.setToolTip(b.itemData(i, Qt.ItemDataRole.ToolTipRole) or ""))
        self._background = Background(self)
        if load_choices:
            self._background.call(_choices, self.set_choices)

    def set_choices(self, choices) -> None:
        """Fill the lists from the registries: {"backbones"|"methods"|"strategies": {name: tooltip}}."""
        if not isinstance(choices, dict):
            return  # the registries could not be read: the fixed lists stay
        for box, key in ((self.backbone, "backbones"), (self.method, "methods"),
                         (self.strategy, "strategies")):
            current = box.currentText()
            box.blockSignals(True)  # an empty box in between is no choice to check
            box.clear()
            for name, tip in choices[key].items():
                box.addItem(name)
                box.setItemData(box.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
            box.setCurrentText(current if current in choices[key] else next(iter(choices[key])))
            box.blockSignals(False)
            box.setToolTip(choices[key].get(box.currentText(), ""))
        self.check_weights()

    def chosen_weights(self) -> str | None:
        data = self.weights.currentData()
        return self.weights.currentText()[len("File: "):] if data == "file" else data

    def _maybe_file(self) -> None:
        if self.weights.currentData() == "file" and not self.weights.currentText().startswith("File: "):
            path, _ = QFileDialog.getOpenFileName(self, "Weights", "", "Weights (*.safetensors *.pth *.pt)")
            if path:
                self.weights.setItemText(self.weights.currentIndex(), f"File: {path}")
            self.check_weights()

    def check_weights(self) -> str | None:
        backbone, weights = self.backbone.currentText(), self.chosen_weights()
        problem = weights_problem(backbone, weights)
        self.check.setText(weights_problem_html(backbone, weights, problem) if problem
                           else "✓ Everything this model needs is on this machine.")
        self.completeChanged.emit()
        return problem

    def isComplete(self) -> bool:
        return weights_problem(self.backbone.currentText(), self.chosen_weights()) is None

    def initializePage(self) -> None:
        self.check_weights()

    def shutdown(self) -> None:
        self._background.wait()


class NewProjectWizard(QWizard):
    def __init__(self, folder: Path, parent=None, load_choices: bool = True):
        super().__init__(parent)
        self.setWindowTitle("New project")
        self.name_page = NamePage(folder)
        self.data_page = DataPage()
        self.classes_page = ClassesPage()
        self.model_page = ModelPage(load_choices)
        for page in (self.name_page, self.data_page, self.classes_page, self.model_page):
            self.addPage(page)
        self.setButtonText(QWizard.WizardButton.FinishButton, "Create project")
        self.setWizardStyle(QWizard.WizardStyle.ModernStyle)
        self.setMinimumSize(720, 520)

    def done(self, result: int) -> None:
        for page in (self.classes_page, self.model_page):
            page.shutdown()  # a registry still being read must not answer a closed wizard
        super().done(result)

    def create_project(self) -> tuple[Path, SetupPlan]:
        """Write the project file, its classes and settings; return it and what to run next."""
        path = self.name_page.path()
        model = self.model_page
        backbone, weights = model.backbone.currentText(), model.chosen_weights()
        with Project.create(path) as project:
            for name in self.classes_page.names():
                project.add_class(name)
            project.set_setting(TRAIN_SETTING, {"backbone": backbone, "weights": weights,
                                                "method": model.method.currentText()})
            project.set_setting("default_strategy", model.strategy.currentText())
        source = self.data_page.source.text().strip() or None
        plan = SetupPlan(self.data_page.target.text().strip(), source, model.strategy.currentText(),
                         model.batch.value(), backbone, weights)
        return path, plan


def _browse(parent, edit: QLineEdit, folder: bool) -> None:
    if folder:
        path = QFileDialog.getExistingDirectory(parent, "Folder of images", edit.text())
    else:
        path, _ = QFileDialog.getOpenFileName(parent, "CSV or .npz", edit.text(),
                                              "Sources (*.csv *.tsv *.txt *.npz);;All files (*)")
    if path:
        edit.setText(path)

