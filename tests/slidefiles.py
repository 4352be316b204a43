"""Small pyramidal TIFFs made in the test: tissue-like blocks and blobs on a white background."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BACKGROUND = (242, 240, 243)
TISSUE = (200, 80, 160)  # saturation (200 - 80) / 200 = 0.6


def block_mean(img: np.ndarray, k: int) -> np.ndarray:
    h, w = img.shape[0] // k * k, img.shape[1] // k * k
    blocks = img[:h, :w].reshape(h // k, k, w // k, k, 3).astype(np.float64)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def tissue_image(width: int = 1024, height: int = 768, seed: int = 0) -> np.ndarray:
    """A 'slide': a tissue block on [256, 640) x [128, 512), a 40 x 40 blob at (704, 576),
    textured (saturation stays well above the background's), on near-white noisy glass."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = np.asarray(BACKGROUND, np.int16) + rng.integers(-3, 4, (height, width, 1))
    tissue = np.asarray(TISSUE, np.int16)
    block = tissue + rng.integers(-12, 13, (384, 384, 1))
    img[128:512, 256:640] = np.clip(block, 0, 255)
    img[576:616, 704:744] = tissue
    return img


def write_pyramid(path: Path, img: np.ndarray, *, levels: int = 3, mpp: float | None = 0.5,
                  tile: int = 128, compression: str | None = "zlib") -> list[np.ndarray]:
    """A tiled pyramidal TIFF with levels downsampled 2x each by block means; returns the levels."""
    import tifffile

    pyramid = [img]
    for _ in range(levels - 1):
        pyramid.append(block_mean(pyramid[-1], 2))
    options = dict(tile=(tile, tile), photometric="rgb", compression=compression)
    with tifffile.TiffWriter(path) as tw:
        for k, level in enumerate(pyramid):
            extra = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2 ** k)
                extra = dict(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            if k == 0:
                tw.write(level, subifds=levels - 1, **options, **extra)
            else:
                tw.write(level, subfiletype=1, **options, **extra)
    return pyramid
