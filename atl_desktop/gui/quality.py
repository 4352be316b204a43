"""Model quality: the learning curve (test accuracy against labelled images per round,
beside the random-sampling baseline when the project records one), the stopping
signal in words, and for the current checkpoint a reliability diagram with the
expected calibration error, per-class recall and the confusion matrix; the audit
estimate (accuracy on the audit images, with 95 % intervals) and the stopping rule,
refreshed as audit labels arrive (from the cached scores, off the GUI thread).

The numbers come from what the rounds recorded (`rounds.assess_job` runs at the
end of each round). A checkpoint no round assessed (after a rollback, say) is
assessed on demand by the same job, on the job runner.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from atl_desktop.active.audit import RULE_TEXT, WHY_AUDIT, AuditEstimate, recorded_audit, stop_rule
from atl_desktop.gui.background import Background
from atl_desktop.gui.jobrunner import JobRunner
from atl_desktop.gui.workspace import RefreshWhenShown, Workspace
from atl_desktop.store import ProjectError, RoundRecord
from atl_desktop.store.keys import BASELINE_SETTING, SOURCE_SETTING

JOB = "evaluate"
NO_ROUNDS = ("No finished rounds yet. Each round (query, label, train) records the test accuracy, "
             "the calibration and the stopping signal shown here.")
NO_TEST = ("No labelled test images: import some into the test split (File ▸ Import images, "
           "Split: Test) to measure the model.")


def evaluate_job(project, *, checkpoint_id: int):
    """Assess a checkpoint on the test split as a round does; returns {"checkpoint", "test"?}."""
    from atl_desktop.loop.rounds import assess_job

    metrics = yield from assess_job(project, checkpoint_id, None)
    return {"checkpoint": checkpoint_id, "test": metrics.get("test")}


def round_summary(record: RoundRecord) -> dict[str, Any]:
    """What a finished round recorded (missing parts are None)."""
    test = record.metrics.get("test") or {}
    stop = record.metrics.get("stop") or {}
    calibration = test.get("calibration") or {}
    return {"round": record.id, "strategy": record.strategy, "labels": record.metrics.get("labels"),
            "accuracy": test.get("accuracy", record.metrics.get("test_accuracy")), "ece": calibration.get("ece"),
            "bins": calibration.get("bins"), "kappa": stop.get("kappa"), "agreement": stop.get("agreement"),
            "stop_n": stop.get("n"), "stop": stop.get("stop"), "checkpoint": record.checkpoint_id,
            "test": test or None}


def temperature_note(calibration: dict) -> str:
    """Temperature scaling of the checkpoint's test predictions, in a sentence."""
    from atl_desktop.active.calibration import ece_change_words

    scaled = calibration.get("scaled")
    if not scaled:
        return ("Not temperature-scaled: a temperature is fitted on labelled validation images the model "
                "never trained on (import 20 or more into the validation split).")
    change = ece_change_words(calibration["ece"], scaled["ece"], scaled["temperature"])
    return (f"Temperature scaling: {change}, T fitted on {scaled['fitted_on']} (orange: after). "
            "Pseudo-labels use the scaled probabilities.")


def suggestion_note(rounds: list[RoundRecord]) -> str:
    """The suggestions' head calibration recorded by the newest query that fitted one."""
    from atl_desktop.active.calibration import ece_change_words

    fitted = next((r for r in reversed(rounds) if (r.params or {}).get("temperature", {}).get("ece_before")
                   is not None), None)
    if fitted is None:
        return ""
    t = fitted.params["temperature"]
    change = ece_change_words(t["ece_before"], t["ece_after"], t["temperature"])
    return (f"Suggestions (round {fitted.id}): {change} out of fold, T fitted on {t['fitted_on']}; "
            "the confidence shown is the scaled one.")


def stop_words(summaries: list[dict[str, Any]]) -> str:
    """The stopping signal (Bloodgood & Vijay-Shanker 2009) in words."""
    with_kappa = [s for s in summaries if s.get("kappa") is not None]
    if not with_kappa:
        return ("Stopping signal: not known yet. It compares each round's predictions on a fixed "
                "set of unlabelled images with the round before, so it needs two finished rounds.")
    last = with_kappa[-1]
    changed = ""
    if last.get("agreement") is not None:
        n = f" ({last['stop_n']:,} images)" if last.get("stop_n") else ""
        changed = f"Predictions changed on {1 - last['agreement']:.1%} of the stop set{n} since the last round"
    else:
        changed = "Predictions were compared with the last round's on the stop set"
    if last["stop"]:
        return (f"{changed} (agreement κ = {last['kappa']:.3f}): the model has stabilised, so more "
                "labels are unlikely to help much.")
    return (f"{changed} (agreement κ = {last['kappa']:.3f}): the model is still changing; more labels "
            "should still help. Stop when κ stays near 1 for a few rounds.")


