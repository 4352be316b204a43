"""Cutting a slide into a pool of patch references: resolution, grid, tissue detection.

1. Resolution: the patch covers `patch` pixels at the asked resolution, given as
   microns per pixel (when the slide states its own), as a magnification (when
   it states its objective), as a downsample of level 0, or as a pyramid level.
   Pixels are read from the finest level that is not finer than needed and
   resampled to `patch` pixels when the level does not match exactly.
2. Grid: patches step by `patch - overlap` output pixels, left to right, top to
   bottom, and lie wholly inside the slide.
3. Tissue: a low-resolution image of the slide (at most `tissue_side` pixels on
   a side, made by averaging blocks of a pyramid level read in tiles, so memory
   stays flat in the slide's size) gives each pixel's HSV saturation,
   S = (max - min) / max of R, G, B. Stained tissue is coloured, glass and
   background are white or grey, so the Otsu threshold of S (Otsu 1979; with a
   floor, so that an empty slide stays empty) separates them. A patch is kept
   when the area-weighted fraction of tissue under it is at least `min_tissue`.

The pool is written in one transaction at the end: a cancelled tiling leaves
nothing behind, and adding the same slide with the same settings again merges.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from atl_desktop.data.slides import SlideInfo, SlideReader, best_level, fingerprint, open_slide
from atl_desktop.jobs import Progress
from atl_desktop.store import DOMAINS, SPLITS, Project, ProjectError

_READ_TILE = 1024  # level pixels per side of one read while making the tissue image


@dataclass(frozen=True)
class TilingParams:
    """How a slide becomes patches; recorded with the slide."""

    patch: int = 224  # output side in pixels
    mpp: float | None = None  # microns per output pixel
    magnification: float | None = None  # e.g. 20 for "20x"
    downsample: float | None = None  # level-0 pixels per output pixel
    level: int | None = None  # a pyramid level, as it is
    overlap: int = 0  # output pixels shared by neighbouring patches
    min_tissue: float = 0.5  # fraction of a patch that must be tissue (0 keeps everything)
    tissue_side: int = 1024  # longest side of the image tissue is detected on
    min_saturation: float = 0.05  # floor of the tissue threshold, S in [0, 1]

    def __post_init__(self) -> None:
        if self.patch < 8:
            raise ProjectError("Patches must be at least 8 pixels on a side.")
        if not 0 <= self.overlap < self.patch:
            raise ProjectError(f"Overlap must be between 0 and {self.patch - 1} pixels.")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ProjectError("The minimum tissue fraction must be between 0 and 1.")
        given = [n for n in ("mpp", "magnification", "downsample", "level") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ProjectError(f"Give one of mpp, magnification, downsample, level (got {', '.join(given)}).")
        for name in ("mpp", "magnification", "downsample"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ProjectError(f"{name} must be positive.")

    @property
    def stride(self) -> int:
        return self.patch - self.overlap

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Grid:
    level: int  # pyramid level read
    size: int  # side read at that level
    extent: int  # side in level-0 pixels
    stride: float  # step in level-0 pixels
    xs: np.ndarray  # left edges, level-0 pixels
    ys: np.ndarray  # top edges, level-0 pixels


@dataclass
class SlideImportReport:
    slide: str
    slide_id: int | None = None
    level: int = 0
    size: int = 0
    candidates: int = 0  # grid positions inside the slide
    added: int = 0
    duplicates: int = 0
    threshold: float = 0.0  # saturation threshold used (0..1)
    tissue_fraction: float = 0.0  # of the slide's area
    image_ids: list[int] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.added + self.duplicates

    def summary(self) -> str:
        text = (f"{Path(self.slide).name}: {self.kept} of {self.candidates} patches hold enough tissue "
                f"({self.tissue_fraction:.0%} of the slide is tissue); {self.added} added")
        if self.duplicates:
            text += f", {self.duplicates} already in the project"
        return text + f" (level {self.level}, {self.size} px read per patch)."


# ---- resolution and grid --------------------------------------------------------------


def target_downsample(info: SlideInfo, params: TilingParams, name: str = "slide") -> float:
    """Level-0 pixels per output pixel for the asked resolution."""
    if params.level is not None:
        if not 0 <= params.level < len(info.levels):
            raise ProjectError(f"{name} has levels 0 to {len(info.levels) - 1}; level {params.level} does not exist.")
        return info.levels[params.level][2]
    if params.mpp is not None:
        if info.mpp is None:
            raise ProjectError(f"{name} does not state its microns per pixel; give a magnification, "
                               "a downsample or a level instead.")
        return params.mpp / info.mpp
    if params.magnification is not None:
        if info.objective is None:
            raise ProjectError(f"{name} does not state its objective magnification; give microns per "
                               "pixel, a downsample or a level instead.")
        return info.objective / params.magnification
    return params.downsample or 1.0


def make_grid(info: SlideInfo, params: TilingParams, name: str = "slide") -> Grid:
    ds = target_downsample(info, params, name)
    level = params.level if params.level is not None else best_level(info, ds)
    level_ds = info.levels[level][2]
    size = max(1, int(round(params.patch * ds / level_ds)))
    extent = int(round(size * level_ds))
    stride = params.stride * ds
    return Grid(level, size, extent, stride, _starts(info.width, extent, stride),
                _starts(info.height, extent, stride))


def _starts(length: int, extent: int, stride: float) -> np.ndarray:
    if extent > length:
        return np.empty(0, dtype=np.int64)
    count = int(math.floor((length - extent) / stride + 1e-9)) + 1
    return np.rint(np.arange(count) * stride).astype(np.int64)


# ---- tissue ------------------------------------------------------------------------------


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of each pixel, in [0, 1]; black counts as 0."""
    rgb = rgb.astype(np.float32)
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0.0).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the bin edge t maximising the between-class
    variance w0 w1 (mu0 - mu1)^2 of {v < t} and {v >= t}, over a histogram of `bins` bins
    (bin centres stand for their values); ties go to the middle of the tied cuts."""
    hist, edges = np.histogram(np.asarray(values, dtype=np.float64).ravel(), bins=bins, range=(0.0, 1.0))
    total = hist.sum()
    if total == 0:
        return 1.0
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)[:-1]  # class 0 = bins 0..k, threshold at edges[k + 1]
    w1 = total - w0
    s0 = np.cumsum(hist * centres)[:-1]
    mean = (hist * centres).sum()
    valid = (w0 > 0) & (w1 > 0)
    if not valid.any():
        return 1.0
    mu0 = np.where(valid, s0 / np.maximum(w0, 1), 0.0)
    mu1 = np.where(valid, (mean - s0) / np.maximum(w1, 1), 0.0)
    between = np.where(valid, w0 * w1 * (mu0 - mu1) ** 2, -1.0)
    # Between two well-separated modes every cut in the empty gap scores the same:
    # take the middle of those best cuts, not the one hugging the lower mode.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    return float(edges[(best[0] + best[-1]) // 2 + 1])


def low_resolution(reader: SlideReader, max_side: int) -> tuple[np.ndarray, float, float]:
    """The slide as an RGB image of at most about `max_side` pixels on a side, averaged from a
    level read in tiles; returns it and the level-0 pixels per image pixel along x and y."""
    info = reader.info
    wanted = max(info.width, info.height) / max_side
    level = best_level(info, wanted)
    lw, lh, ds = info.levels[level]
    k = max(1, math.ceil(wanted / ds - 1e-9))  # level pixels averaged per image pixel
    out = np.empty((math.ceil(lh / k), math.ceil(lw / k), 3), np.uint8)
    step = k * max(1, _READ_TILE // k)
    for ty in range(0, lh, step):
        for tx in range(0, lw, step):
            h, w = min(step, lh - ty), min(step, lw - tx)
            tile = reader.read(int(round(tx * ds)), int(round(ty * ds)), level, w, h)
            out[ty // k: (ty + h + k - 1) // k, tx // k: (tx + w + k - 1) // k] = _block_mean(tile, k)
    return out, ds * k, ds * k


def _block_mean(tile: np.ndarray, k: int) -> np.ndarray:
    """Mean of k x k blocks; blocks cut by the tile's edge average the pixels they have."""
    if k == 1:
        return tile
    h, w = tile.shape[:2]
    bh, bw = math.ceil(h / k), math.ceil(w / k)
    counts = np.zeros((bh, bw, 1), np.float32)
    # float32 sums are exact here: at most k * k * 255 per block, far below 2**24.
    rows = np.add.reduceat(tile, np.arange(0, h, k), axis=0, dtype=np.float32)
    sums = np.add.reduceat(rows, np.arange(0, w, k), axis=1, dtype=np.float32)
    ny = np.minimum(k, h - np.arange(0, h, k))
    nx = np.minimum(k, w - np.arange(0, w, k))
    counts[..., 0] = ny[:, None] * nx[None, :]
    return np.rint(sums / counts).astype(np.uint8)


