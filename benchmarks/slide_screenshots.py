"""Screenshots of the slide view and of a patch with its context inset, for the docs.

Run under a real X server (Xvfb):
    ../shared/tools/gui-shot /tmp/shot.png --wait 400 -- .venv/bin/python benchmarks/slide_screenshots.py
It generates a slide with two tissue kinds, adds it as patches, labels some by
colour as a stand-in expert would, trains the small CNN briefly, scores the pool
(so the heatmap has something to show), then grabs the window into docs/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gui_screenshots import until, wait  # noqa: E402


def make_slide(path: Path, width: int = 8000, height: int = 6000, seed: int = 3) -> None:
    """Two tissue kinds on glass: dense purple (tumour-like) and pink (stroma-like) regions."""
    import tifffile

    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    field = np.sin(6.1 * xs + 0.7) * np.cos(4.3 * ys - 0.3) + 0.5 * np.sin(11.0 * xs * ys + 1.0)
    edge = 1.0 - 2.3 * np.maximum(np.abs(xs - 0.5), np.abs(ys - 0.5) * 1.1)
    tissue = (field + edge) > 0.75
    dense = (np.sin(9.0 * xs - 2.0) + np.cos(7.0 * ys + 1.0)) > 0.4
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (244, 243, 246)
    texture = rng.integers(-16, 17, (height, width, 1), dtype=np.int16)
    pink = np.clip(np.array([220, 130, 185], np.int16) + texture, 0, 255).astype(np.uint8)
    purple = np.clip(np.array([120, 70, 160], np.int16) + texture, 0, 255).astype(np.uint8)
    img[tissue & ~dense] = pink[tissue & ~dense]
    img[tissue & dense] = purple[tissue & dense]
    levels = [img]
    while max(levels[-1].shape[:2]) > 1000:
        prev = levels[-1]
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        levels.append(prev[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8))
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, level in enumerate(levels):
            per_cm = 1e4 / (0.5 * 2 ** k)
            options = dict(tile=(256, 256), photometric="rgb", compression="jpeg",
                           resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            if k == 0:
                tw.write(level, subifds=len(levels) - 1, **options)
            else:
                tw.write(level, subfiletype=1, **options)


def build_project(folder: Path) -> Path:
    from atl_desktop.data.decode import load_image
    from atl_desktop.data.tiling import TilingParams, add_slide
    from atl_desktop.jobs import run_job
    from atl_desktop.loop.session import query_job
    from atl_desktop.store import Project
    from atl_desktop.transfer.train import TrainConfig, train_project

    slide = folder / "biopsy-07.tif"
    make_slide(slide)
    path = folder / "slides.atl"
    with Project.create(path) as project:
        tumour = project.add_class("tumour", colour="#D55E00")
        stroma = project.add_class("stroma", colour="#56B4E9")
        report = run_job(add_slide(project, slide, TilingParams(patch=224, downsample=1.0)))
        rng = np.random.default_rng(0)
        for image_id in rng.choice(report.image_ids, 40, replace=False):
            red = np.asarray(load_image(project.image_path(project.image(int(image_id)))))[..., 0].mean()
            project.set_label(int(image_id), tumour if red < 175 else stroma, annotator="expert")
        config = TrainConfig(backbone="smallcnn", epochs=3, batch_size=16, device="cpu", patience=0,
                             augment="hed")
        run_job(train_project(project, config))
        run_job(query_job(project, strategy="entropy", batch=12))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    from atl_desktop.gui.mainwindow import MainWindow
    from atl_desktop.store import Project

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as tmp:
        path = build_project(Path(tmp))
        window = MainWindow(Project.open(path), annotator="expert", settings=None,
                            log_file=Path(tmp) / "atl.log", warm=False)
        window.resize(1320, 860)
        window.show()
        view = window.slide_view
        window.tabs.setCurrentWidget(view)
        until(lambda: view.canvas.data is not None)
        view.overlay_box.setCurrentText("Predicted class")
        wait(500)
        canvas = view.canvas
        k = int(np.argmax(np.nan_to_num(canvas.data.uncertainty, nan=-1.0)))
        canvas.highlight = k
        canvas.update()
        wait(300)
        window.grab().save(str(args.out / "slide_view.png"))
        view.label_patch.emit(canvas.data.patches[k].image_id)  # as a click on the patch does
        grid = window.query_view.grid
        delegate = grid.itemDelegate()
        until(lambda: bool(delegate.insets._images), timeout_ms=20_000)
        wait(800)
        grid.viewport().update()
        wait(300)
        window.grab().save(str(args.out / "slide_query_inset.png"))
        window.close()
    app.quit()


if __name__ == "__main__":
    main()
