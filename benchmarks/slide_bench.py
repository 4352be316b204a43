"""Whole-slide patches: read speed against tiffslide itself, memory while tiling, stain costs.

Generates pyramidal, JPEG-tiled TIFFs of tissue-like blobs on white (20,000 x
20,000 pixels, and smaller ones for the memory curve), then writes
benchmarks/results/slides.json:

  patch_read_ratio        patches/s of ATL's patch read (load_image on a patch reference:
                          the cached reader, the white padding, the PIL image) divided by
                          patches/s of tiffslide's read_region on the same regions, in the
                          same order, in the same run (goal >= 0.8); 224 px at level 0
  dataset_read_ratio      the same through the project dataset (item -> tensor) against
                          read_region + the same tensor conversion
  *_patches_per_second    the rates behind them (the two take turns on chunks of 25 patches,
                          so both see the same swings of a shared machine's load)
  tiling_*                tiling the 20k slide: seconds, grid positions, patches kept
  tiling_memory           per slide size, a fresh process tiles it: the peak of memory
                          allocated while tiling (tracemalloc, numpy included) and the
                          process's peak RSS; flat in slide size, since only a low-resolution
                          image, one read tile and the patch list are held
  tiling_allocated_peak_largest_to_smallest_ratio   the flatness, as one number
  stain_ms_per_patch      time to normalise one 224-px patch (Reinhard, Macenko, Vahadane)
                          and to draw one HED augmentation
  machine, threads        where it ran

Run: python benchmarks/slide_bench.py [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchcommon import machine, write_json

PATCH = 224
TILE = 256


# ---- a generated slide -------------------------------------------------------------------


def _tissue_tile(x0: int, y0: int, h: int, w: int, scale: float, size: int, seed: int) -> np.ndarray:
    """RGB pixels of the region at (x0, y0) of a level `scale` times coarser than level 0.

    Tissue is where a sum of a few smooth waves over level-0 coordinates passes a
    threshold: blobs covering about a third of the slide, with a stain-like texture."""
    ys = (y0 + np.arange(h))[:, None] * scale / size
    xs = (x0 + np.arange(w))[None, :] * scale / size
    field = (np.sin(7.1 * xs + 1.3) * np.cos(5.3 * ys - 0.4) + 0.6 * np.sin(13.7 * xs * ys + 2.0)
             + 0.4 * np.cos(3.1 * (xs - ys)))
    edge = 1.0 - 2.2 * np.maximum(np.abs(xs - 0.5), np.abs(ys - 0.5))  # fades out at the borders
    tissue = (field + edge) > 0.9
    rng = np.random.default_rng([seed, x0, y0, int(scale)])
    texture = rng.integers(-18, 19, (h, w, 1))
    nuclei = np.sin(xs * size / scale * 0.21) * np.sin(ys * size / scale * 0.19) > 0.93
    pink = np.array([214, 122, 178]) + texture
    purple = np.array([104, 62, 150]) + texture // 2
    glass = np.array([244, 243, 246]) + rng.integers(-2, 3, (h, w, 1))
    out = np.where(tissue[..., None], np.where(nuclei[..., None], purple, pink), glass)
    return np.clip(out, 0, 255).astype(np.uint8)


def write_slide(path: Path, size: int, seed: int = 0) -> None:
    """A JPEG-compressed, 256-px tiled pyramid (levels 2x down to under 1,000 px), written tile
    by tile so memory stays small whatever the size; 0.25 microns per pixel, 40x."""
    import tifffile

    levels = max(1, math.ceil(math.log2(size / 1000)) + 1)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for level in range(levels):
            scale = 2 ** level
            side = math.ceil(size / scale)

            def tiles(side=side, scale=scale):
                for ty in range(0, side, TILE):
                    for tx in range(0, side, TILE):
                        h, w = min(TILE, side - ty), min(TILE, side - tx)
                        tile = np.full((TILE, TILE, 3), 244, np.uint8)
                        tile[:h, :w] = _tissue_tile(tx, ty, h, w, scale, size, seed)
                        yield tile

            per_cm = 1e4 / (0.25 * scale)
            options = dict(shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                           compression="jpeg", compressionargs={"level": 90}, resolution=(per_cm, per_cm),
                           resolutionunit="CENTIMETER")
            if level == 0:
                tw.write(tiles(), subifds=levels - 1, **options)
            else:
                tw.write(tiles(), subfiletype=1, **options)


# ---- measurements --------------------------------------------------------------------------


def tile_in_fresh_process(slide: Path, folder: Path) -> dict:
    """Tile `slide` in a new process: the peak of memory allocated while tiling (tracemalloc
    follows numpy's buffers too) and the process's peak resident memory."""
    code = f"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from atl_desktop.data.tiling import TilingParams, add_slide
from atl_desktop.jobs import run_job
from atl_desktop.store import Project
project = Project.create({str(folder / "memory.atl")!r})
tracemalloc.start()
start = time.perf_counter()
report = run_job(add_slide(project, {str(slide)!r}, TilingParams(patch={PATCH})))
seconds = time.perf_counter() - start
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
project.close()
print(json.dumps({{"allocated_peak_mb": peak / 2**20, "seconds": seconds,
                  "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "candidates": report.candidates, "kept": report.kept}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"tiling {slide.name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_rates(refs, slide_path: Path, chunk: int = 25) -> dict:
    """Patches/s of our reads and of tiffslide's on the same regions. The machine is shared
    and its load swings, so the two take turns on small chunks (who goes first alternates),
    and each rate is patches over the summed time of its turns."""
    import tiffslide

    from atl_desktop.data.datasets import ImageDataset, to_tensor
    from atl_desktop.data.decode import load_image
    from atl_desktop.data.slides import SLIDES

    slide = tiffslide.TiffSlide(str(slide_path))
    dataset = ImageDataset(refs)

    def ours(rows):
        for i in rows:
            load_image(refs[i])

    def direct(rows):
        for i in rows:
            r = refs[i]
            slide.read_region((r.x, r.y), r.level, (r.size, r.size))

    def ours_dataset(rows):
        for i in rows:
            dataset[i]

    def direct_dataset(rows):
        for i in rows:
            r = refs[i]
            to_tensor(slide.read_region((r.x, r.y), r.level, (r.size, r.size)))

    pairs = {"": (ours, direct), "_dataset": (ours_dataset, direct_dataset)}
    seconds = {f"{who}{kind}": 0.0 for kind in pairs for who in ("ours", "direct")}
    SLIDES.close()
    for turn, first in enumerate(range(0, len(refs), chunk)):
        rows = range(first, min(first + chunk, len(refs)))
        for kind, (mine, theirs) in pairs.items():
            order = [("ours", mine), ("direct", theirs)]
            for who, fn in order if turn % 2 == 0 else order[::-1]:
                SLIDES._patches.clear()  # every patch comes from the file, never from our cache
                start = time.perf_counter()
                fn(rows)
                seconds[f"{who}{kind}"] += time.perf_counter() - start
    same = all(np.array_equal(np.asarray(load_image(r)),
                              np.asarray(slide.read_region((r.x, r.y), r.level, (r.size, r.size))))
               for r in refs[:50])
    slide.close()
    return {"rates": {k: len(refs) / v for k, v in seconds.items()}, "same_pixels": bool(same)}


def stain_costs(refs, n: int) -> dict:
    from atl_desktop.data.decode import load_image
    from atl_desktop.data.stain import RandomHEDJitter, fit_stain, normalise_stain

    patches = [np.asarray(load_image(r)) for r in refs[:n]]
    reference = patches[0]
    out = {}
    for method in ("reinhard", "macenko", "vahadane"):
        config = fit_stain(method, reference)
        start = time.perf_counter()
        for p in patches:
            normalise_stain(p, config)
        out[method] = 1000 * (time.perf_counter() - start) / len(patches)
    from PIL import Image

    jitter = RandomHEDJitter(0.05)
    images = [Image.fromarray(p) for p in patches]
    start = time.perf_counter()
    for img in images:
        jitter(img)
    out["hed_augmentation"] = 1000 * (time.perf_counter() - start) / len(images)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 6,000-px slide, fewer patches")
    parser.add_argument("--keep", type=Path, help="keep the generated slides in this folder (reused)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from atl_desktop.data.tiling import TilingParams, add_slide
    from atl_desktop.jobs import run_job
    from atl_desktop.store import Project

    big = 6000 if args.quick else 20000
    sizes = (2000, 4000, 6000) if args.quick else (5000, 10000, 20000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = (args.keep or Path(tmp)).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        slides = {}
        for size in sizes:
            path = slides[size] = folder / f"generated-{size}.tif"
            if not path.exists():
                start = time.perf_counter()
                partial = path.with_suffix(".partial")
                write_slide(partial, size)
                partial.rename(path)  # an interrupted run leaves no half-written slide behind
                print(f"wrote {path.name} ({path.stat().st_size / 2**20:.0f} MiB) in "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
        memory = {}
        for size in sizes:
            work = Path(tmp) / f"memory-{size}"
            work.mkdir()
            memory[str(size)] = tile_in_fresh_process(slides[size], work)
        print("tiling memory:", json.dumps(memory), flush=True)

        with Project.create(Path(tmp) / "bench.atl") as project:
            start = time.perf_counter()
            report = run_job(add_slide(project, slides[big], TilingParams(patch=PATCH)))
            tiling_seconds = time.perf_counter() - start
            records = project.images()
            rng = np.random.default_rng(0)
            n = min(len(records), 600 if args.quick else 2000)
            chosen = sorted(rng.choice(len(records), n, replace=False))
            refs = [project.image_path(records[i]) for i in chosen]
            reads = read_rates(refs, slides[big])
            stain = stain_costs(refs, 30 if args.quick else 100)

    rates = reads["rates"]
    peaks = [m["allocated_peak_mb"] for m in memory.values()]
    result = {
        "slide_pixels": f"{big} x {big}",
        "patch_pixels": PATCH,
        "patches_read": len(refs),
        "patch_read_ratio": rates["ours"] / rates["direct"],
        "dataset_read_ratio": rates["ours_dataset"] / rates["direct_dataset"],
        "ours_patches_per_second": rates["ours"],
        "tiffslide_patches_per_second": rates["direct"],
        "ours_dataset_patches_per_second": rates["ours_dataset"],
        "tiffslide_dataset_patches_per_second": rates["direct_dataset"],
        "same_pixels_as_tiffslide": reads["same_pixels"],
        "tiling_seconds": tiling_seconds,
        "tiling_grid_positions": report.candidates,
        "tiling_patches_kept": report.kept,
        "tiling_tissue_fraction": report.tissue_fraction,
        "tiling_memory": memory,
        "tiling_allocated_peak_largest_to_smallest_ratio": max(peaks) / max(min(peaks), 1e-9),
        "stain_ms_per_patch": stain,
        "goal": "patch_read_ratio >= 0.8; tiling memory flat in slide size",
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "quick": args.quick,
    }
    path = write_json("slides.json", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
