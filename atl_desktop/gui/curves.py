"""Live training curves: loss and accuracy per step, validation accuracy per epoch.

Drawn with pyqtgraph; the points are kept here too (`points`), so the panel
and tests can read what is shown. Redrawing is throttled: points arrive in
batches from the job runner and the plot is redrawn at most every REDRAW_MS.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

REDRAW_MS = 100
SERIES = {  # metric -> (plot, legend name, colour)
    "loss": ("loss", "training loss", "#D55E00"),
    "val_loss": ("loss", "validation loss", "#CC79A7"),
    "accuracy": ("accuracy", "training accuracy (batch)", "#0072B2"),
    "val_accuracy": ("accuracy", "validation accuracy", "#009E73"),
}


class TrainingCurves(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.points: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in SERIES}
        self._curves = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        try:
            import pyqtgraph as pg
        except ImportError:
            layout.addWidget(QLabel("Install pyqtgraph to see live curves (pip install pyqtgraph)."))
            return
        pg.setConfigOptions(antialias=True)
        self.plots = {}
        for key, title in (("loss", "Loss"), ("accuracy", "Accuracy")):
            plot = pg.PlotWidget(title=title)
            plot.setBackground(None)  # follows the window's palette (dark theme too)
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setLabel("bottom", "step")
            plot.addLegend(offset=(-5, 5))
            if key == "accuracy":
                plot.setYRange(0, 1)
            self.plots[key] = plot
            layout.addWidget(plot)
        for metric, (plot, name, colour) in SERIES.items():
            symbol = "o" if metric.startswith("val_") else None
            self._curves[metric] = self.plots[plot].plot(
                [], [], name=name, pen=pg.mkPen(colour, width=2), symbol=symbol, symbolSize=6,
                symbolBrush=colour)

    def clear(self) -> None:
        self.points = {k: ([], []) for k in SERIES}
        self._redraw()

    def add(self, step: int, metrics) -> None:
        """Record a Progress's metrics; the plot follows within REDRAW_MS."""
        for metric in SERIES:
            if metric in metrics:
                xs, ys = self.points[metric]
                xs.append(float(step))
                ys.append(float(metrics[metric]))
        if not self._timer.isActive():
            self._timer.start()

    def _redraw(self) -> None:
        for metric, curve in self._curves.items():
            curve.setData(*self.points[metric])