def learning_points(summaries, start: dict | None) -> list[tuple[float, float]]:
    """(labelled images, test accuracy) per round, after the source-only start when known."""
    points = [(float(s["labels"]), float(s["accuracy"])) for s in summaries
              if s["labels"] is not None and s["accuracy"] is not None]
    if start and start.get("accuracy") is not None:
        points.insert(0, (float(start.get("labels", 0)), float(start["accuracy"])))
    return points


class QualityView(QWidget):
    def __init__(self, workspace: Workspace, runner: JobRunner, parent=None):
        super().__init__(parent)
        self.ws = workspace
        self.runner = runner
        self.result = None  # the test metrics shown for the current checkpoint
        self.audit = None  # the audit estimate shown (active.audit.AuditEstimate), or None
        self._stabilised = False  # the newest round's stop-set verdict, for the stopping rule
        self._audit_calls = Background(self)
        self._evaluated: dict[int, dict | None] = {}  # checkpoint id -> test metrics evaluated here
        self._build()
        workspace.changed.connect(RefreshWhenShown(self, self.refresh).request)
        runner.finished.connect(lambda name, result: self._on_evaluated(result) if name == JOB else None)
        runner.failed.connect(lambda name, message, _d: self._eval_note(f"Evaluation failed: {message}")
                              if name == JOB else None)
        self.refresh()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._holders is not None:  # built on first show: importing pyqtgraph takes seconds
            self.accuracy_plot, self.reliability_plot = _plots()
            for holder, plot in zip(self._holders, (self.accuracy_plot, self.reliability_plot), strict=True):
                holder.layout().addWidget(plot)
            self._holders = None
            self.refresh()

    def _build(self) -> None:
        self.accuracy_plot = self.reliability_plot = None  # pyqtgraph plots, once shown
        self._holders = (_holder(), _holder())
        self.stop_label = _note()
        self.stop_label.setStyleSheet("font-weight: bold;")
        self.rounds_table = _table(("Round", "Strategy", "Labels", "Test accuracy", "ECE", "Changed"))
        self.rounds_table.setMaximumHeight(120)
        curve = QGroupBox("Learning curve: test accuracy against labelled images")
        curve_layout = QVBoxLayout(curve)
        curve_layout.addWidget(self._holders[0], 1)
        curve_layout.addWidget(self.stop_label)
        curve_layout.addWidget(self.rounds_table)

        self.reliability_note = _note()
        self.suggestion_note = _note()
        self.calibration_box = QGroupBox("Calibration")
        rel_layout = QVBoxLayout(self.calibration_box)
        rel_layout.addWidget(self._holders[1], 1)
        rel_layout.addWidget(self.reliability_note)
        rel_layout.addWidget(self.suggestion_note)

        self.evaluate_button = QPushButton("Evaluate now")
        self.evaluate_button.setToolTip("Assess the current checkpoint on the test split, as a round does")
        self.evaluate_button.clicked.connect(self.start_evaluation)
        self.eval_note = _note("Not evaluated yet.")
        self.recall_table = _table(("Class", "Recall", "Test images"))
        self.confusion_table = _table(())
        self.confusion_table.setToolTip("Rows: the true class. Columns: what the model predicted, "
                                        "numbered as the rows.")
        self.confusion_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.confusion_title = QLabel("Confusion matrix (rows: true class · columns: predicted)")
        self.current_box = QGroupBox("Current checkpoint on the test split")
        cur_layout = QVBoxLayout(self.current_box)
        top = QHBoxLayout()
        top.addWidget(self.eval_note, 1)
        top.addWidget(self.evaluate_button)
        cur_layout.addLayout(top)
        tables = QHBoxLayout()
        tables.addWidget(self.recall_table, 2)
        confusion = QVBoxLayout()
        confusion.addWidget(self.confusion_title)
        confusion.addWidget(self.confusion_table, 1)
        tables.addLayout(confusion, 3)
        cur_layout.addLayout(tables, 1)

        self.audit_note = _note("No audit labels yet.")
        self.audit_table = _table(("Class", "Recall", "Audit labels"))
        self.audit_table.setMaximumHeight(160)
        self.rule_label = _note()
        self.rule_label.setStyleSheet("font-weight: bold;")
        self.audit_box = QGroupBox("Audit: accuracy on images drawn at random")
        self.audit_box.setToolTip(WHY_AUDIT)
        audit_layout = QVBoxLayout(self.audit_box)
        audit_layout.addWidget(_note(WHY_AUDIT))
        audit_layout.addWidget(self.audit_note)
        audit_layout.addWidget(self.audit_table, 1)
        audit_layout.addWidget(self.rule_label)

        top = QSplitter()
        top.addWidget(curve)
        top.addWidget(self.calibration_box)
        top.addWidget(self.audit_box)
        top.setStretchFactor(0, 3)
        top.setStretchFactor(1, 2)
        split = QSplitter(Qt.Orientation.Vertical)
        split.setChildrenCollapsible(False)
        split.addWidget(top)
        split.addWidget(self.current_box)
        split.setSizes([400, 360])
        layout = QVBoxLayout(self)
        layout.addWidget(split)

    # ---- everything from the store ------------------------------------------------------

    def refresh(self) -> None:
        try:
            project = self.ws.project
            finished = [r for r in project.rounds() if r.finished is not None]
            start = project.get_setting(SOURCE_SETTING)
            baseline = project.get_setting(BASELINE_SETTING)
            current = project.latest_checkpoint()
        except ProjectError:
            return  # the project is closing
        summaries = [round_summary(r) for r in finished]
        self.suggestion_note.setText(suggestion_note(project.rounds()))
        self._show_rounds(summaries)
        self._show_curve(learning_points(summaries, start), baseline)
        self._show_current(current, summaries)
        self._stabilised = bool(summaries and summaries[-1]["stop"])
        self._refresh_audit()

    # ---- the audit sample ------------------------------------------------------------------

    def _refresh_audit(self) -> None:
        """Read the audit labels here; measure them against the cached scores off the GUI thread."""
        from atl_desktop.loop.session import audit_inputs, cached_audit, no_audit_labels_message

        try:
            inputs = audit_inputs(self.ws.project)
            if inputs is None:
                self._show_audit(ProjectError(no_audit_labels_message(self.ws.project)))
                return
        except ProjectError as error:
            self._show_audit(error)
            return
        self._audit_calls.call(lambda: cached_audit(inputs), self._show_audit)

    def _show_audit(self, result) -> None:
        """`result`: an AuditEstimate, or the exception that says why there is none (then the
        newest round's recorded estimate, if any, is shown and said to be so)."""
        self.audit = None if isinstance(result, BaseException) else result
        note = "" if self.audit is None else self.audit.summary() + "."
        if self.audit is None:
            note = str(result) if isinstance(result, ProjectError) else f"The audit estimate failed: {result}"
            recorded = self._recorded_audit() if "not scored" in note else None
            if recorded is not None:
                self.audit = AuditEstimate.from_json(recorded["estimate"])
                note = f"{self.audit.summary()} (as recorded at the end of round {recorded['round']})."
        self.audit_note.setText(note)
        self._show_audit_recall(self.audit.per_class if self.audit is not None else ())
        self._show_rule()

    def _recorded_audit(self) -> dict | None:
        try:
            recorded = recorded_audit(self.ws.project)
        except ProjectError:
            return None
        return recorded if recorded and recorded.get("estimate") else None

    def _show_audit_recall(self, per_class) -> None:
        table = self.audit_table
        table.setRowCount(len(per_class))
        for row, c in enumerate(per_class):
            for column, value in enumerate((c.name, _percent(c.recall), c.count)):
                table.setItem(row, column, QTableWidgetItem(_fmt(value)))

    def _show_rule(self) -> None:
        from atl_desktop.store.keys import DEFAULT_STOP_WIDTH, STOP_RULE_SETTING

        try:
            rule = self.ws.project.get_setting(STOP_RULE_SETTING) or {}
        except ProjectError:
            return
        width = float(rule.get("width", DEFAULT_STOP_WIDTH))
        decision = stop_rule(self._stabilised, self.audit, width=width, target=rule.get("target"))
        self.rule_label.setText(decision.reason)
        self.rule_label.setToolTip(RULE_TEXT.format(width=width))

    def _show_rounds(self, summaries) -> None:
        table = self.rounds_table
        table.setRowCount(len(summaries))
        for row, s in enumerate(summaries):
            changed = None if s["agreement"] is None else f"{1 - s['agreement']:.1%}"
            for column, value in enumerate((s["round"], s["strategy"], s["labels"], _percent(s["accuracy"]),
                                            s["ece"], changed)):
                table.setItem(row, column, QTableWidgetItem(_fmt(value)))
        table.scrollToBottom()
        self.stop_label.setText(stop_words(summaries) if summaries else NO_ROUNDS)

    def _show_curve(self, points, baseline: dict | None) -> None:
        plot = self.accuracy_plot
        if plot is None or not hasattr(plot, "plot"):
            return
        import pyqtgraph as pg

        plot.clear()
        if points:
            xs, ys = zip(*points, strict=True)
            plot.plot(list(xs), list(ys), pen=pg.mkPen("#0072B2", width=2), symbol="o",
                      symbolBrush="#0072B2", symbolSize=8, name="this project")
        if baseline and baseline.get("labels") and baseline.get("accuracy"):
            plot.plot(list(baseline["labels"]), list(baseline["accuracy"]),
                      pen=pg.mkPen("#888888", width=2, style=Qt.PenStyle.DashLine), symbol="s",
                      symbolBrush="#888888", symbolSize=7,
                      name=f"{baseline.get('strategy', 'random')} sampling (baseline)")
        plot.setYRange(0, 1)

    # ---- the current checkpoint -----------------------------------------------------------

    def _show_current(self, checkpoint, summaries) -> None:
        if checkpoint is None:
            self._show_test(None, "No checkpoint yet: train a model first.")
            self.evaluate_button.setEnabled(False)
            return
        self.evaluate_button.setEnabled(True)
        if checkpoint.id in self._evaluated and self._evaluated[checkpoint.id] is None:
            self._show_test(None, NO_TEST)
            return
        test = self._evaluated.get(checkpoint.id)
        where = "evaluated here"
        if test is None:
            assessed = next((s for s in reversed(summaries) if s["checkpoint"] == checkpoint.id and s["test"]), None)
            test = assessed["test"] if assessed else None
            where = f"assessed at the end of round {assessed['round']}" if assessed else ""
        if test is None:
            self._show_test(None, f"Checkpoint #{checkpoint.id} has not been assessed on the test split: "
                                  "press Evaluate now.")
            return
        self._show_test(test, f"Checkpoint #{checkpoint.id} ({where}): {test['n']:,} test images, accuracy "
                              f"{test['accuracy']:.1%}, balanced accuracy {test['balanced_accuracy']:.1%}.")

    def _show_test(self, test: dict | None, note: str) -> None:
        self.result = test
        self._eval_note(note)
        calibration = (test or {}).get("calibration") or {}
        self._show_reliability(calibration if calibration.get("bins") else None, test)
        if test is None or not test.get("confusion"):
            self.recall_table.setRowCount(0)
            self.confusion_table.setRowCount(0)
            self.confusion_table.setColumnCount(0)
            return
        names = list(test.get("classes") or []) or [str(i) for i in range(len(test["confusion"]))]
        self._show_recall(names, test)
        self._show_confusion(names, test["confusion"])

    def _show_recall(self, names, test) -> None:
        table = self.recall_table
        table.setRowCount(len(names))
        for row, (name, recall, counts) in enumerate(zip(names, test["per_class_recall"], test["confusion"],
                                                         strict=True)):
            for column, value in enumerate((f"{row + 1}  {name}", _percent(recall), sum(counts))):
                item = QTableWidgetItem(_fmt(value))
                if column == 1 and recall is not None:
                    item.setBackground(QBrush(_shade("#009E73" if recall >= 0.5 else "#D55E00",
                                                     abs(recall - 0.5) * 1.2)))
                table.setItem(row, column, item)

    def _show_confusion(self, names, confusion) -> None:
        table = self.confusion_table
        table.setRowCount(len(names))
        table.setColumnCount(len(names))
        table.setHorizontalHeaderLabels([str(j + 1) for j in range(len(names))])
        table.setVerticalHeaderLabels([f"{i + 1}  {n}" for i, n in enumerate(names)])
        table.verticalHeader().show()
        for i, counts in enumerate(confusion):
            total = sum(counts) or 1
            for j, value in enumerate(counts):
                item = QTableWidgetItem(str(value))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                share = value / total
                if value:
                    item.setBackground(QBrush(_shade("#009E73" if i == j else "#D55E00", 0.15 + 0.85 * share)))
                item.setToolTip(f"{value} of {total} {names[i]} images predicted as {names[j]} ({share:.0%})")
                table.setItem(i, j, item)

    def _show_reliability(self, calibration: dict | None, test: dict | None) -> None:
        plot = self.reliability_plot
        if calibration is None:
            self.reliability_note.setText("No calibration yet: it is measured with the test accuracy.")
            if plot is not None and hasattr(plot, "plot"):
                plot.clear()
            return
        bins = [b for b in calibration["bins"] if b.get("count")]
        self.reliability_note.setText(
            f"Expected calibration error (ECE) {calibration['ece']:.3f} over {sum(b['count'] for b in bins):,} "
            "test images (Guo et al., ICML 2017): the gap between confidence and accuracy, weighted by "
            "images. Bars below the diagonal: over-confident. " + temperature_note(calibration))
        if plot is None or not hasattr(plot, "plot"):
            return
        import pyqtgraph as pg

        plot.clear()
        plot.plot([0, 1], [0, 1], pen=pg.mkPen("#888888", style=Qt.PenStyle.DashLine))
        centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
        widths = [(b["upper"] - b["lower"]) * 0.9 for b in bins]
        plot.addItem(pg.BarGraphItem(x=centres, height=[b["accuracy"] for b in bins], width=widths,
                                     brush="#56B4E9", pen=pg.mkPen("#2A6F97")))
        plot.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], pen=None, symbol="o",
                  symbolSize=5, symbolBrush="#0072B2")
        scaled = [b for b in (calibration.get("scaled") or {}).get("bins", []) if b.get("count")]
        if scaled:
            plot.plot([b["confidence"] for b in scaled], [b["accuracy"] for b in scaled],
                      pen=pg.mkPen("#D55E00", width=2), symbol="o", symbolSize=6, symbolBrush="#D55E00",
                      name="after temperature scaling")

    def start_evaluation(self) -> bool:
        checkpoint = self.ws.project.latest_checkpoint()
        if checkpoint is None:
            self._eval_note("No checkpoint yet: train first.")
            return False
        reason = self.runner.start(JOB, evaluate_job, self.ws.project, title="Evaluating",
                                   group="model", checkpoint_id=checkpoint.id)
        self._eval_note(reason or f"Evaluating checkpoint #{checkpoint.id} on the test split…")
        return reason is None

    def _on_evaluated(self, result: dict) -> None:
        self._evaluated[result["checkpoint"]] = result["test"]  # None: nothing to test on
        self.refresh()

    def _eval_note(self, text: str) -> None:
        self.eval_note.setText(text)

    def shutdown(self) -> None:
        self._audit_calls.wait()


