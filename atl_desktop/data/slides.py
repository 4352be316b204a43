"""Reading whole slides and other large images in regions, never whole.

Backends, chosen by the file's type:

- tiffslide (pure Python, the `slides` extra): pyramidal TIFF, Aperio SVS,
  and the other TIFF-based formats it knows (NDPI, SCN, BIF, generic tiled TIFF).
- OpenSlide (`openslide-python` and `openslide-bin`, optional): the vendor
  formats that are not TIFF (MIRAX .mrxs, Hamamatsu .vms/.vmu, .svslide), and
  the TIFF-based ones too when it is installed.
- Pillow: plain PNG, JPEG, BMP, WebP (and TIFF when tiffslide is absent). Such a
  file has no pyramid and no random access, so it is decoded once, kept while
  it is open, and read in regions from memory; Pillow's own pixel limit applies.

Every read returns 8-bit RGB as a numpy array; pixels outside the slide, and
transparent pixels, are white. A reader serialises its own reads (one lock
each), so worker threads may share it. `SlideCache` keeps a few slides open
and the last patches read, per process.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from atl_desktop.data.decode import ImageDecodeError, normalise
from atl_desktop.store.slides import PatchRef

WHITE = 255
TIFFSLIDE_SUFFIXES = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".svslide"})
OPENSLIDE_ONLY_SUFFIXES = frozenset({".mrxs", ".vms", ".vmu"})
PLAIN_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".webp"})
SLIDE_SUFFIXES = TIFFSLIDE_SUFFIXES | OPENSLIDE_ONLY_SUFFIXES | PLAIN_SUFFIXES
INSTALL_SLIDES = "pip install 'atl-desktop[slides]'"
INSTALL_OPENSLIDE = "pip install openslide-python openslide-bin"
_FINGERPRINT_BYTES = 1 << 20


class SlideError(ImageDecodeError):
    """A slide that cannot be opened or read; the message says which and why (and what to install)."""


class ReaderClosed(SlideError):
    """A read on a reader the cache has closed meanwhile (the cache then reopens the slide)."""


@dataclass(frozen=True)
class SlideInfo:
    width: int
    height: int
    levels: tuple[tuple[int, int, float], ...]  # (width, height, downsample) from level 0 down
    mpp: float | None  # microns per level-0 pixel, when the file states it
    objective: float | None  # scanning magnification, when the file states it
    backend: str


class SlideReader:
    """An open slide: region reads at any level, in level-0 coordinates."""

    backend = ""

    def __init__(self, path: Path):
        self.path = path
        self.closed = False
        self._lock = threading.Lock()

    @property
    def info(self) -> SlideInfo:
        raise NotImplementedError

    def read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB from the square whose top-left is level-0 pixel (x, y)."""
        info = self.info
        lw, lh, ds = info.levels[level]
        out = np.full((height, width, 3), WHITE, np.uint8)
        # The part of the request inside the level, in level pixels.
        lx, ly = int(np.floor(x / ds)), int(np.floor(y / ds))
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + width, lw), min(ly + height, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        with self._lock:
            if self.closed:
                raise ReaderClosed(f"{self.path}: the slide was closed.")
            region = self._read(int(round(x0 * ds)), int(round(y0 * ds)), level, x1 - x0, y1 - y0)
        out[y0 - ly: y1 - ly, x0 - lx: x1 - lx] = region
        return out

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Close the file; waits for a read in progress (another thread may be in one)."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._close()

    def _close(self) -> None:
        pass


def _flatten(region: np.ndarray) -> np.ndarray:
    """RGB(A) of any integer type -> uint8 RGB, transparent pixels white."""
    if region.ndim == 2:
        region = np.repeat(region[..., None], 3, axis=2)
    if region.dtype != np.uint8:
        region = np.clip(region, 0, 255).astype(np.uint8)
    if region.shape[2] == 4:
        alpha = region[..., 3:4].astype(np.uint16)
        rgb = region[..., :3].astype(np.uint16)
        region = ((rgb * alpha + WHITE * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(region[..., :3])


class TiffSlideReader(SlideReader):
    backend = "tiffslide"

    def __init__(self, path: Path):
        super().__init__(path)
        import tiffslide

        try:
            self._slide = tiffslide.TiffSlide(str(path))
            props = self._slide.properties
            self._info = SlideInfo(
                *self._slide.dimensions,
                tuple((w, h, float(d)) for (w, h), d in
                      zip(self._slide.level_dimensions, self._slide.level_downsamples, strict=True)),
                _positive(props.get("tiffslide.mpp-x")), _positive(props.get("tiffslide.objective-power")),
                self.backend,
            )
        except Exception as error:  # tifffile raises many kinds for damaged files
            raise SlideError(f"{path}: not a slide tiffslide can read ({error or type(error).__name__}).") from None

    @property
    def info(self) -> SlideInfo:
        return self._info

    def _read(self, x, y, level, width, height):
        return _flatten(np.asarray(self._slide.read_region((x, y), level, (width, height), as_array=True)))

    def _close(self) -> None:
        self._slide.close()


class OpenSlideReader(SlideReader):
    backend = "openslide"

    def __init__(self, path: Path):
        super().__init__(path)
        import openslide

        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as error:
            raise SlideError(f"{path}: not a slide OpenSlide can read ({error}).") from None
        props = self._slide.properties
        self._info = SlideInfo(
            *self._slide.dimensions,
            tuple((w, h, float(d)) for (w, h), d in
                  zip(self._slide.level_dimensions, self._slide.level_downsamples, strict=True)),
            _positive(props.get(openslide.PROPERTY_NAME_MPP_X)),
            _positive(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
            self.backend,
        )

    @property
    def info(self) -> SlideInfo:
        return self._info

    def _read(self, x, y, level, width, height):
        return _flatten(np.asarray(self._slide.read_region((x, y), level, (width, height))))

    def _close(self) -> None:
        self._slide.close()


class PlainImageReader(SlideReader):
    """A plain image file, decoded once: one level, no stated resolution."""

    backend = "pillow"

    def __init__(self, path: Path):
        super().__init__(path)
        with warnings.catch_warnings():
            # Large plain images are the point here; Pillow's hard limit still refuses bombs.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                with Image.open(path) as img:
                    img.load()
                    img = normalise(img, str(path))
                    self._pixels = np.asarray(img.convert("RGB"))
            except Image.DecompressionBombError as error:
                raise SlideError(
                    f"{path}: too many pixels for a plain image ({error}). Save it as a tiled, "
                    "pyramidal TIFF (for example `vips tiffsave IN OUT.tif --tile --pyramid "
                    "--compression jpeg`) and add that."
                ) from None
            except (OSError, ValueError, SyntaxError) as error:
                raise SlideError(f"{path}: cannot be read as an image ({error}).") from None
        h, w = self._pixels.shape[:2]
        self._info = SlideInfo(w, h, ((w, h, 1.0),), None, None, self.backend)

    @property
    def info(self) -> SlideInfo:
        return self._info

    def _read(self, x, y, level, width, height):
        return self._pixels[y: y + height, x: x + width]

    def _close(self) -> None:
        self._pixels = None


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def backend_for(path: Path) -> str:
    """The backend that will read `path`, or a SlideError saying what to install."""
    suffix = path.suffix.lower()
    if suffix in PLAIN_SUFFIXES:
        return "pillow"
    if suffix in OPENSLIDE_ONLY_SUFFIXES:
        if not _has("openslide"):
            raise SlideError(f"{path.name}: {suffix} slides are read with OpenSlide; install it "
                             f"with `{INSTALL_OPENSLIDE}`.")
        return "openslide"
    if suffix in TIFFSLIDE_SUFFIXES:
        if suffix not in (".tif", ".tiff") and _has("openslide"):
            return "openslide"
        if _has("tiffslide"):
            return "tiffslide"
        if suffix in (".tif", ".tiff"):
            return "pillow"  # a plain TIFF still opens, decoded whole
        raise SlideError(f"{path.name}: reading {suffix} slides needs the slides extra: "
                         f"`{INSTALL_SLIDES}`.")
    raise SlideError(f"{path.name}: not a slide or image type ATL Desktop reads "
                     f"({', '.join(sorted(SLIDE_SUFFIXES))}).")


def open_slide(path: str | os.PathLike) -> SlideReader:
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: slide file not found.")
    if not path.is_file():
        raise SlideError(f"{path}: not a file.")
    backend = backend_for(path)
    reader = {"tiffslide": TiffSlideReader, "openslide": OpenSlideReader,
              "pillow": PlainImageReader}[backend]
    try:
        return reader(path)
    except PermissionError:
        raise SlideError(f"{path}: permission denied (the file cannot be read).") from None


def fingerprint(path: str | os.PathLike) -> str:
    """A key for a slide file: sha256 of its size, first and last MiB (hashing gigabytes would be slow)."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    digest.update(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if size > 2 * _FINGERPRINT_BYTES:
            f.seek(size - _FINGERPRINT_BYTES)
            digest.update(f.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()


class SlideCache:
    """A few open slides and the last patches read, for one process.

    After a fork (DataLoader workers) the child starts with an empty cache, so
    file handles are never shared between processes.
    """

    def __init__(self, max_open: int = 8, max_patches: int = 256):
        self.max_open = max_open
        self.max_patches = max_patches
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._open: OrderedDict[str, SlideReader] = OrderedDict()
        self._patches: OrderedDict[PatchRef, np.ndarray] = OrderedDict()

    def reader(self, path: str | os.PathLike) -> SlideReader:
        key = os.fspath(path)
        with self._lock:
            if self._pid != os.getpid():
                self._reset()
            reader = self._open.get(key)
            if reader is not None:
                self._open.move_to_end(key)
                return reader
        reader = open_slide(key)  # outside the lock: opening may take a while
        with self._lock:
            if key in self._open:  # another thread opened it meanwhile: keep one
                reader.close()
                return self._open[key]
            self._open[key] = reader
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)[1].close()
        return reader

    def read(self, path: str | os.PathLike, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """`SlideReader.read` on the cached reader of `path`; if another thread's eviction
        closed that reader meanwhile, once more on a fresh one."""
        try:
            return self.reader(path).read(x, y, level, width, height)
        except ReaderClosed:
            with self._lock:
                reader = self._open.get(os.fspath(path))
                if reader is not None and reader.closed:
                    del self._open[os.fspath(path)]
            return self.reader(path).read(x, y, level, width, height)

    def info(self, path: str | os.PathLike) -> SlideInfo:
        return self.reader(path).info

    def patch(self, ref: PatchRef) -> np.ndarray:
        """The patch's pixels, (out_size, out_size, 3) uint8 (read-only; copy to change)."""
        with self._lock:
            if self._pid == os.getpid() and ref in self._patches:
                self._patches.move_to_end(ref)
                return self._patches[ref]
        pixels = resize(self.read(ref.slide, ref.x, ref.y, ref.level, ref.size, ref.size), ref.out_size)
        pixels.setflags(write=False)
        with self._lock:
            self._patches[ref] = pixels
            while len(self._patches) > self.max_patches:
                self._patches.popitem(last=False)
        return pixels

    def forget(self, path: str | os.PathLike) -> None:
        """Close a slide (after it was moved or replaced)."""
        with self._lock:
            reader = self._open.pop(os.fspath(path), None)
            self._patches = OrderedDict((k, v) for k, v in self._patches.items()
                                        if os.fspath(k.slide) != os.fspath(path))
        if reader is not None:
            reader.close()

    def close(self) -> None:
        with self._lock:
            for reader in self._open.values():
                reader.close()
            self._reset()


def resize(pixels: np.ndarray, side: int) -> np.ndarray:
    """A square region resampled to side x side (area-averaged when shrinking)."""
    if pixels.shape[0] == side and pixels.shape[1] == side:
        return pixels
    img = Image.fromarray(pixels)
    smaller = side < pixels.shape[0]
    method = Image.Resampling.BOX if smaller else Image.Resampling.BILINEAR
    return np.asarray(img.resize((side, side), method))


# One cache per process, like the open-file table it stands for.
SLIDES = SlideCache()


def read_patch(ref: PatchRef) -> Image.Image:
    """The patch as an RGB image (what `load_image` gives for a patch reference)."""
    if not ref.slide.exists():
        raise SlideError(f"{ref.slide}: slide file not found (moved or deleted? `atl slide relocate` "
                         "points the project at its new place).")
    try:
        return Image.fromarray(SLIDES.patch(ref))
    except SlideError:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        raise SlideError(f"{ref.slide}: cannot read the patch at ({ref.x}, {ref.y}) ({error}).") from None


def read_context(ref: PatchRef, factor: float, side: int) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The patch with its surroundings: a square `factor` times the patch's side around its
    centre, as a side x side image, and where the patch lies in it (x0, y0, x1, y1 as fractions)."""
    extent = ref.extent * factor
    cx, cy = ref.x + ref.extent / 2, ref.y + ref.extent / 2
    info = SLIDES.info(ref.slide)
    level = best_level(info, extent / side)
    ds = info.levels[level][2]
    n = max(1, int(round(extent / ds)))
    x0, y0 = int(round(cx - extent / 2)), int(round(cy - extent / 2))
    pixels = resize(SLIDES.read(ref.slide, x0, y0, level, n, n), side)
    lo = (factor - 1) / (2 * factor)
    return Image.fromarray(pixels), (lo, lo, 1 - lo, 1 - lo)


def best_level(info: SlideInfo, downsample: float) -> int:
    """The coarsest level that is still at least as fine as `downsample` (level-0 pixels per pixel)."""
    chosen = 0
    for level, (_w, _h, ds) in enumerate(info.levels):
        if ds <= downsample * (1 + 1e-6):
            chosen = level
    return chosen


def read_jittered(ref: PatchRef, rng: np.random.Generator, min_scale: float = 0.6,
                  shift: float = 0.25) -> Image.Image:
    """One augmented patch around a patch's location (AIFT, Zhou et al. 2017: a candidate is
    a location, its patches are crops around it): side u times the patch's, u ~ U(min_scale,
    2 - min_scale), centre moved by up to `shift` of the side in x and y, mirrored with
    probability 1/2, read from the slide (so it may take in tissue beyond the patch) and
    resampled to the patch's output size."""
    u = rng.uniform(min_scale, 2.0 - min_scale)
    dx, dy = rng.uniform(-shift, shift, 2) * ref.extent
    mirror = rng.random() < 0.5
    extent = ref.extent * u
    cx, cy = ref.x + ref.extent / 2 + dx, ref.y + ref.extent / 2 + dy
    info = SLIDES.info(ref.slide)
    level = best_level(info, extent / ref.out_size)
    n = max(1, int(round(extent / info.levels[level][2])))
    pixels = resize(SLIDES.read(ref.slide, int(round(cx - extent / 2)), int(round(cy - extent / 2)),
                                level, n, n), ref.out_size)
    return Image.fromarray(pixels[:, ::-1] if mirror else pixels)