def tissue_mask(rgb: np.ndarray, min_saturation: float = 0.05) -> tuple[np.ndarray, float]:
    """(tissue mask, threshold): saturation at or above max(Otsu threshold, floor)."""
    s = saturation(rgb)
    threshold = max(otsu_threshold(s), min_saturation)
    return s >= threshold, threshold


def tissue_fractions(mask: np.ndarray, sx: float, sy: float, xs: np.ndarray, ys: np.ndarray,
                     extent: int) -> np.ndarray:
    """(len(ys), len(xs)) fraction of each square patch covered by tissue, weighting every mask
    pixel by the area it shares with the patch (a mask pixel covers sx x sy level-0 pixels)."""
    m = mask.astype(np.float64)
    out = np.zeros((len(ys), len(xs)))
    col_w = [_overlaps(x / sx, (x + extent) / sx, m.shape[1]) for x in xs]
    for i, y in enumerate(ys):
        r0, weights = _overlaps(y / sy, (y + extent) / sy, m.shape[0])
        row = weights @ m[r0: r0 + len(weights)]
        for j, (c0, cw) in enumerate(col_w):
            out[i, j] = row[c0: c0 + len(cw)] @ cw
    area = (extent / sx) * (extent / sy)
    return np.clip(out / area, 0.0, 1.0)


