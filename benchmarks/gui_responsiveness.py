"""Does the window stay responsive while real jobs run, and how fast is labelling?

Builds a small project from resources/testdata/pathmnist_270.npz (imported with
hidden ground truth; the first LABELLED images then get labels), opens the real
MainWindow offscreen and runs, on its JobRunner:
1. a real training job (session.train_job, the small CNN, a few epochs), then
2. a real scoring job (session.query_job with entropy),
while a 10 ms QTimer records the time between its ticks: a tick that comes late
means the event loop was blocked that long. Then it measures, for every image
of the queried batch, the time from a label key press (QTest.keyClick) until
the next image is the current one and the view has repainted.

Writes benchmarks/results/gui.json: max_gap_ms / p99_gap_ms per job (goal: max
<= 50 ms), label_latency_ms p50 / p99 / max (goal: p99 <= 16 ms), machine.

With --pbc: real-resolution photographs instead, long jobs. A stratified subset of
../shared/data/pbc_dev (JPEGs of about 360 px, 8 classes), copied into the project;
PBC_LABELLED of them labelled, the rest the pool. Training: an untrained ResNet-18 at
224 px for --steps optimiser steps (at least 60 s here); scoring: the entropy query over the
whole pool at 224 px (at least 60 s). Writes benchmarks/results/gui_pbc.json.

Run: python benchmarks/gui_responsiveness.py [--epochs N] [--batch N] [--pbc [--pool N --steps N]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any Qt import

import numpy as np  # noqa: E402
from PySide6.QtCore import QElapsedTimer, QEventLoop, Qt, QTimer  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "resources" / "testdata" / "pathmnist_270.npz"
RESULTS = ROOT / "benchmarks" / "results" / "gui.json"
TICK_MS = 10
LABELLED = 180  # images labelled before training; the other 90 form the pool to score
PBC = ROOT.parent / "shared" / "data" / "pbc_dev"
PBC_LABELLED = 200


def machine() -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, Qt platform {QApplication.platformName()}")


def pbc_subset(folder: Path, count: int) -> Path:
    """`count` pbc_dev photographs, the same share of each class, copied into class folders."""
    import shutil

    classes = sorted(p for p in PBC.iterdir() if p.is_dir())
    rng = np.random.default_rng(0)
    out = folder / "pbc"
    for k, cls in enumerate(classes):
        files = sorted(cls.glob("*.jpg"))
        share = count // len(classes) + (k < count % len(classes))
        (out / cls.name).mkdir(parents=True)
        for i in rng.choice(len(files), min(share, len(files)), replace=False):
            shutil.copyfile(files[i], out / cls.name / files[i].name)
    return out


def build_pbc_project(folder: Path, pool: int, steps: int):
    from atl_desktop.data.importers import ImportOptions, import_source
    from atl_desktop.jobs import run_job
    from atl_desktop.loop.session import TRAIN_SETTING
    from atl_desktop.store import Project

    path = folder / "bench.atl"
    with Project.create(path) as project:
        run_job(import_source(project, pbc_subset(folder, PBC_LABELLED + pool), ImportOptions(labels="truth")))
        truth = project.truth()
        ids = np.random.default_rng(1).permutation(sorted(truth))[:PBC_LABELLED]
        with project.transaction():
            for image_id in ids:
                project.set_label(int(image_id), truth[int(image_id)], annotator="bench")
        project.set_setting(TRAIN_SETTING, {
            "backbone": "resnet18", "weights": None, "epochs": 1, "batch_size": 16, "min_steps": steps,
            "max_steps": steps, "patience": 0, "device": "cpu", "seed": 0,
        })
    return path


def build_project(folder: Path, epochs: int):
    from atl_desktop.data.importers import ImportOptions, import_source
    from atl_desktop.jobs import run_job
    from atl_desktop.loop.session import TRAIN_SETTING
    from atl_desktop.store import Project

    path = folder / "bench.atl"
    with Project.create(path) as project:
        run_job(import_source(project, DATA, ImportOptions(labels="truth")))
        truth = project.truth()
        with project.transaction():
            for image_id in sorted(truth)[:LABELLED]:
                project.set_label(image_id, truth[image_id], annotator="bench")
        project.set_setting(TRAIN_SETTING, {
            "backbone": "smallcnn", "weights": None, "epochs": epochs, "batch_size": 16,
            "patience": 0, "device": "cpu", "seed": 0,
        })
    return path


class GapRecorder:
    """A 10 ms timer; each interval between ticks longer than expected is a blocked loop."""

    def __init__(self):
        self.clock = QElapsedTimer()
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.intervals: list[float] = []
        self._last: float | None = None

    def _tick(self) -> None:
        now = self.clock.nsecsElapsed() / 1e6
        if self._last is not None:
            self.intervals.append(now - self._last)
        self._last = now

    def start(self) -> None:
        self.intervals, self._last = [], None
        self.clock.start()
        self.timer.start()

    def stop(self) -> dict[str, float]:
        self.timer.stop()
        values = np.asarray(self.intervals)
        moments = np.cumsum(values)
        return {"gaps_over_50_ms": [[round(float(t)), round(float(v))] for t, v in zip(moments, values, strict=True) if v > 50],
                "max_gap_ms": float(values.max()), "p99_gap_ms": float(np.percentile(values, 99)),
                "median_gap_ms": float(np.median(values)), "ticks": len(values)}


def wait_until(condition, timeout_ms: int = 600_000) -> None:
    """Run the real event loop until `condition()` holds. Not QTest.qWait: PySide6 keeps the
    GIL through its sleeps, which starved the engine's import thread (50 s instead of 3.5 s)."""
    loop = QEventLoop()
    poll = QTimer()
    poll.timeout.connect(lambda: loop.quit() if condition() else None)
    poll.start(10)
    QTimer.singleShot(timeout_ms, loop.quit)
    if not condition():
        loop.exec()
    poll.stop()


