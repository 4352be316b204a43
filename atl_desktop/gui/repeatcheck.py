"""The repeat set: a few images the annotator already labelled, shown again one at a time
without their earlier answer or the model's suggestion, to measure how consistent the
labels are. Each answer is an ordinary undoable label with the strategy REPEAT
(see atl_desktop.active.annotators); at the end the dialog says how many answers matched.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QKeyEvent, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from atl_desktop.active.annotators import REPEAT
from atl_desktop.gui.thumbnails import FullImageLoader
from atl_desktop.gui.undo import SetLabel
from atl_desktop.gui.workspace import Workspace

SIDE = 380


class RepeatCheckDialog(QDialog):
    def __init__(self, workspace: Workspace, image_ids: list[int], parent=None):
        super().__init__(parent)
        self.ws = workspace
        self.image_ids = list(image_ids)
        self.earlier = {i: workspace.project.label_of(i) for i in self.image_ids}
        self.answers: dict[int, int] = {}
        self.position = 0
        self.setWindowTitle(f"Consistency check: {workspace.annotator or 'unnamed annotator'}")
        self._loader = FullImageLoader(self)
        self._loader.loaded.connect(self._show_pixels)
        self._build()
        self._show_current()

    def _build(self) -> None:
        self.intro = QLabel("Label each image again as if you had not seen it before. Your earlier "
                            "answer and the model's suggestion are hidden; your new answer becomes "
                            "the label. Keys: a class's key, X to skip, Esc to stop.")
        self.intro.setWordWrap(True)
        self.counter = QLabel()
        self.image = QLabel("Loading…")
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setMinimumSize(SIDE, SIDE)
        self.image.setStyleSheet("background: palette(base); border: 1px solid palette(mid);")
        self.buttons = QGridLayout()
        for k, record in enumerate(self.ws.book().classes):
            button = QPushButton(f"{record.key}  {record.name}" if record.key else record.name)
            button.setAutoDefault(False)
            button.clicked.connect(lambda _=False, c=record.id: self.answer(c))
            self.buttons.addWidget(button, k // 3, k % 3)
        self.skip_button = QPushButton("Skip (X)")
        self.skip_button.setAutoDefault(False)
        self.skip_button.clicked.connect(self.skip)
        self.close_button = QPushButton("Stop")
        self.close_button.setAutoDefault(False)
        self.close_button.clicked.connect(self.accept)
        bottom = QHBoxLayout()
        bottom.addWidget(self.counter, 1)
        bottom.addWidget(self.skip_button)
        bottom.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.intro)
        layout.addWidget(self.image, 1)
        layout.addLayout(self.buttons)
        layout.addLayout(bottom)

    # ---- moving through the set -------------------------------------------------------

    def current(self) -> int | None:
        return self.image_ids[self.position] if self.position < len(self.image_ids) else None

    def _show_current(self) -> None:
        image_id = self.current()
        if image_id is None:
            self._finish()
            return
        self.counter.setText(f"Image {self.position + 1} of {len(self.image_ids)}")
        self.image.setPixmap(QPixmap())
        self.image.setText("Loading…")
        self._loader.load(self.ws.image_path(image_id))

    def _show_pixels(self, _path, image: QImage) -> None:
        if image.isNull():
            self.image.setText("This image cannot be read: skip it.")
            return
        pixmap = QPixmap.fromImage(image)
        mode = (Qt.TransformationMode.FastTransformation if max(image.width(), image.height()) < SIDE
                else Qt.TransformationMode.SmoothTransformation)  # small tiles keep their pixels
        self.image.setPixmap(pixmap.scaled(SIDE, SIDE, Qt.AspectRatioMode.KeepAspectRatio, mode))

    def answer(self, class_id: int) -> bool:
        image_id = self.current()
        if image_id is None:
            return False
        record = self.ws.book().by_id(class_id)
        command = SetLabel(self.ws.project, image_id, class_id,
                           {"annotator": self.ws.annotator, "strategy": REPEAT},
                           text=f"Repeat check: image {image_id} as {record.name if record else class_id}",
                           report=self.ws.report)
        if not self.ws.do(command):
            return False
        self.answers[image_id] = class_id
        self.position += 1
        self._show_current()
        return True

    def skip(self) -> None:
        if self.current() is not None:
            self.position += 1
            self._show_current()

    def same_count(self) -> int:
        return sum(1 for i, c in self.answers.items() if self.earlier.get(i) == c)

    def _finish(self) -> None:
        n = len(self.answers)
        self.counter.setText("Done.")
        self.image.setPixmap(QPixmap())
        if n:
            self.image.setText(f"The same label as before on {self.same_count()} of {n} images "
                               f"({self.same_count() / n:.0%}).\n\nThe Annotators tab keeps every "
                               "check's result.")
        else:
            self.image.setText("No image was labelled again.")
        for k in range(self.buttons.count()):
            self.buttons.itemAt(k).widget().setEnabled(False)
        self.skip_button.setEnabled(False)
        self.close_button.setText("Close")

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_X:
            self.skip()
            return
        record = self.ws.book().by_key(event.text())
        if record is not None and self.current() is not None:
            self.answer(record.id)
            return
        super().keyPressEvent(event)

    def done(self, result: int) -> None:
        self._loader.shutdown()
        super().done(result)
