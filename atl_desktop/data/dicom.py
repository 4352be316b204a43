"""DICOM images: one 8-bit "L" or "RGB" image per frame, the way a reader's screen shows it.

Which files: names ending in .dcm or .dicom, and files whose name has no suffix
(or an all-digit one, as files named by their UID have) and that carry the
128-byte preamble followed by "DICM". Looking inside is limited to those names so
that a folder scan opens no other file; a DICOM file without a preamble is read
only when its name ends in .dcm or .dicom.

Transfer syntaxes decoded (pydicom with numpy and Pillow, nothing else):
Implicit VR Little Endian, Explicit VR Little Endian, Explicit VR Big Endian,
Deflated Explicit VR Little Endian, RLE Lossless, JPEG Baseline (8-bit), JPEG
Extended (8-bit samples) and JPEG 2000 (lossless and lossy). JPEG Lossless
(Process 14), JPEG-LS and HTJ2K are refused with the reason; installing
pylibjpeg with pylibjpeg-libjpeg (GPL, hence not a dependency) or
pylibjpeg-openjpeg makes pydicom decode them, and this module then reads them too.

Pixels, in the order applied to a frame:
1. Modality LUT: stored values times RescaleSlope plus RescaleIntercept (or the
   Modality LUT Sequence), e.g. Hounsfield units for CT.
2. VOI: the VOI LUT Sequence when present (its first LUT, output scaled by its
   bit depth); else the first window of WindowCenter/WindowWidth, by the LINEAR
   rule of PS3.3 C.11.2.1.2.1 (LINEAR_EXACT and SIGMOID as named):
       y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped to 0..255;
   else the frame's own min..max.
3. MONOCHROME1 (white is low) is inverted: v -> 255 - v.
4. Rounded to 8 bits. RGB is kept, YBR_* is converted to RGB by pydicom,
   PALETTE COLOR is looked up; colour samples of more than 8 bits are scaled down.

The float tensors the models see are made from this windowed 8-bit image, like
every other image: the whole pipeline (thumbnails, augmentations, encoders trained
on 8-bit photographs, embedding caches) works on 8-bit images, and the window the
modality chose is what the clinician labels by. Within the window 256 levels
remain; values outside it are clipped (keeping them would mean a second, float
path through every transform and cache, which is not cheap).

Privacy: nothing from the header but the image's geometry (rows, columns, bits
stored, grey or colour, number of frames) leaves this module; no patient, study
or device tag is returned, so none can reach the project's records, exports or
reports.
"""

from __future__ import annotations

import io
import os
from typing import NamedTuple

import numpy as np
from PIL import Image

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
_MAGIC_AT = 128
_MAGIC = b"DICM"


class DicomInfo(NamedTuple):
    width: int
    height: int
    mode: str  # "L" or "RGB": what a frame becomes
    bit_depth: int  # BitsStored
    frames: int


def has_dicom_name(name: str) -> bool:
    """A name that says DICOM: .dcm or .dicom."""
    return os.path.splitext(name)[1].lower() in DICOM_SUFFIXES


def may_be_dicom_name(name: str) -> bool:
    """A name worth opening to look for the DICM marker: no suffix, or an all-digit one
    (files named by a UID such as 1.2.840.113619.2.55.3.604)."""
    stem, dot, suffix = name.rpartition(".")
    return not (dot and stem.lstrip(".")) or suffix.isdigit()


def has_dicom_magic(data: bytes) -> bool:
    return data[_MAGIC_AT : _MAGIC_AT + 4] == _MAGIC


def sniff_file(path: str) -> bool:
    """Whether the file at `path` starts with a DICOM preamble and "DICM" (reads 132 bytes)."""
    try:
        with open(path, "rb") as f:
            return has_dicom_magic(f.read(_MAGIC_AT + 4))
    except OSError:
        return False


def is_dicom(data: bytes, name: str) -> bool:
    return has_dicom_magic(data) or has_dicom_name(name)


# ---- reading ----------------------------------------------------------------------


