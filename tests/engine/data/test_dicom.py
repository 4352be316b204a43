"""DICOM import: pixel rules worked by hand, frames as images, bad files skipped, no patient tag kept."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from atl_desktop.cli import main  # noqa: E402
from atl_desktop.data.datasets import ImageDataset  # noqa: E402
from atl_desktop.data.decode import ImageDecodeError, load_image  # noqa: E402
from atl_desktop.data.dicom import apply_window  # noqa: E402
from atl_desktop.data.export import export_csv, export_imagefolder, export_json  # noqa: E402
from atl_desktop.data.importers import ImportOptions, detect_format, import_source  # noqa: E402
from atl_desktop.jobs import run_job  # noqa: E402
from atl_desktop.store import FrameRef, Project  # noqa: E402

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-31415", "PatientBirthDate": "19700101",
           "InstitutionName": "St Elsewhere", "ReferringPhysicianName": "House^Greg",
           "AccessionNumber": "ACC-2718"}
SHIPPED = Path(pydicom.__file__).parent / "data" / "test_files"  # in the wheel: never downloaded


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int | None = None,
                frames: int | None = None, syntax=ExplicitVRLittleEndian, preamble: bool = True,
                pixel_data: bytes | None = None, **tags) -> Path:
    """A DICOM file holding `pixels` (rows, cols[, 3], or frames first), with patient tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    for key, value in {**PATIENT, "Modality": "CR", "SOPClassUID": SecondaryCaptureImageStorage,
                       "SOPInstanceUID": meta.MediaStorageSOPInstanceUID}.items():
        setattr(ds, key, value)
    colour = photometric in ("RGB", "YBR_FULL")
    shape = pixels.shape[1:] if frames else pixels.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    allocated = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits or allocated, (bits or allocated) - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixel_data if pixel_data is not None else pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    if pixel_data is not None:
        ds["PixelData"].VR = "OB"
    private = not pydicom.uid.UID(syntax).is_transfer_syntax  # pydicom must be told the encoding
    ds.save_as(path, enforce_file_format=preamble,
               **({"implicit_vr": False, "little_endian": True} if private else {}))
    return path


def grey(img) -> np.ndarray:
    assert img.mode == "L"
    return np.asarray(img)


# ---- pixel rules, by hand ----------------------------------------------------------------


def test_sixteen_bit_rescale_then_first_window(tmp_path):
    # stored -> x = 2 * stored - 1024 -> 0, 500, 1500, 3000; window (1000.5, 2001):
    # y = ((x - 1000) / 2000 + 0.5) * 255 -> -0.01*255 clipped to 0, 63.75, 191.25, 1.5 -> 255
    stored = np.array([[512, 762], [1262, 2012]], np.uint16)
    path = write_dicom(tmp_path / "ct.dcm", stored, bits=12, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=[1000.5, 40], WindowWidth=[2001, 400])
    assert grey(load_image(path)).tolist() == [[0, 64], [191, 255]]


def test_monochrome1_is_inverted_after_min_max(tmp_path):
    # no window: min..max (0..4095) -> 0, 63.7, 127.47, 255 -> 0, 64, 127, 255; then 255 - v
    stored = np.array([[0, 1023], [2047, 4095]], np.uint16)
    path = write_dicom(tmp_path / "cr.dcm", stored, bits=12, photometric="MONOCHROME1")
    assert grey(load_image(path)).tolist() == [[255, 191], [128, 0]]


def test_signed_values_and_linear_exact_and_sigmoid():
    values = np.array([-100.0, 0.0, 50.0, 100.0])
    # LINEAR_EXACT, c = 0, w = 200: (x / 200 + 0.5) * 255 -> 0, 127.5, 191.25, 255
    assert apply_window(values, 0, 200, "LINEAR_EXACT").tolist() == [0.0, 127.5, 191.25, 255.0]
    # SIGMOID at the centre is half way
    assert apply_window(np.array([0.0]), 0, 200, "SIGMOID").tolist() == [127.5]


def test_eight_bit_rgb_is_kept(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], np.uint8)
    img = load_image(write_dicom(tmp_path / "photo.dcm", rgb, photometric="RGB"))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), rgb)


def test_window_of_eight_bit_identity(tmp_path):
    # c = 128, w = 256: y = ((x - 127.5) / 255 + 0.5) * 255 = x
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = write_dicom(tmp_path / "ramp.dcm", pixels, WindowCenter=128, WindowWidth=256)
    assert np.array_equal(grey(load_image(path)), pixels)


# ---- import: frames, odd names, bad files ------------------------------------------------


def cine(path: Path) -> Path:
    """Three 8-bit frames: frame k (from 1) holds 40 k + (0..15), shown as stored (identity window)."""
    frames = np.stack([40 * k + np.arange(16, dtype=np.uint8).reshape(4, 4) for k in (1, 2, 3)])
    return write_dicom(path, frames, frames=3, WindowCenter=128, WindowWidth=256)


