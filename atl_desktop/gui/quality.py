"""Model quality: test accuracy per round, the stopping signal in words, a reliability
diagram with ECE (from the rounds' recorded metrics), and per-class recall with a
confusion matrix for the current checkpoint (an evaluation job on the test split).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.gui.jobrunner import JobRunner
from atl_desktop.gui.workspace import Workspace
from atl_desktop.store import ProjectError, RoundRecord

JOB = "evaluate"
NO_ROUNDS = ("No finished rounds yet. Each round (query, label, train) records test accuracy, "
             "calibration and the stopping signal here.")


def evaluate_job(project, **kwargs):
    from atl_desktop.transfer.train import evaluate_project

    return evaluate_project(project, **kwargs)


def round_summary(record: RoundRecord) -> dict[str, Any]:
    """What a finished round recorded (missing parts are None)."""
    test = record.metrics.get("test") or {}
    stop = record.metrics.get("stop") or {}
    calibration = test.get("calibration") or {}
    return {"round": record.id, "strategy": record.strategy, "labels": record.metrics.get("labels"),
            "accuracy": test.get("accuracy", record.metrics.get("test_accuracy")), "ece": calibration.get("ece"),
            "bins": calibration.get("bins"), "kappa": stop.get("kappa"), "stop": stop.get("stop")}


def stop_words(summaries: list[dict[str, Any]]) -> str:
    """The stopping signal (Bloodgood & Vijay-Shanker 2009) in words."""
    with_kappa = [s for s in summaries if s["kappa"] is not None]
    if not with_kappa:
        return ("Stopping signal: not yet known. It compares each round's predictions on a fixed "
                "set of unlabelled images with the round before; it needs two finished rounds.")
    last = with_kappa[-1]
    if last["stop"]:
        return (f"Stopping signal: predictions have stabilised (agreement κ = {last['kappa']:.3f} "
                "over the last rounds). More labels are unlikely to change the model much.")
    return (f"Stopping signal: keep going. The model still changes between rounds "
            f"(agreement κ = {last['kappa']:.3f}; stop when it stays near 1).")


class QualityView(QWidget):
    def __init__(self, workspace: Workspace, runner: JobRunner, parent=None):
        super().__init__(parent)
        self.ws = workspace
        self.runner = runner
        self.result = None
        self._build()
        workspace.changed.connect(self.refresh_rounds)
        runner.finished.connect(lambda name, result: self.show_evaluation(result) if name == JOB else None)
        runner.failed.connect(lambda name, message, _d: self._eval_note(f"Evaluation failed: {message}")
                              if name == JOB else None)
        self.refresh_rounds()

    def _build(self) -> None:
        self.rounds_table = _table(("Round", "Strategy", "Labels", "Test accuracy", "ECE", "κ"))
        self.stop_label = QLabel()
        self.stop_label.setWordWrap(True)
        self.accuracy_plot, self.reliability_plot = _plots()
        self.reliability_note = QLabel()
        self.reliability_note.setWordWrap(True)
        rounds = QGroupBox("Rounds")
        grid = QGridLayout(rounds)
        grid.addWidget(self.rounds_table, 0, 0)
        grid.addWidget(self.accuracy_plot, 0, 1)
        grid.addWidget(self.stop_label, 1, 0, 1, 2)
        reliability = QGroupBox("Calibration (latest round, test split)")
        rel_layout = QVBoxLayout(reliability)
        rel_layout.addWidget(self.reliability_plot, 1)
        rel_layout.addWidget(self.reliability_note)

        self.evaluate_button = QPushButton("Evaluate the current checkpoint")
        self.evaluate_button.setToolTip("Per-class recall and confusion matrix on the test split")
        self.evaluate_button.clicked.connect(self.start_evaluation)
        self.eval_note = QLabel("Not evaluated yet.")
        self.eval_note.setWordWrap(True)
        self.recall_table = _table(("Class", "Recall", "Images"))
        self.confusion_table = _table(())
        current = QGroupBox("Current checkpoint")
        cur_layout = QVBoxLayout(current)
        top = QHBoxLayout()
        top.addWidget(self.evaluate_button)
        top.addWidget(self.eval_note, 1)
        cur_layout.addLayout(top)
        tables = QHBoxLayout()
        tables.addWidget(self.recall_table, 1)
        tables.addWidget(self.confusion_table, 2)
        cur_layout.addLayout(tables, 1)

        layout = QGridLayout(self)
        layout.addWidget(rounds, 0, 0)
        layout.addWidget(reliability, 0, 1)
        layout.addWidget(current, 1, 0, 1, 2)
        layout.setColumnStretch(0, 3)
        layout.setColumnStretch(1, 2)

    # ---- rounds -----------------------------------------------------------------------

    def refresh_rounds(self) -> None:
        try:
            finished = [r for r in self.ws.project.rounds() if r.finished is not None]
        except ProjectError:
            return
        summaries = [round_summary(r) for r in finished]
        self.rounds_table.setRowCount(len(summaries))
        for row, s in enumerate(summaries):
            for column, value in enumerate((s["round"], s["strategy"], s["labels"], s["accuracy"],
                                            s["ece"], s["kappa"])):
                self.rounds_table.setItem(row, column, QTableWidgetItem(_fmt(value)))
        self.stop_label.setText(stop_words(summaries) if summaries else NO_ROUNDS)
        points = [(s["round"], s["accuracy"]) for s in summaries if s["accuracy"] is not None]
        if hasattr(self.accuracy_plot, "plot"):
            self.accuracy_plot.clear()
            if points:
                xs, ys = zip(*points, strict=True)
                self.accuracy_plot.plot(list(xs), list(ys), symbol="o", pen="#0072B2")
        self._show_reliability(next((s for s in reversed(summaries) if s["bins"]), None))

    def _show_reliability(self, summary: dict | None) -> None:
        if summary is None:
            self.reliability_note.setText("No calibration recorded yet: it needs a finished round "
                                          "and labelled (or ground-truth) test images.")
            return
        bins = [b for b in summary["bins"] if b.get("count")]
        self.reliability_note.setText(
            f"Round {summary['round']}: expected calibration error (ECE) {summary['ece']:.3f} "
            f"over {sum(b['count'] for b in bins)} test images (Guo et al. 2017). Bars below the "
            "diagonal: over-confident.")
        plot = self.reliability_plot
        if not hasattr(plot, "plot"):
            return
        import pyqtgraph as pg

        plot.clear()
        plot.plot([0, 1], [0, 1], pen=pg.mkPen("#888888", style=Qt.PenStyle.DashLine))
        centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
        widths = [(b["upper"] - b["lower"]) * 0.9 for b in bins]
        plot.addItem(pg.BarGraphItem(x=centres, height=[b["accuracy"] for b in bins], width=widths,
                                     brush="#56B4E9"))

    # ---- the current checkpoint ---------------------------------------------------------

    def start_evaluation(self) -> bool:
        checkpoint = self.ws.project.latest_checkpoint()
        if checkpoint is None:
            self._eval_note("No checkpoint yet: train first.")
            return False
        reason = self.runner.start(JOB, evaluate_job, self.ws.project, title="Evaluating",
                                   group="model", checkpoint_id=checkpoint.id)
        self._eval_note(reason or f"Evaluating checkpoint #{checkpoint.id} on the test split…")
        return reason is None

    def show_evaluation(self, result) -> None:
        self.result = result
        self._eval_note(f"{result.n} test images: accuracy {result.accuracy:.1%}, balanced "
                        f"accuracy {result.balanced_accuracy:.1%}.")
        names = list(result.classes) or [str(i) for i in range(len(result.confusion))]
        self.recall_table.setRowCount(len(names))
        for row, (name, recall, counts) in enumerate(zip(names, result.per_class_recall,
                                                         result.confusion, strict=True)):
            for column, value in enumerate((name, recall, sum(counts))):
                self.recall_table.setItem(row, column, QTableWidgetItem(_fmt(value)))
        table = self.confusion_table
        table.setRowCount(len(names))
        table.setColumnCount(len(names))
        table.setHorizontalHeaderLabels([f"→ {n}" for n in names])
        table.setVerticalHeaderLabels(names)
        table.verticalHeader().show()
        for i, counts in enumerate(result.confusion):
            total = sum(counts) or 1
            for j, value in enumerate(counts):
                item = QTableWidgetItem(str(value))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                share = value / total
                colour = QColor("#009E73" if i == j else "#D55E00")
                colour.setAlphaF(min(1.0, 0.15 + 0.85 * share) if value else 0.0)
                item.setBackground(QBrush(colour))
                item.setToolTip(f"{value} {names[i]} images predicted as {names[j]} ({share:.0%})")
                table.setItem(i, j, item)

    def _eval_note(self, text: str) -> None:
        self.eval_note.setText(text)

    def shutdown(self) -> None:
        pass


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(headers) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    if headers:
        table.setHorizontalHeaderLabels(list(headers))
    table.verticalHeader().hide()
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.horizontalHeader().setStretchLastSection(True)
    return table


def _plots():
    try:
        import pyqtgraph as pg
    except ImportError:
        return (QLabel("Install pyqtgraph for the accuracy plot."),
                QLabel("Install pyqtgraph for the reliability diagram."))
    accuracy = pg.PlotWidget(title="Test accuracy per round")
    accuracy.setLabel("bottom", "round")
    accuracy.setYRange(0, 1)
    reliability = pg.PlotWidget(title="Reliability diagram")
    reliability.setLabel("bottom", "confidence")
    reliability.setLabel("left", "accuracy")
    reliability.setXRange(0, 1)
    reliability.setYRange(0, 1)
    for plot in (accuracy, reliability):
        plot.setBackground(None)
        plot.showGrid(x=True, y=True, alpha=0.2)
    return accuracy, reliability