def read_dataset(data: bytes, name: str, error: type[Exception]):
    """The parsed header and Pixel Data of `data`; `error(message)` for anything unusable."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise error(f"{name}: reading DICOM needs pydicom (pip install pydicom).") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_dicom_magic(data))
    except InvalidDicomError as exc:
        raise error(f"{name}: not a readable DICOM file ({exc}).") from None
    except Exception as exc:  # pydicom raises many kinds on damaged files: none may stop an import
        raise error(f"{name}: damaged DICOM file ({type(exc).__name__}: {exc}).") from None
    if not any(tag in ds for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
        raise error(f"{name}: a DICOM file without an image (no Pixel Data; a report, a plan or "
                    "a DICOMDIR, for example).")
    syntax = _transfer_syntax(ds)
    if syntax is None:
        raise error(f"{name}: DICOM file without a transfer syntax; cannot tell how its pixels are stored.")
    if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) is None:
        from pydicom.dataset import FileMetaDataset

        # A bare dataset (no meta header): the pixel decoders read the syntax from the meta.
        if getattr(ds, "file_meta", None) is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise error(f"{name}: unsupported DICOM transfer syntax {syntax.name} ({syntax}).") from None
    if not decoder.is_available:
        raise error(f"{name}: DICOM transfer syntax {syntax.name} ({syntax}) cannot be decoded here; "
                    "see README, DICOM, for the plug-ins that decode it.")
    return ds


def _transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if syntax is None and little:
        # No meta header (read with force): pydicom worked out the encoding itself.
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return syntax


def info(ds, name: str, error: type[Exception]) -> DicomInfo:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits = int(ds.BitsStored)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise error(f"{name}: DICOM image attributes missing or invalid ({exc}).") from None
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    colour = samples == 3 or photometric == "PALETTE COLOR"
    if rows < 1 or cols < 1 or frames < 1:
        raise error(f"{name}: DICOM image of {cols} x {rows} pixels and {frames} frames.")
    return DicomInfo(cols, rows, "RGB" if colour else "L", bits, frames)


def frame_image(ds, index: int, name: str, error: type[Exception]) -> Image.Image:
    """Frame `index` (0-based) as an 8-bit "L" or "RGB" image (rules in the module docstring)."""
    from pydicom.pixels import pixel_array

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= index < frames:
        raise error(f"{name}: has {frames} frames; frame {index + 1} does not exist.")
    try:
        pixels = pixel_array(ds, index=index if frames > 1 else None)
    except MemoryError:
        raise error(f"{name}: not enough memory to decode this DICOM image.") from None
    except Exception as exc:  # a decoder plug-in's own errors: the file is damaged or unusual
        raise error(f"{name}: the DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc}).") from None
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    try:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            return _colour(apply_color_lut(pixels, ds), ds)
        if pixels.ndim == 3 and pixels.shape[-1] == 3:
            return _colour(pixels, ds)
        if pixels.ndim != 2:
            raise error(f"{name}: unsupported DICOM pixel layout {pixels.shape} ({photometric}).")
        grey = to_display(pixels, ds)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise error(f"{name}: DICOM pixel transform failed ({type(exc).__name__}: {exc}).") from None
    return Image.fromarray(grey, mode="L")


def to_display(stored: np.ndarray, ds) -> np.ndarray:
    """Stored grey values -> 8-bit display values: modality LUT, VOI, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        from pydicom.pixels import apply_voi

        out_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2]) or 16
        scaled = np.asarray(apply_voi(values, ds, index=0), dtype=np.float64) * (255.0 / (2**out_bits - 1))
    else:
        window = first_window(ds)
        if window is not None:
            scaled = apply_window(values, *window, function=str(ds.get("VOILUTFunction", "LINEAR")).upper())
        else:
            scaled = _min_max(values)
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return out


def first_window(ds) -> tuple[float, float] | None:
    """(centre, width) of the first window; None when absent or unusable (width < 1)."""
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    centre = centre[0] if _is_multi(centre) else centre
    width = width[0] if _is_multi(width) else width
    try:
        centre, width = float(centre), float(width)
    except (TypeError, ValueError):
        return None
    return (centre, width) if width >= 1 and np.isfinite(centre) else None


def _is_multi(value) -> bool:
    return not isinstance(value, (str, bytes, int, float)) and hasattr(value, "__getitem__")


def apply_window(values: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window `values` onto 0..255 (floats, not rounded) by PS3.3 C.11.2.1.2."""
    if function == "LINEAR_EXACT":
        return np.clip((values - centre) / width + 0.5, 0.0, 1.0) * 255.0
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))
    if width == 1:  # the linear rule's limit: a threshold at c - 0.5
        return np.where(values > centre - 0.5, 255.0, 0.0)
    return np.clip(((values - (centre - 0.5)) / (width - 1.0) + 0.5), 0.0, 1.0) * 255.0


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape)
    return (values - low) * (255.0 / (high - low))


def _colour(rgb: np.ndarray, ds) -> Image.Image:
    """RGB samples of any depth -> 8-bit RGB, scaled so that the top of the range stays white."""
    if rgb.dtype != np.uint8:
        palette = str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR"
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) if palette else int(ds.BitsStored)
        top = float(2**bits - 1)
        rgb = np.clip(np.rint(rgb.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
