"""Hostile and careless input to import and export (issue 19, cases 2-8; issue 22, item 6):
each case refused or skipped with one line, nothing the project owns or reads overwritten."""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from atl_desktop.cli import main
from atl_desktop.data import importers
from atl_desktop.data.export import ExportError, export_csv, export_imagefolder, export_json
from atl_desktop.data.importers import ImportOptions, SourceError, import_source
from atl_desktop.jobs import run_job
from atl_desktop.models import build_model
from atl_desktop.models.checkpoints import CheckpointError, load_model_file, save_model_file
from atl_desktop.models.registry import state_dict_mismatch
from atl_desktop.store import Project

TESTDATA = Path(__file__).resolve().parents[3] / "resources" / "testdata"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _class_tree(root: Path) -> Path:
    for c, name in enumerate(("tumour", "stroma")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((8, 8), 40 * c + 10 * i, np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def imported(tmp_path) -> tuple[Path, Path]:
    """(project, data): data/{tumour,stroma}/{0,1,2}.png imported with their labels."""
    data = _class_tree(tmp_path / "data")
    project = tmp_path / "e.atl"
    assert main(["new", str(project)]) == 0
    assert main(["import", str(project), str(data), "--quiet"]) == 0
    return project, data


# ---- case 2 and 3: exports onto what the project reads or owns ---------------------------------


def test_an_imagefolder_export_into_the_source_folder_is_refused_and_no_original_is_touched(imported, capsys):
    project, data = imported
    before = {p: _digest(p) for p in data.rglob("*.png")}
    code = main(["export", str(project), str(data), "--format", "imagefolder", "--overwrite"])
    assert code == 1
    assert "holds files of" in capsys.readouterr().err
    assert {p: _digest(p) for p in data.rglob("*.png")} == before


def test_an_imagefolder_export_into_a_folder_above_the_sources_is_refused(imported, tmp_path):
    project, _ = imported
    with Project.open(project, readonly=True) as p, pytest.raises(ExportError, match="holds files of"):
        run_job(export_imagefolder(p, tmp_path, overwrite=True))


@pytest.mark.parametrize("target", ["e.atl", "e.atl-wal", "e.atl-shm", "e.atl.d/lock", "e.atl.d/x.csv"])
def test_a_file_export_never_writes_onto_the_project_s_own_files(imported, tmp_path, target, capsys):
    project, _ = imported
    before = _digest(project)
    code = main(["export", str(project), str(tmp_path / target), "--format", "csv", "--overwrite"])
    assert code == 1 and "own file or folder" in capsys.readouterr().err
    assert _digest(project) == before
    assert main(["info", str(project)]) == 0


def test_a_file_export_never_writes_onto_an_imported_image_even_through_a_link(imported, tmp_path):
    project, data = imported
    link = tmp_path / "link.csv"
    link.symlink_to(data / "tumour" / "0.png")
    before = _digest(data / "tumour" / "0.png")
    with Project.open(project, readonly=True) as p:
        for out in (data / "tumour" / "0.png", link):
            with pytest.raises(ExportError):
                export_json(p, out, overwrite=True)
    assert _digest(data / "tumour" / "0.png") == before


_target = st.lists(st.sampled_from(["..", "data", "tumour", "e.atl.d", "e.atl", "0.png", "out", "link"]),
                   min_size=0, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=_target, fmt=st.sampled_from(["csv", "json", "imagefolder"]))
def test_property_no_export_target_overwrites_the_project_or_its_sources(imported, parts, fmt):
    """Any target (inside the sources, the project's folder, through a link, above them):
    the project's files and every source image are byte for byte the same afterwards."""
    project, data = imported
    root = project.parent
    link = root / "link"
    if not link.exists():
        link.symlink_to(data, target_is_directory=True)
    watched = [project, *(data / c / f"{i}.png" for c in ("tumour", "stroma") for i in range(3))]
    before = [_digest(p) for p in watched]
    out = root.joinpath(*parts) if parts else root
    with Project.open(project, readonly=True) as p:
        try:
            if fmt == "csv":
                export_csv(p, out, overwrite=True)
            elif fmt == "json":
                export_json(p, out, overwrite=True)
            else:
                run_job(export_imagefolder(p, out, overwrite=True))
        except (ExportError, OSError):
            pass
    assert [_digest(p) for p in watched] == before
    assert main(["info", str(project)]) == 0


# ---- issue 22, item 6: the format from OUT ------------------------------------------------------


def test_the_export_format_is_inferred_from_out(imported, tmp_path, capsys):
    from atl_desktop.data.export import infer_format

    project, _ = imported
    assert infer_format(tmp_path / "a.CSV") == "csv"
    assert infer_format(tmp_path / "a.json") == "json"
    assert infer_format(tmp_path / "folder") == "imagefolder"
    (tmp_path / "existing.d").mkdir()
    assert infer_format(tmp_path / "existing.d") == "imagefolder"
    assert main(["export", str(project), str(tmp_path / "labels.csv")]) == 0
    assert (tmp_path / "labels.csv").read_text().startswith("path,label")
    assert main(["export", str(project), str(tmp_path / "out"), "--quiet"]) == 0
    assert len(list((tmp_path / "out").rglob("*.png"))) == 6
    capsys.readouterr()
    assert main(["export", str(project), str(tmp_path / "labels.xlsx")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "csv, json or imagefolder" in err


# ---- case 4: a name that is not UTF-8 ----------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_skipped_and_named_not_fatal(tmp_path, capsys):
    folder = tmp_path / "nonutf"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(os.path.join(os.fsencode(folder), b"caf\xe9.png"), format="PNG")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(folder / "ok.png")
    project = tmp_path / "n.atl"
    assert main(["new", str(project)]) == 0
    assert main(["import", str(project), str(folder), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 new images" in out and "caf\\xe9.png" in out and "UTF-8" in out
    inside = os.path.join(os.fsencode(tmp_path), b"d\xe9j\xe0")  # the folder itself, and one file
    os.mkdir(inside)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(os.path.join(inside, b"a.png"), format="PNG")
    for source in (os.fsdecode(inside), os.fsdecode(os.path.join(inside, b"a.png"))):
        assert main(["import", str(project), source, "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "0 new images" in out and "d\\xe9j\\xe0" in out and "UTF-8" in out


# ---- case 5: FIFOs, devices, huge files ------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_a_link_to_a_device_is_skipped_without_waiting(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "rand.png").symlink_to("/dev/urandom")
    (folder / "zero.png").symlink_to("/dev/zero")
    Image.new("L", (8, 8)).save(folder / "fine.png")
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("/dev/zero,a\nodd/fine.png,a\n")
    with Project.create(tmp_path / "f.atl") as project:
        report = run_job(import_source(project, folder))
        assert report.added == 1
        reasons = dict(report.skipped)
        assert "FIFO" in reasons[str(folder / "pipe.png")]
        assert "device" in reasons[str(folder / "rand.png")]
        report = run_job(import_source(project, csv_file))
        assert "device" in dict(report.skipped)["/dev/zero"]


def test_a_file_over_the_read_cap_is_refused(tmp_path):
    from atl_desktop.store.files import FileTooLargeError, read_regular

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 4096)
    with pytest.raises(FileTooLargeError):
        read_regular(big, max_bytes=1024)
    assert read_regular(big, max_bytes=4096)[0] == b"\0" * 4096


# ---- case 6: a full or read-only disk --------------------------------------------------------


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left"), (errno.EROFS, "read-only")])
def test_a_full_or_read_only_disk_ends_an_import_in_one_line_and_leaves_no_orphans(
        tmp_path, monkeypatch, capsys, code, words):
    project = tmp_path / "d.atl"
    assert main(["new", str(project)]) == 0
    real_write = importers._Writer.write

    def failing_write(self, batch):
        if self.report.added:  # the first batch is committed, the second meets a full disk
            raise OSError(code, os.strerror(code))
        real_write(self, batch)

    monkeypatch.setattr(importers._Writer, "write", failing_write)
    monkeypatch.setattr(importers.ImportOptions, "__init__", _small_batches(importers.ImportOptions.__init__))
    assert main(["import", str(project), str(TESTDATA / "mnist_600.npz"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err and "Traceback" not in err
    with Project.open(project, readonly=True) as p:
        recorded = {p.data_dir / r.location for r in p.images()}
        on_disk = set((p.data_dir / "media").rglob("*.png"))
    assert recorded and on_disk == recorded  # the committed batch stays; no orphan media


def _small_batches(init):
    def small(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "batch_size": 100})
    return small


def test_sqlite_disk_errors_become_one_line(tmp_path, monkeypatch, capsys):
    project = tmp_path / "s.atl"
    assert main(["new", str(project)]) == 0
    monkeypatch.setattr(Project, "add_class", lambda *a, **k: (_ for _ in ()).throw(
        sqlite3.OperationalError("database or disk is full")))
    assert main(["import", str(project), str(TESTDATA / "mnist_600.npz"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "No space left" in err and "Traceback" not in err


def test_a_read_only_disk_under_the_lock_is_one_line(tmp_path, monkeypatch, capsys):
    project = tmp_path / "r.atl"
    assert main(["new", str(project)]) == 0
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith("lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["import", str(project), str(TESTDATA / "mnist_600.npz"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "read-only disk" in err and "atl info" in err


# ---- case 7: .npz with object arrays -----------------------------------------------------------


def test_an_npz_with_object_arrays_is_refused_in_one_line(tmp_path, capsys):
    source = tmp_path / "obj.npz"
    np.savez(source, x=np.array([np.zeros((4, 4), np.uint8), "text"], dtype=object))
    with Project.create(tmp_path / "o.atl") as project, pytest.raises(SourceError, match="Python objects"):
        run_job(import_source(project, source, ImportOptions()))
    assert main(["import", str(tmp_path / "o.atl"), str(source), "--quiet"]) == 1
    assert "Python objects" in capsys.readouterr().err


# ---- case 8: number types of weights -----------------------------------------------------------


@pytest.mark.parametrize("dtype, fits", [(torch.int8, False), (torch.int64, False), (torch.float64, False),
                                         (torch.float16, True), (torch.bfloat16, True)])
def test_weights_of_another_number_type_are_refused_unless_half_precision(dtype, fits):
    model = build_model("smallcnn", 3, seed=0)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    problems = state_dict_mismatch(model, state)
    assert (problems == "") == fits
    if not fits:
        assert "wrong number types" in problems and str(dtype).removeprefix("torch.") in problems


def test_a_model_file_with_integer_weights_is_refused(tmp_path):
    model = build_model("smallcnn", 3, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.round())
    path = save_model_file(tmp_path / "m.safetensors", model.to(torch.float64), classes=["a", "b", "c"])
    with pytest.raises(CheckpointError, match="wrong number types"):
        load_model_file(path)