def test_multiframe_file_gives_one_image_per_frame_read_through_load_image(tmp_path):
    (tmp_path / "scans").mkdir()
    cine(tmp_path / "scans" / "cine.dcm")
    project = Project.create(tmp_path / "p.atl")
    report = run_job(import_source(project, tmp_path / "scans"))
    assert (report.added, report.skipped) == (3, [])
    records = project.images()
    assert [r.location for r in records] == [f"scans/cine.dcm#frame={k}" for k in (1, 2, 3)]
    assert {(r.width, r.height, r.mode, r.bit_depth) for r in records} == {(4, 4, "L", 8)}
    for k, record in enumerate(records, 1):
        where = project.image_path(record)
        assert where == FrameRef(tmp_path / "scans" / "cine.dcm", k)
        assert grey(load_image(where))[0].tolist() == [40 * k, 40 * k + 1, 40 * k + 2, 40 * k + 3]
    # the training and scoring datasets read the same frames
    dataset = ImageDataset([project.image_path(r) for r in records])
    x, _ = dataset[2]
    assert x.shape == (1, 4, 4) and float(x[0, 0, 0]) == pytest.approx(120 / 255)
    assert project.check_files() == {"missing": [], "changed": []}
    again = run_job(import_source(project, tmp_path / "scans"))
    assert (again.added, again.duplicates) == (0, 3)
    with pytest.raises(ImageDecodeError, match="frame 4 does not exist"):
        load_image(FrameRef(tmp_path / "scans" / "cine.dcm", 4))


def test_copied_multiframe_file_keeps_its_frames(tmp_path):
    cine(tmp_path / "cine.dcm")
    project = Project.create(tmp_path / "p.atl")
    run_job(import_source(project, tmp_path / "cine.dcm", ImportOptions(copy=True)))
    record = project.images()[1]
    assert record.stored == "media" and record.location.endswith(".dcm#frame=2")
    assert grey(load_image(project.image_path(record)))[0, 0] == 80


def test_csv_rows_naming_dicom_files_label_every_frame(tmp_path):
    cine(tmp_path / "cine.dcm")
    write_dicom(tmp_path / "one.dcm", np.full((4, 4), 7, np.uint8))
    (tmp_path / "labels.csv").write_text("path,label\ncine.dcm,heart\none.dcm,lung\n")
    project = Project.create(tmp_path / "p.atl")
    report = run_job(import_source(project, tmp_path / "labels.csv"))
    assert (report.added, report.labelled) == (4, 4)
    names = {c.id: c.name for c in project.classes()}
    assert sorted(names[c] for c in project.current_labels().values()) == ["heart"] * 3 + ["lung"]


def test_unnamed_dicom_found_by_its_preamble(tmp_path):
    folder = tmp_path / "cd"
    folder.mkdir()
    write_dicom(folder / "IM000001", np.full((4, 4), 9, np.uint8))
    write_dicom(folder / "1.2.840.10008.1", np.full((4, 4), 10, np.uint8))
    (folder / "README").write_text("not DICOM")
    write_dicom(folder / "nopreamble", np.full((4, 4), 11, np.uint8), preamble=False)
    assert detect_format(folder / "IM000001") == "folder"
    project = Project.create(tmp_path / "p.atl")
    report = run_job(import_source(project, folder))
    assert report.added == 2
    # without a preamble only a .dcm/.dicom name says DICOM; such files are left alone
    assert sorted(Path(p).name for p, _ in report.skipped) == ["README", "nopreamble"]


def test_bare_dataset_named_dcm_is_read(tmp_path):
    # no preamble and no meta header (as old archives hold them): the .dcm name says DICOM
    ds = pydicom.dcmread(write_dicom(tmp_path / "with_meta.dcm", np.arange(16, dtype=np.uint8).reshape(4, 4),
                                     WindowCenter=128, WindowWidth=256))
    ds.file_meta, ds.preamble = FileMetaDataset(), None
    ds.save_as(tmp_path / "bare.dcm", implicit_vr=True, little_endian=True)
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    assert grey(load_image(tmp_path / "bare.dcm")).ravel().tolist() == list(range(16))


