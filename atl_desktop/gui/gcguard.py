"""Python's cyclic garbage collector runs on the GUI thread only.

Automatic collection runs in whichever thread happens to allocate, so a job's thread (or a
thumbnail decoder) can end up finalising Qt objects that belong to the GUI thread, which
aborts or deadlocks Qt. Once `collect_on_gui_thread()` has run, automatic collection is off
and a timer on the GUI thread collects with the interpreter's own generation thresholds.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QThread, QTimer

INTERVAL_MS = 500
_timer: QTimer | None = None
_held = False  # while the engine loads: see hold_until_frozen


def collect_due_generations() -> int | None:
    """Collect as the interpreter would: generation 0 past its threshold, and the older
    generations too when theirs are passed as well. Returns the generation collected."""
    (young, middle, old), (young_max, middle_max, old_max) = gc.get_count(), gc.get_threshold()
    if _held or young <= young_max:
        return None
    generation = 0 if middle <= middle_max else 1 if old <= old_max else 2
    gc.collect(generation)
    return generation


def hold_until_frozen() -> None:
    """No collections while the engine loads: each would walk the new modules' objects (a
    collection of the youngest generation took 40 ms then), which all stay alive anyway."""
    global _held
    _held = True


def freeze_what_is_loaded() -> None:
    """Leave everything alive now out of all later collections; collections resume.

    Once torch is loaded, a full collection walks some 370,000 objects, nearly all of them
    modules' own, for ~150-230 ms on the GUI thread: a visible freeze. The interpreter's own
    collector skips most full collections by a heuristic Python code cannot see, so the
    objects loaded at start-up are frozen instead (without collecting first, which would
    cost that freeze once; loading leaves little garbage)."""
    global _held
    gc.freeze()
    _held = False


def collect_on_gui_thread() -> None:
    """Turn automatic collection off and collect on a GUI-thread timer instead."""
    global _timer
    app = QCoreApplication.instance()
    if app is None or QThread.currentThread() is not app.thread():
        return
    if _timer is None:
        _timer = QTimer(app)
        _timer.timeout.connect(collect_due_generations)
        _timer.start(INTERVAL_MS)
        app.aboutToQuit.connect(gc.enable)  # code after the event loop may collect anywhere
    gc.disable()
