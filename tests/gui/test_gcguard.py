import gc
import threading

from PySide6.QtCore import QObject, QThread

from atl_desktop.gui import gcguard
from atl_desktop.gui.jobrunner import JobRunner


def test_a_job_runner_turns_automatic_collection_off_and_the_gui_thread_collects(qtbot):
    assert gc.isenabled()
    JobRunner()
    assert not gc.isenabled()

    class Cycle(QObject):
        pass

    finalised_on = []

    def make_garbage():
        obj = Cycle()
        obj.self_ref = obj  # only the cycle collector frees it
        obj.destroyed.connect(lambda: finalised_on.append(threading.current_thread()))

    gc.collect()
    make_garbage()
    gc.set_threshold(1, 1, 1)  # every tick collects every generation
    try:
        worker = threading.Thread(target=lambda: [[] for _ in range(10_000)])
        worker.start()
        worker.join()  # allocating a lot off the GUI thread collects nothing
        assert finalised_on == []
        qtbot.waitUntil(lambda: bool(finalised_on), timeout=3 * gcguard.INTERVAL_MS)
    finally:
        gc.set_threshold(700, 10, 10)
    assert finalised_on == [threading.main_thread()]


def test_generations_are_collected_by_the_interpreters_thresholds(monkeypatch):
    collected = []
    monkeypatch.setattr(gc, "get_threshold", lambda: (700, 10, 10))
    monkeypatch.setattr(gc, "collect", collected.append)
    for counts, expected in [((700, 11, 11), None),  # gen 0 not past its threshold: nothing
                             ((701, 10, 11), 0), ((701, 11, 10), 1), ((701, 11, 11), 2)]:
        monkeypatch.setattr(gc, "get_count", lambda counts=counts: counts)
        assert gcguard.collect_due_generations() == expected
    assert collected == [0, 1, 2]


def test_only_the_gui_thread_may_install_it(qapp):
    results = []

    class Other(QThread):
        def run(self):
            gcguard.collect_on_gui_thread()
            results.append(gc.isenabled())

    thread = Other()
    thread.start()
    thread.wait()
    assert results == [True]


def test_what_is_loaded_is_left_out_of_later_collections():
    gc.unfreeze()
    loaded = [[]]
    try:
        gcguard.freeze_what_is_loaded()
        assert gc.get_freeze_count() > 10_000  # the modules of this test run, at least
        assert not any(obj is loaded for obj in gc.get_objects())  # no collection walks it
        cycle = [[]]
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 2  # what is made later is collected as usual
    finally:
        gc.unfreeze()
    assert any(obj is loaded for obj in gc.get_objects())


def test_no_collection_while_the_engine_loads(monkeypatch):
    collected = []
    monkeypatch.setattr(gc, "collect", collected.append)
    monkeypatch.setattr(gc, "freeze", lambda: collected.append("freeze"))
    monkeypatch.setattr(gc, "get_count", lambda: (5000, 11, 11))
    gcguard.hold_until_frozen()
    assert gcguard.collect_due_generations() is None
    gcguard.freeze_what_is_loaded()
    assert gcguard.collect_due_generations() == 2
    assert collected == ["freeze", 2]
