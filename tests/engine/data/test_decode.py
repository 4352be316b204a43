"""Robust decoding: every bad file is refused with a reason, every odd mode normalised by rule."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from atl_desktop.data.decode import (
    ImageDecodeError,
    caught_warnings,
    check_bytes,
    decode_bytes,
    load_image,
    probe,
    read_file,
)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _noise_rgb(shape=(64, 48, 3), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


# ---- bad files -------------------------------------------------------------------


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageDecodeError, match="folder"):
        load_image(tmp_path)


def test_text_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not a picture\n")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(tmp_path, fmt):
    path = _save(_noise_rgb(), tmp_path / f"whole.{fmt.lower()}", format=fmt)
    data = path.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    load_image(path)  # the whole file is fine
    with pytest.raises(ImageDecodeError, match="damaged or truncated"):
        load_image(cut)


def test_unreadable_file(tmp_path):
    path = _save(_noise_rgb(), tmp_path / "locked.png")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running with privileges that read any file (root)")
        with pytest.raises(ImageDecodeError, match="permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_side_limit_checked_from_header_before_decoding(tmp_path):
    # The file has no pixel data: a decode would fail as truncated, so the size
    # error proves the size was refused from the header alone.
    path = tmp_path / "wide.png"
    path.write_bytes(_png_header_only(30000, 2))
    with pytest.raises(ImageDecodeError, match="whole-slide"):
        load_image(path)
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(path, max_side=40000)


def test_small_max_side(tmp_path):
    path = _save(_noise_rgb((120, 80, 3)), tmp_path / "img.png")
    assert load_image(path, max_side=120).size == (80, 120)
    with pytest.raises(ImageDecodeError, match="120 pixels is larger than 100 px"):
        load_image(path, max_side=100)


def test_decompression_bomb_header(tmp_path):
    # 30000 x 30000 = 900 Mpx: over Pillow's own guard, which now speaks our language.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))
    with pytest.raises(ImageDecodeError, match="whole-slide"):
        load_image(path, max_side=100000)
    with pytest.raises(ImageDecodeError, match="whole-slide"):
        load_image(path)


# ---- modes and formats -----------------------------------------------------------


def test_sixteen_bit_png_scaled_by_type_range(tmp_path):
    values = np.array([[0, 1, 128, 129], [257, 32768, 65279, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    info = probe(path)
    assert (info.mode, info.bit_depth, info.format) == ("I;16", 16, "PNG")
    img = load_image(path)
    assert img.mode == "L"
    # round(v * 255 / 65535), worked out by hand: 128 -> 0.498 -> 0, 129 -> 0.502 -> 1,
    # 257 -> 1, 32768 -> 127.502 -> 128, 65279 -> 254.004 -> 254
    expected = np.array([[0, 0, 0, 1], [1, 128, 254, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(img), expected)
    np.testing.assert_array_equal(expected, np.rint(values / 65535 * 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_tiff(tmp_path, mode):
    values = np.linspace(0, 65535, 30, dtype=np.uint16).reshape(5, 6)
    dtype = ">u2" if mode == "I;16B" else "<u2"
    stored = Image.frombytes(mode, (6, 5), values.astype(dtype).tobytes())
    path = _save(stored, tmp_path / "deep.tif")
    info = probe(path)
    assert (info.mode, info.bit_depth) == (mode, 16)
    img = load_image(path)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), np.rint(values / 65535 * 255).astype(np.uint8))


def test_int32_beyond_sixteen_bits_uses_min_max(tmp_path):
    values = np.array([[-100, 0], [100, 100000]], dtype=np.int32)
    path = _save(Image.fromarray(values), tmp_path / "int.tif")
    assert probe(path).mode == "I"
    # (v + 100) * 255 / 100100: 0, 0.2547 -> 0, 0.5095 -> 1, 255
    np.testing.assert_array_equal(np.asarray(load_image(path)), [[0, 0], [1, 255]])


def test_float_scaled_by_min_max(tmp_path):
    values = np.array([[-1.0, 0.0], [0.5, 1.0]], dtype=np.float32)
    path = _save(Image.fromarray(values), tmp_path / "float.tif")
    info = probe(path)
    assert (info.mode, info.bit_depth) == ("F", 32)
    # 255 * (v + 1) / 2: 0, 127.5 -> 128 (half to even), 191.25 -> 191, 255
    np.testing.assert_array_equal(np.asarray(load_image(path)), [[0, 128], [191, 255]])


def test_constant_float_image_is_black(tmp_path):
    path = _save(Image.fromarray(np.full((3, 3), 7.0, np.float32)), tmp_path / "flat.tif")
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.zeros((3, 3), np.uint8))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cyan = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    path = _save(cyan, tmp_path / "cmyk.jpg", quality=95)
    assert probe(path).mode == "CMYK"
    img = load_image(path)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img).reshape(-1, 3).mean(axis=0)
    assert r < 10 and g > 245 and b > 245


def test_rgba_composited_on_white(tmp_path):
    pixels = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    path = _save(Image.fromarray(pixels, "RGBA"), tmp_path / "alpha.png")
    img = load_image(path)
    assert img.mode == "RGB"
    # black at alpha 128 over white: 255 * (1 - 128/255) = 127
    np.testing.assert_array_equal(
        np.asarray(img), [[[255, 255, 255], [255, 0, 0], [127, 127, 127]]]
    )


def test_grey_alpha_composited_on_white(tmp_path):
    pixels = np.array([[[0, 0], [0, 255], [200, 255]]], dtype=np.uint8)
    path = _save(Image.fromarray(pixels, "LA"), tmp_path / "la.png")
    img = load_image(path)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), [[255, 0, 200]])


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    path = _save(img, tmp_path / "pal.png", transparency=bytes([0, 128, 255]))
    with Image.open(path) as stored:
        assert isinstance(stored.info["transparency"], bytes)  # one alpha per palette entry
    out = load_image(path)
    assert out.mode == "RGB"
    # red at alpha 128 over white: green and blue 255 * (1 - 128/255) = 127
    np.testing.assert_array_equal(np.asarray(out), [[[255, 255, 255], [255, 127, 127], [0, 0, 255]]])


def test_palette_without_transparency_becomes_rgb(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    img.putdata([1, 0])
    path = _save(img, tmp_path / "pal.bmp")
    np.testing.assert_array_equal(np.asarray(load_image(path)), [[[40, 50, 60], [10, 20, 30]]])


def test_bilevel_becomes_grey(tmp_path):
    img = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    path = _save(img, tmp_path / "bits.png")
    assert probe(path).bit_depth == 1
    out = load_image(path)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), [[0, 255], [255, 0]])


def test_multipage_tiff_first_page(tmp_path):
    pages = [Image.new("L", (8, 8), 10), Image.new("L", (8, 8), 200), Image.new("L", (8, 8), 90)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert probe(path).frames == 3
    assert np.asarray(load_image(path)).max() == 10


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert probe(path).frames == 2
    np.testing.assert_array_equal(np.asarray(load_image(path))[0, 0], [255, 0, 0])


def test_exif_orientation_applied(tmp_path):
    # Stored 40 wide x 20 high: left half black, right half white. Orientation 6
    # means "rotate 90 degrees clockwise to view": the left half ends on top.
    pixels = np.full((20, 40), 255, np.uint8)
    pixels[:, :20] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(pixels).convert("RGB"), tmp_path / "rot.jpg", exif=exif, quality=95)
    info = probe(path)
    assert (info.width, info.height, info.orientation) == (40, 20, 6)
    assert info.oriented_size == (20, 40)
    img = load_image(path)
    assert img.size == (20, 40)
    grey = np.asarray(img.convert("L")).astype(int)
    assert grey[:18].mean() < 20 and grey[22:].mean() > 235


@pytest.mark.parametrize(
    ("fmt", "suffix", "kwargs"),
    [("PNG", ".png", {}), ("BMP", ".bmp", {}), ("WEBP", ".webp", {"lossless": True}),
     ("TIFF", ".tif", {})],
)
def test_lossless_formats_round_trip(tmp_path, fmt, suffix, kwargs):
    img = _noise_rgb((12, 10, 3), seed=3)
    path = _save(img, tmp_path / f"x{suffix}", format=fmt, **kwargs)
    out = load_image(path)
    assert out.mode == "RGB" and probe(path).format == fmt
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_grey_and_rgb_kept(tmp_path):
    grey = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4))
    path = _save(grey, tmp_path / "g.png")
    out = load_image(path)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(grey))


def test_decode_bytes_matches_load_image(tmp_path):
    path = _save(_noise_rgb(seed=5), tmp_path / "a.jpg", quality=90)
    img, info = decode_bytes(path.read_bytes(), name="a.jpg")
    assert (info.width, info.height, info.mode, info.bit_depth) == (48, 64, "RGB", 8)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(load_image(path)))


def test_permission_error_reported_even_as_root(tmp_path, monkeypatch):
    # The chmod test above is skipped under root; this one simulates what the OS says.
    path = _save(_noise_rgb(), tmp_path / "p.png")

    real_open = os.open

    def refuse(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ImageDecodeError, match="permission denied"):
        load_image(path)


def test_read_file_reads_to_the_end_of_a_file_that_grew_after_fstat(tmp_path, monkeypatch):
    path = tmp_path / "growing.bin"
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one read after the first
    path.write_bytes(data)
    real_fstat = os.fstat

    def stale_fstat(fd):  # the size the file had when it was opened
        fields = list(real_fstat(fd)[:10])
        fields[6] = 100  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", stale_fstat)
    assert read_file(path) == data


def test_warnings_of_many_checks_under_one_catch_stay_with_their_file(monkeypatch):
    real_load = ImageFile.ImageFile.load

    def load(self):  # Pillow finding something odd in 3-pixel-wide files only
        if self.width == 3:
            warnings.warn("odd chunk in this file", UserWarning, stacklevel=2)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    good, odd = _png_bytes(4, 2), _png_bytes(3, 2)
    with pytest.raises(ImageDecodeError, match="odd.png: odd chunk"):
        check_bytes(odd, name="odd.png")  # its own catch
    with pytest.warns(UserWarning, match="not from a decode"):
        with caught_warnings() as caught:
            assert check_bytes(good, caught=caught).width == 4
            with pytest.raises(ImageDecodeError, match="odd.png: odd chunk"):
                check_bytes(odd, name="odd.png", caught=caught)
            assert check_bytes(good, caught=caught).width == 4  # the warning went with its file
            warnings.warn("not from a decode", UserWarning, stacklevel=1)  # passed on when the catch ends
            assert [str(w.message) for w in caught] == ["not from a decode"]


def test_probe_reads_the_header_only(tmp_path):
    path = tmp_path / "header.png"
    path.write_bytes(_png_header_only(30000, 2))  # no pixels: decoding would fail
    info = probe(path)
    assert (info.width, info.height, info.mode, info.bit_depth, info.frames) == (30000, 2, "L", 8, 1)
