"""Robust image decoding: every readable file becomes an 8-bit "RGB" or "L" image.

Formats: PNG, JPEG, TIFF (first page), BMP, WebP, GIF (first frame), and
whatever else Pillow reads; DICOM (every frame, by `data.dicom`, whose rules
replace those below for DICOM files). The normalisation rules, in the order applied:

1. Size: the width and height are read from the file header before any pixel
   is decoded; a side longer than `max_side` is refused (such images belong to
   the whole-slide path, which reads them in tiles). Pillow's own
   decompression-bomb guard is left as it is (nothing global is changed); when
   it refuses a file the refusal becomes an `ImageDecodeError` too.
2. Orientation: the EXIF orientation tag is applied, so the pixels are the way
   a photo viewer shows them. Unreadable EXIF is treated as "no rotation".
3. Mode:
   - "1" (bilevel) -> "L" (0 and 255).
   - "I;16", "I;16L", "I;16B", "I;16N" (16-bit unsigned) -> "L" by the full range
     of the type: v8 = round(v16 * 255 / 65535).
   - "I" (32-bit signed integer): Pillow also uses it for 16-bit data, so values
     that all lie in 0..65535 are scaled like 16-bit data; any other range is
     scaled by its min/max like "F".
   - "F" (32-bit float) -> "L" by the image's own min/max:
     v8 = round(255 * (v - min) / (max - min)); NaN counts as min, a constant
     image becomes 0.
   - "CMYK", "YCbCr", "LAB", "HSV" -> "RGB" (Pillow's conversions).
   - Transparency ("RGBA", "RGBa", "LA", "La", "PA", a "P" palette with a
     transparent entry, an "L"/"RGB" image with a tRNS colour) is composited
     over a white background, giving "RGB" (or "L" for grey images).
   - "P" without transparency -> "RGB".
   - "L" and "RGB" are kept.
4. Failures (empty file, truncated data, not an image, no permission, a mode
   with no rule) raise `ImageDecodeError` with the reason. Pillow warnings are
   caught locally and never reach the caller; a warning is turned into an
   `ImageDecodeError` unless it is harmless and named below.

`warnings.catch_warnings` changes process-wide state in Python < 3.14; it is
held for one decode, or, by a caller that checks many small files
(`caught_warnings`), for a short run of decodes that never spans a yield.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from atl_desktop.data import dicom
from atl_desktop.store.files import (
    MAX_READ_BYTES,
    FileTooLargeError,
    NotRegularFileError,
    read_regular,
)
from atl_desktop.store.frames import FrameRef
from atl_desktop.store.slides import PatchRef

T = TypeVar("T")

DEFAULT_MAX_SIDE = 20000
BACKGROUND = 255  # white, for compositing transparent pixels (grey value and each RGB channel)

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_BITS_PER_MODE = {"1": 1, "I": 32, "F": 32, **dict.fromkeys(_SIXTEEN_BIT, 16)}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_BITS_PER_SAMPLE = 258
_HARMLESS_WARNINGS = ("Metadata Warning", "Corrupt EXIF", "Possibly corrupt EXIF")


class ImageDecodeError(ValueError):
    """A file that cannot be turned into an image; the message says which file and why."""


class ImageInfo(NamedTuple):
    """What the header of an image file says, before any pixel is decoded.

    (A named tuple: an import makes one per file, and a tuple is made faster.)
    """

    width: int
    height: int
    mode: str  # Pillow's mode of the file as stored, e.g. "I;16", "CMYK", "P"
    bit_depth: int  # bits per sample in the file
    format: str  # "PNG", "JPEG", ...
    frames: int  # pages or animation frames; only the first is used
    orientation: int  # EXIF orientation (1 = as stored)

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(width, height) after the EXIF orientation is applied."""
        if self.orientation in (5, 6, 7, 8):  # the transposing orientations
            return self.height, self.width
        return self.width, self.height


# ---- entry points --------------------------------------------------------------