def test_dicom_without_pixels_and_unsupported_syntaxes_are_skipped_with_the_reason(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_dicom(folder / "good.dcm", np.full((4, 4), 3, np.uint8))
    nopix = write_dicom(folder / "report.dcm", np.zeros((4, 4), np.uint8))
    ds = pydicom.dcmread(nopix)
    del ds.PixelData
    ds.save_as(nopix)
    frame = b"\xff\xd8" + bytes(30) + b"\xff\xd9"  # not decodable, and never asked to be
    write_dicom(folder / "private.dcm", np.zeros((4, 4), np.uint8), syntax="1.2.3.4.5.6",
                pixel_data=encapsulate([frame]))
    whole = write_dicom(tmp_path / "whole.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8)).read_bytes()
    (folder / "truncated.dcm").write_bytes(whole[:-40])
    (folder / "header.dcm").write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10")  # a preamble only
    expected = {
        "report.dcm": "without an image (no Pixel Data",
        "header.dcm": "without an image (no Pixel Data",
        "private.dcm": "unsupported DICOM transfer syntax",
        "truncated.dcm": "pixel data cannot be decoded",
    }
    from pydicom.pixels import get_decoder

    if not get_decoder(JPEGLosslessSV1).is_available:  # the default install: no such plug-in
        write_dicom(folder / "lossless.dcm", np.zeros((4, 4), np.uint8), syntax=JPEGLosslessSV1,
                    pixel_data=encapsulate([frame]))
        expected["lossless.dcm"] = "cannot be decoded here"
    project = Project.create(tmp_path / "p.atl")
    report = run_job(import_source(project, folder))
    assert report.added == 1
    reasons = {Path(p).name: reason for p, reason in report.skipped}
    assert set(reasons) == set(expected)
    for name, part in expected.items():
        assert part in reasons[name], reasons[name]


# ---- privacy -----------------------------------------------------------------------------


def test_no_patient_tag_reaches_records_exports_or_info(tmp_path, capsys):
    folder = tmp_path / "study"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    cine(folder / "a" / "cine.dcm")
    write_dicom(folder / "b" / "single.dcm", np.full((4, 4), 5, np.uint16), bits=10)
    project_path = tmp_path / "p.atl"
    with Project.create(project_path) as project:
        report = run_job(import_source(project, folder))  # class folders a and b: labelled
        assert report.added == 4 and report.labelled == 4
        export_csv(project, tmp_path / "labels.csv")
        export_json(project, tmp_path / "labels.json")
        out = run_job(export_imagefolder(project, tmp_path / "folders"))
        assert out.written == 4
    assert main(["info", str(project_path)]) == 0
    texts = [capsys.readouterr().out, (tmp_path / "labels.csv").read_text(),
             (tmp_path / "labels.json").read_text()]
    raw = [project_path.read_bytes()] + [p.read_bytes() for p in (tmp_path / "folders").rglob("*") if p.is_file()]
    for value in PATIENT.values():
        assert all(value not in text for text in texts), value
        assert all(value.encode() not in blob for blob in raw), value
    # the CSV names each frame; the class folders hold PNGs of the frames, never the DICOM files
    rows = list(csv.DictReader((tmp_path / "labels.csv").read_text().splitlines()))
    assert [r["path"].rsplit(os.sep, 1)[-1] for r in rows][:3] == [f"cine.dcm#frame={k}" for k in (1, 2, 3)]
    assert sorted(p.name for p in (tmp_path / "folders").rglob("*.*")) == [
        "cine_frame1.png", "cine_frame2.png", "cine_frame3.png", "single.png"]
    document = json.loads((tmp_path / "labels.json").read_text())
    assert document["images"][0]["location"] == "study/a/cine.dcm#frame=1"


# ---- the files pydicom ships -------------------------------------------------------------


def shipped(name: str) -> Path:
    path = SHIPPED / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this pydicom wheel")
    return path


def test_shipped_mr_by_three_codecs_gives_one_image():
    plain = grey(load_image(shipped("MR_small.dcm")))
    assert np.array_equal(grey(load_image(shipped("MR_small_RLE.dcm"))), plain)
    assert np.array_equal(grey(load_image(shipped("MR_small_jp2klossless.dcm"))), plain)
    # window 600 / 1600, no rescale: y = ((x - 599.5) / 1599 + 0.5) * 255, worked for pixel (0, 0)
    stored = int(pydicom.dcmread(shipped("MR_small.dcm")).pixel_array[0, 0])
    expected = min(255, max(0, round(((stored - 599.5) / 1599 + 0.5) * 255)))
    assert int(plain[0, 0]) == expected


def test_shipped_colour_and_compressed_files():
    # one picture stored as YBR_FULL in lossy JPEG and as RGB in RLE: close, not equal
    ybr = load_image(shipped("SC_rgb_jpeg_dcmtk.dcm"))
    rgb = load_image(shipped("SC_rgb_rle.dcm"))
    assert ybr.mode == rgb.mode == "RGB" and ybr.size == rgb.size == (100, 100)
    difference = np.abs(np.asarray(ybr, np.int16) - np.asarray(rgb, np.int16))
    assert difference.mean() < 1 and difference.max() < 10
    assert load_image(shipped("examples_ybr_color.dcm")).size == (320, 240)  # YBR_FULL_422, frame 1 of 30
    assert load_image(shipped("examples_palette.dcm")).mode == "RGB"
    assert load_image(shipped("JPEG2000.dcm")).size == (256, 1024)


def test_shipped_files_import_with_skips_named(tmp_path):
    folder = tmp_path / "shipped"
    folder.mkdir()
    for name in ("CT_small.dcm", "rtdose.dcm", "rtplan.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        (folder / name).write_bytes(shipped(name).read_bytes())
    project = Project.create(tmp_path / "p.atl")
    report = run_job(import_source(project, folder))
    assert report.added == 1 + 15  # CT, and the dose's 15 frames
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert "no Pixel Data" in reasons["rtplan.dcm"]
    assert "JPEG-LS" in reasons.get("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS")
    ct = next(r for r in project.images() if r.location.endswith("CT_small.dcm"))
    assert (ct.width, ct.height, ct.bit_depth) == (128, 128, 16)
