"""Run a slow call (an import of torch, say) on a pool thread; get its result as a signal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from atl_desktop.gui.gcguard import collect_on_gui_thread


class _Signals(QObject):
    done = Signal(object)


class _Call(QRunnable):
    def __init__(self, fn: Callable[[], Any], signals: _Signals):
        super().__init__()
        self.fn = fn
        self.signals = signals

    def run(self) -> None:
        try:
            result = self.fn()
        except Exception as error:  # the caller decides what a failure means
            result = error
        self.signals.done.emit(result)


class Background(QObject):
    """`call(fn, on_done)`: fn runs off the GUI thread; on_done(result or exception) on it."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        collect_on_gui_thread()  # the pool thread must not finalise the window's objects
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._calls: list[_Signals] = []

    def call(self, fn: Callable[[], Any], on_done: Callable[[Any], None]) -> None:
        signals = _Signals(self)  # a child of this GUI-thread object: results arrive queued
        signals.done.connect(on_done)
        self._calls.append(signals)
        self._pool.start(_Call(fn, signals))

    def wait(self) -> None:
        self._pool.waitForDone()
