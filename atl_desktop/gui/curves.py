"""Live training curves: loss and accuracy per step, validation loss and accuracy per epoch.

Drawn with pyqtgraph; the points are kept here too (`points`), so the panel
and tests can read what is shown. Redrawing is throttled: points arrive in
batches from the job runner and the plot is redrawn at most every REDRAW_MS.
A series enters the legend when its first point arrives, so a project without a
validation split is not promised validation curves. Per-step values are noisy
(one small batch each), so each is drawn faint with a bold smoothed line over it:
an exponential moving average, bias-corrected as TensorBoard does, so the first
steps are not pulled towards zero.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QLabel, QStackedWidget, QVBoxLayout, QWidget

REDRAW_MS = 100
SMOOTHING = 0.1  # weight of the newest step in the moving average (about 20 steps' memory)
EMPTY_TEXT = ("Loss and accuracy curves appear here while a training job runs.\n"
              "Validation points need labelled images in the validation split.")
SERIES = {  # metric -> (plot, legend name, colour)
    "loss": ("loss", "training loss (smoothed)", "#D55E00"),
    "val_loss": ("loss", "validation loss", "#CC79A7"),
    "accuracy": ("accuracy", "training accuracy (smoothed)", "#0072B2"),
    "val_accuracy": ("accuracy", "validation accuracy", "#009E73"),
}


class Smoother:
    """Bias-corrected exponential moving average, one value at a time."""

    def __init__(self, alpha: float = SMOOTHING):
        self.alpha = alpha
        self.mean = 0.0
        self.weight = 0.0  # 1 - (1 - alpha)^t: how much of the average is real data

    def add(self, value: float) -> float:
        self.mean = (1 - self.alpha) * self.mean + self.alpha * value
        self.weight = (1 - self.alpha) * self.weight + self.alpha
        return self.mean / self.weight


class TrainingCurves(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.points: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in SERIES}
        self.smoothed: dict[str, list[float]] = {}
        self._smoothers: dict[str, Smoother] = {}
        self._curves = {}
        self._raw_curves = {}
        self._legends = {}
        self._in_legend: set[str] = set()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self.empty = QLabel(EMPTY_TEXT)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet("color: palette(placeholder-text); font-size: 12pt;")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.stack)
        self._plots_built = False

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.ensure_plots()

    def ensure_plots(self) -> None:
        """Build the plots when first needed: importing pyqtgraph takes seconds, which the
        window's start-up should not wait for (the engine warm-up imports it meanwhile).
        The window calls this once the engine is warm: built by the first progress of a
        job started from another tab, they blocked the window for ~50 ms."""
        if self._plots_built:
            return
        self._plots_built = True
        try:
            import pyqtgraph as pg
        except ImportError:
            self.empty.setText("Install pyqtgraph to see live curves (pip install pyqtgraph).")
            return
        self._build_plots(pg)
        self._redraw()

    def _build_plots(self, pg) -> None:
        pg.setConfigOptions(antialias=True)
        text = self.palette().color(QPalette.ColorRole.WindowText).name()
        plots = QWidget()
        plots_layout = QVBoxLayout(plots)
        plots_layout.setContentsMargins(0, 0, 0, 0)
        self.plots = {}
        for key, title, legend_corner in (("loss", "Loss", (-5, 5)), ("accuracy", "Accuracy", (-5, -5))):
            plot = pg.PlotWidget()
            plot.setBackground(None)  # follows the window's palette (dark theme too)
            plot.setTitle(title, color=text)
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setLabel("bottom", "training step", color=text)
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setTextPen(text)
            self._legends[key] = plot.addLegend(offset=legend_corner, labelTextColor=text)
            if key == "accuracy":
                plot.setYRange(0, 1)
            self.plots[key] = plot
            plots_layout.addWidget(plot)
        for metric, (plot, _name, colour) in SERIES.items():
            if metric.startswith("val_"):
                self._curves[metric] = self.plots[plot].plot(
                    [], [], pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=7, symbolBrush=colour)
                continue
            faint = pg.mkColor(colour)
            faint.setAlpha(70)
            self._raw_curves[metric] = self.plots[plot].plot([], [], pen=pg.mkPen(faint, width=1))
            self._curves[metric] = self.plots[plot].plot([], [], pen=pg.mkPen(colour, width=2.5))
        self.stack.addWidget(plots)

    def clear(self) -> None:
        self.points = {k: ([], []) for k in SERIES}
        self.smoothed, self._smoothers = {}, {}
        for metric in list(self._in_legend):
            self._legends[SERIES[metric][0]].removeItem(self._curves[metric])
        self._in_legend.clear()
        self._redraw()
        self.stack.setCurrentWidget(self.empty)

    def add(self, step: int, metrics) -> None:
        """Record a Progress's metrics; the plot follows within REDRAW_MS."""
        self.ensure_plots()
        for metric in SERIES:
            if metric in metrics:
                xs, ys = self.points[metric]
                xs.append(float(step))
                ys.append(float(metrics[metric]))
                if not metric.startswith("val_"):
                    smoother = self._smoothers.setdefault(metric, Smoother())
                    self.smoothed.setdefault(metric, []).append(smoother.add(ys[-1]))
        if not self._timer.isActive():
            self._timer.start()

    def _redraw(self) -> None:
        for metric, curve in self._curves.items():
            xs, ys = self.points[metric]
            if metric in self._raw_curves:
                self._raw_curves[metric].setData(xs, ys)
                ys = self.smoothed.get(metric, [])
            curve.setData(xs, ys)
            if xs and metric not in self._in_legend:
                self._legends[SERIES[metric][0]].addItem(curve, SERIES[metric][1])
                self._in_legend.add(metric)
        if self._curves and any(xs for xs, _ in self.points.values()):
            self.stack.setCurrentIndex(1)