def _percent(value) -> str | None:
    return None if value is None else f"{value:.1%}"


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _shade(colour: str, alpha: float) -> QColor:
    shade = QColor(colour)
    shade.setAlphaF(max(0.0, min(1.0, alpha)))
    return shade


def _holder() -> QWidget:
    holder = QWidget()
    layout = QVBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    holder.setMinimumHeight(160)
    return holder


def _note(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def _table(headers) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    if headers:
        table.setHorizontalHeaderLabels(list(headers))
    table.verticalHeader().hide()
    table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 8)  # compact rows
    table.horizontalHeader().setMinimumSectionSize(26)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.horizontalHeader().setStretchLastSection(True)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.setMinimumWidth(120)
    return table


def _plots():
    try:
        import pyqtgraph as pg
    except ImportError:
        return (QLabel("Install pyqtgraph for the learning curve."),
                QLabel("Install pyqtgraph for the reliability diagram."))
    text = QWidget().palette().color(QPalette.ColorRole.WindowText).name()
    accuracy = pg.PlotWidget()
    accuracy.setLabel("bottom", "labelled target images", color=text)
    accuracy.setLabel("left", "test accuracy", color=text)
    accuracy.setYRange(0, 1)
    accuracy.addLegend(offset=(-5, -5), labelTextColor=text)
    reliability = pg.PlotWidget()
    reliability.setLabel("bottom", "confidence", color=text)
    reliability.setLabel("left", "accuracy", color=text)
    reliability.setXRange(0, 1)
    reliability.setYRange(0, 1)
    for plot in (accuracy, reliability):
        plot.setBackground(None)
        plot.showGrid(x=True, y=True, alpha=0.2)
        for axis in ("left", "bottom"):
            plot.getAxis(axis).setTextPen(text)
        plot.setMinimumHeight(160)
    return accuracy, reliability