def run_job_measured(app: QApplication, window, start, name: str) -> dict[str, float]:
    recorder = GapRecorder()
    done = {"outcome": None}
    window.runner.finished.connect(lambda n, _r: done.update(outcome="finished") if n == name else None)
    window.runner.failed.connect(lambda n, m, _d: done.update(outcome=f"failed: {m}") if n == name else None)
    recorder.start()
    began = time.perf_counter()
    if not start():
        raise RuntimeError(f"{name} did not start")
    loop = QEventLoop()
    for signal in (window.runner.finished, window.runner.failed, window.runner.cancelled):
        signal.connect(lambda n, *_rest: loop.quit() if n == name else None)
    if done["outcome"] is None:
        loop.exec()  # the real event loop, as in the application
    seconds = time.perf_counter() - began
    result = recorder.stop()
    if done["outcome"] != "finished":
        raise RuntimeError(f"{name} {done['outcome']}")
    result["seconds"] = seconds
    return result


def label_latencies(app: QApplication, window) -> list[float]:
    """Per key press: until the next image is current and the grid has repainted."""
    view = window.query_view
    grid = view.grid
    book = window.ws.book()
    keys = [c.key for c in book.classes if c.key]
    window.tabs.setCurrentWidget(view)
    grid.setFocus()
    app.processEvents()
    window.ws.thumbs.wait_idle()
    app.processEvents()
    latencies = []
    rows = view.model.rowCount()
    grid.select_row(0)
    for k in range(rows - 1):
        before = grid.current_row()
        began = time.perf_counter()
        QTest.keyClick(grid, keys[k % len(keys)])
        while grid.current_row() == before:
            app.processEvents()
        app.processEvents()  # delivers the pending update requests: the tiles repaint
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=60, help="images queried by the scoring job")
    parser.add_argument("--pbc", action="store_true", help="real-resolution blood-cell photographs, long jobs")
    parser.add_argument("--pool", type=int, default=1400, help="--pbc: unlabelled pool images")
    parser.add_argument("--steps", type=int, default=40, help="--pbc: training steps")
    parser.add_argument("--build-only", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        if args.pbc:
            build_pbc_project(Path(args.build_only), args.pool, args.steps)
        else:
            build_project(Path(args.build_only), args.epochs)
        return 0
    app = QApplication.instance() or QApplication([])

    from atl_desktop.gui.mainwindow import MainWindow, default_query_job, default_train_job
    from atl_desktop.store import Project

    with tempfile.TemporaryDirectory() as tmp:
        # Built in another process, so this one starts as the application does: no engine yet.
        build = ["--pbc", "--pool", str(args.pool), "--steps", str(args.steps)] if args.pbc else []
        subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs), *build, "--build-only", tmp],
                       check=True)
        path = Path(tmp) / "bench.atl"
        window = MainWindow(Project.open(path), annotator="bench", device="CPU",
                            query_factory=default_query_job, train_factory=default_train_job)
        window.show()
        # The window imports the engine in the background at start-up; measured apart.
        recorder = GapRecorder()
        recorder.start()
        began = time.perf_counter()
        wait_until(lambda: window.engine_ready)
        assert "torch" in sys.modules
        startup = {**recorder.stop(), "seconds": time.perf_counter() - began}
        results = {
            "startup_engine_import": startup,
            "train": run_job_measured(app, window, window.start_train, "train"),
            "query": run_job_measured(app, window, lambda: window.start_query("entropy", args.batch),
                                      "query"),
        }
        wait_until(lambda: False, timeout_ms=100)
        latencies = label_latencies(app, window)
        window.close()
    results["label_latency_ms"] = {
        "p50": statistics.median(latencies), "p99": float(np.percentile(latencies, 99)),
        "max": max(latencies), "presses": len(latencies),
    }
    results["goals"] = {"max_gap_ms": 50, "label_latency_p99_ms": 16}
    results["setup"] = (f"pathmnist_270 ({LABELLED} labelled), smallcnn, {args.epochs} epochs, "
                        f"batch 16; entropy query of {args.batch}; {TICK_MS} ms timer; project "
                        "on local disk (labels fsynced)")
    if args.pbc:
        results["setup"] = (f"pbc_dev photographs at full resolution (about 360 px), {PBC_LABELLED} labelled "
                            f"and {args.pool} in the pool; untrained resnet18 at 224 px, {args.steps} steps "
                            f"of batch 16; entropy query of {args.batch} over the whole pool; {TICK_MS} ms "
                            "timer; project on local disk (labels fsynced)")
    results["machine"] = machine()
    results["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    out = RESULTS.with_name("gui_pbc.json") if args.pbc else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