def _overlaps(a: float, b: float, n: int) -> tuple[int, np.ndarray]:
    """First cell and the length each cell k (covering [k, k + 1)) shares with [a, b)."""
    first = max(0, int(math.floor(a)))
    last = min(n, int(math.ceil(b)))
    cells = np.arange(first, last, dtype=np.float64)
    return first, np.clip(np.minimum(cells + 1, b) - np.maximum(cells, a), 0.0, None)


# ---- the job ---------------------------------------------------------------------------------


def add_slide(
    project: Project,
    path: str | os.PathLike,
    params: TilingParams | None = None,
    *,
    domain: str = "target",
    split: str = "pool",
) -> Generator[Progress, None, SlideImportReport]:
    """Add a slide's tissue patches to the project as references; a job returning a report."""
    params = params or TilingParams()
    if domain not in DOMAINS or split not in SPLITS:
        raise ProjectError(f"Unknown domain or split {domain!r}/{split!r}.")
    path = Path(path).absolute()
    report = SlideImportReport(str(path))
    yield Progress(0, 4, f"opening {path.name}")
    reader = open_slide(path)
    try:
        info = reader.info
        grid = make_grid(info, params, path.name)
        report.level, report.size = grid.level, grid.size
        report.candidates = len(grid.xs) * len(grid.ys)
        yield Progress(1, 4, "finding tissue")
        rgb, sx, sy = low_resolution(reader, params.tissue_side)
    finally:
        reader.close()
    mask, report.threshold = tissue_mask(rgb, params.min_saturation)
    report.tissue_fraction = float(mask.mean()) if mask.size else 0.0
    yield Progress(2, 4, "choosing patches")
    fractions = tissue_fractions(mask, sx, sy, grid.xs, grid.ys, grid.extent)
    keep_y, keep_x = np.nonzero(fractions >= params.min_tissue - 1e-9)
    yield Progress(3, 4, "recording patches")
    st = path.stat()
    key = fingerprint(path)
    with project.transaction():
        slide_id, _ = project.add_slide(
            fingerprint=key, location=project.relative_location(path), original_path=str(path),
            width=info.width, height=info.height, backend=info.backend, levels=info.levels,
            mpp=info.mpp, objective=info.objective, file_size=st.st_size, mtime=st.st_mtime,
        )
        rows = ((grid.level, int(grid.xs[j]), int(grid.ys[i]), grid.size, params.patch,
                 float(fractions[i, j])) for i, j in zip(keep_y, keep_x, strict=True))
        ids, added = project.add_patches(slide_id, rows, domain=domain, split=split)
        project.set_slide_tiling(slide_id, params.to_json())
    report.slide_id, report.image_ids = slide_id, ids
    report.added, report.duplicates = added, len(ids) - added
    yield Progress(4, 4, "done", {"added": added, "candidates": report.candidates})
    return report