def load_image(path: str | os.PathLike, max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """Decode the image at `path` into an 8-bit "RGB" or "L" image (rules in the module docstring).

    `path` may also be a patch of a slide (a `PatchRef`, what the project gives for
    one): its pixels are read from the slide; or a frame of a multi-frame DICOM file
    (a `FrameRef`). DICOM files are decoded by `data.dicom` (rules there).
    """
    if isinstance(path, PatchRef):
        from atl_desktop.data.slides import read_patch

        return read_patch(path)
    if isinstance(path, FrameRef):
        return _decode_dicom(read_file(path.path), str(path), max_side, frame=path.frame)[0]
    return decode_bytes(read_file(path), name=str(path), max_side=max_side)[0]


def probe(path: str | os.PathLike) -> ImageInfo:
    """Read only the header of `path`: size, stored mode, bit depth, format, frames, orientation."""
    data = read_file(path)
    if dicom.is_dicom(data, str(path)):
        return _dicom_info(dicom.read_dataset(data, str(path), ImageDecodeError), str(path))
    return _with_image(data, str(path), lambda img: _info(img, data, _orientation(img)))


inspect = probe  # the name some callers expect


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of `path`, or an `ImageDecodeError` that says why they cannot be read."""
    return read_file_stat(path)[0]


def read_file_stat(path: str | os.PathLike, max_bytes: int = MAX_READ_BYTES) -> tuple[bytes, os.stat_result]:
    """`read_file`, plus the file's stat taken from the open file (size, mtime).

    Only a regular file of at most `max_bytes` is read: a FIFO, a device (a link to
    /dev/zero) or a huge file is refused at once, never waited on or held in memory.
    """
    try:
        data, st = read_regular(path, max_bytes)
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found.") from None
    except PermissionError:
        raise ImageDecodeError(f"{path}: permission denied (the file cannot be read).") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{path}: is a folder, not an image file.") from None
    except (NotRegularFileError, FileTooLargeError) as error:
        raise ImageDecodeError(f"{path}: {error}.") from None
    except OSError as error:
        raise ImageDecodeError(f"{path}: cannot be read ({error.strerror or error}).") from None
    if not data:
        raise ImageDecodeError(f"{path}: the file is empty (0 bytes).")
    return data, st


def decode_bytes(
    data: bytes, *, name: str = "image", max_side: int = DEFAULT_MAX_SIDE
) -> tuple[Image.Image, ImageInfo]:
    """Decode an image file held in memory; returns the normalised image and its header info.

    Lets a caller read a file once, hash the bytes and decode the same bytes.
    """
    if not data:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes).")
    if dicom.is_dicom(data, name):
        return _decode_dicom(data, name, max_side, frame=1)

    def work(img: Image.Image) -> tuple[Image.Image, ImageInfo]:
        info = _checked_load(img, data, name, max_side)
        result = normalise(_apply_orientation(img, info.orientation), name)
        # The opened image is closed after this; hand back an independent one.
        return (img.copy() if result is img else result), info

    return _with_image(data, name, work)


def check_bytes(
    data: bytes, *, name: str = "image", max_side: int = DEFAULT_MAX_SIDE,
    caught: list[warnings.WarningMessage] | None = None,
) -> ImageInfo:
    """Prove that `data` decodes (every pixel, and a normalisation rule for its mode).

    What an import needs: the same checks as `decode_bytes` without keeping the pixels.
    `caught`: the list of a `caught_warnings()` the caller holds around many checks.
    """
    if not data:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes).")
    if dicom.is_dicom(data, name):  # every frame is decoded once, to prove it can be
        ds = dicom.read_dataset(data, name, ImageDecodeError)
        info = _dicom_info(ds, name)
        check_size(info.width, info.height, max_side, name)
        for index in range(info.frames):
            dicom.frame_image(ds, index, name, ImageDecodeError)
        return info

    def work(img: Image.Image) -> ImageInfo:
        info = _checked_load(img, data, name, max_side)
        if img.mode not in ("L", "RGB"):
            normalise(img, name)
        return info

    return _with_image(data, name, work, caught)


@contextmanager
def caught_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Catch warnings for a run of `check_bytes(..., caught=...)` calls.

    Entering `catch_warnings` costs about as much as a tenth of decoding a 28 x 28 PNG,
    so an import enters it once per stretch of files instead of once per file. A decode
    takes its own warnings out of the list; any left at the end did not come from a
    decode and are passed on as if nothing had caught them.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _dicom_info(ds, name: str) -> ImageInfo:
    width, height, mode, bits, frames = dicom.info(ds, name, ImageDecodeError)
    return ImageInfo(width, height, mode, bits, "DICOM", frames, 1)


def _decode_dicom(data: bytes, name: str, max_side: int, frame: int) -> tuple[Image.Image, ImageInfo]:
    """Frame `frame` (from 1) of a DICOM file held in memory, and the file's info."""
    ds = dicom.read_dataset(data, name, ImageDecodeError)
    info = _dicom_info(ds, name)
    check_size(info.width, info.height, max_side, name)
    return dicom.frame_image(ds, frame - 1, name, ImageDecodeError), info


def _checked_load(img: Image.Image, data: bytes, name: str, max_side: int) -> ImageInfo:
    """Size check from the header, then the full decode; the info then has the final orientation."""
    check_size(*img.size, max_side, name)
    _load(img, name)
    return _info(img, data, _orientation(img))


def _load(img: Image.Image, name: str) -> None:
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageDecodeError(f"{name}: the image data is damaged or truncated ({error}).") from None
    except MemoryError:
        raise ImageDecodeError(f"{name}: not enough memory to decode this image.") from None


def check_size(width: int, height: int, max_side: int, name: str = "image") -> None:
    if max(width, height) > max_side:
        raise ImageDecodeError(
            f"{name}: {width} x {height} pixels is larger than {max_side} px on a side. "
            "Images this large are whole-slide images: add them as patches with `atl slide add` "
            "instead, or raise the limit (--max-side)."
        )


def normalise(img: Image.Image, name: str = "image") -> Image.Image:
    """Turn a loaded image of any mode into "RGB" or "L" (rules in the module docstring)."""
    mode = img.mode
    if mode in ("L", "RGB") and "transparency" not in img.info:
        return img
    if mode == "1":
        return img.convert("L")
    if mode in _SIXTEEN_BIT:
        return _scale_sixteen_bit(np.asarray(img))
    if mode == "I":
        values = np.asarray(img)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _scale_sixteen_bit(values)
        return _scale_min_max(values)
    if mode == "F":
        return _scale_min_max(np.asarray(img))
    if mode in _TO_RGB:
        return img.convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        return _composite_on_background(img)
    if mode == "P":
        return img.convert("RGB")
    raise ImageDecodeError(f"{name}: unsupported pixel mode {mode!r}.")


# ---- the pieces ----------------------------------------------------------------


def _with_image(
    data: bytes, name: str, work: Callable[[Image.Image], T],
    caught: list[warnings.WarningMessage] | None = None,
) -> T:
    """Open `data` as an image, run `work` on it and close it, keeping Pillow's warnings inside
    (in `caught`, a caller's `caught_warnings()`, or else its own).

    Harmless warnings are dropped; any other becomes an ImageDecodeError.
    """
    if caught is None:
        with caught_warnings() as caught:
            return _with_image(data, name, work, caught)
    first = len(caught)
    try:
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageDecodeError(f"{name}: not an image file, or a format that cannot be read.") from None
        except Image.DecompressionBombError as error:
            raise ImageDecodeError(
                f"{name}: too many pixels to decode in one piece ({error}). Images this large "
                "are whole-slide images: add them as patches with `atl slide add` instead."
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageDecodeError(f"{name}: damaged image header ({error}).") from None
        try:
            result = work(img)
        finally:
            img.close()
    finally:
        raised = caught[first:]
        del caught[first:]  # this decode's warnings are dealt with here, whatever happened
    for warning in raised:
        # Our max_side rule, checked from the header, governs size; Pillow's lower
        # pixel-count warning adds nothing to it.
        if issubclass(warning.category, Image.DecompressionBombWarning):
            continue
        # Damaged metadata (TIFF tags, EXIF) does not touch the pixels.
        if str(warning.message).startswith(_HARMLESS_WARNINGS):
            continue
        raise ImageDecodeError(f"{name}: {warning.message}")
    return result


def _info(img: Image.Image, data: bytes, orientation: int) -> ImageInfo:
    width, height = img.size
    frames = int(getattr(img, "n_frames", 1))
    # Positional: one per imported file, and keywords cost about a microsecond more.
    return ImageInfo(width, height, img.mode, _bit_depth(img, data), img.format or "", frames, orientation)


def _bit_depth(img: Image.Image, data: bytes) -> int:
    """Bits per sample as stored; Pillow reduces 16-bit colour PNG/TIFF to 8-bit modes."""
    if img.format == "PNG" and data.startswith(_PNG_SIGNATURE) and len(data) > 24:
        return data[24]  # IHDR bit depth: signature, length, "IHDR", width, height, depth
    if img.format == "TIFF":
        bits = getattr(img, "tag_v2", {}).get(_TIFF_BITS_PER_SAMPLE)
        if isinstance(bits, tuple) and bits:
            return int(bits[0])
        if isinstance(bits, int):
            return bits
    return _BITS_PER_MODE.get(img.mode, 8)


def _orientation(img: Image.Image) -> int:
    if img.format != "TIFF" and "exif" not in img.info:
        # TIFF keeps the tag among its own; other formats put EXIF in `info` once read
        # (a PNG may keep it after the pixels: before the decode only EXIF ahead of
        # them is seen, as asking Pillow would decode the whole image to look).
        return 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # damaged EXIF is reported by the rule below
            value = img.getexif().get(0x0112, 1)  # the EXIF Orientation tag
    except Exception:  # any damaged EXIF means "no rotation"
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    if orientation == 1:
        return img
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the orientation was readable; the rest may not be
            return ImageOps.exif_transpose(img)
    except Exception:  # a damaged EXIF block must not lose the image
        return img


def _scale_sixteen_bit(values: np.ndarray) -> Image.Image:
    wide = values.astype(np.uint32)
    return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def _scale_min_max(values: np.ndarray) -> Image.Image:
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return Image.fromarray(np.zeros(values.shape, np.uint8), mode="L")
    low, high = values[finite].min(), values[finite].max()
    values = np.where(finite, values, low)
    if high <= low:
        scaled = np.zeros(values.shape, np.uint8)
    else:
        scaled = np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _composite_on_background(img: Image.Image) -> Image.Image:
    grey = img.mode in ("L", "LA", "La")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (BACKGROUND, BACKGROUND, BACKGROUND, 255))
    flat = Image.alpha_composite(background, rgba).convert("RGB")
    return flat.convert("L") if grey else flat


IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".dib", ".webp", ".gif"}
) | dicom.DICOM_SUFFIXES
