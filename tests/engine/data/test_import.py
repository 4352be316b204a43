"""Imports of every source type, duplicates, bad files, cancelling, moving a project."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atl_desktop.data.importers import (
    IMAGE_SUFFIXES,
    ImportOptions,
    SourceError,
    _is_image_name,
    detect_format,
    import_source,
)
from atl_desktop.jobs import Progress, run_job
from atl_desktop.store import Project

TESTDATA = Path(__file__).resolve().parents[3] / "resources" / "testdata"


def _digit(value: int, size: int = 8) -> Image.Image:
    """A small grey image that differs for every value (so every file has its own hash)."""
    pixels = np.zeros((size, size), np.uint8)
    pixels.flat[: value % (size * size) + 1] = 255
    pixels[0, 0] = value % 256
    return Image.fromarray(pixels)


def _write_images(folder: Path, values, suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for v in values:
        path = folder / f"img_{v:03d}{suffix}"
        _digit(v).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def project(tmp_path):
    with Project.create(tmp_path / "proj.atl") as p:
        yield p


def _label_names(project: Project) -> dict[str, str]:
    """original file name -> class name, for every labelled image."""
    names = {c.id: c.name for c in project.classes()}
    return {
        Path(project.image(i).original_path).name: names[c]
        for i, c in project.current_labels().items()
    }


def test_folder_recursive_with_bad_files(project, tmp_path):
    root = tmp_path / "photos"
    _write_images(root, range(3))
    _write_images(root / "2024" / "june", range(3, 5), suffix=".jpg")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.png").write_text("not a picture")
    (root / "readme.txt").write_text("hello")
    (root / ".hidden.png").write_bytes(b"ignored")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(root / "whole.png")
    whole = (root / "whole.png").read_bytes()
    (root / "whole.png").unlink()
    (root / "cut.png").write_bytes(whole[: len(whole) // 2])

    report = run_job(import_source(project, root))
    assert report.format == "folder"
    assert (report.added, report.duplicates) == (5, 0)
    reasons = {Path(path).name: reason for path, reason in report.skipped}
    assert set(reasons) == {"empty.png", "notes.png", "readme.txt", "cut.png"}
    assert "empty" in reasons["empty.png"]
    assert "not an image" in reasons["notes.png"]
    assert "not an image file type" in reasons["readme.txt"]
    assert "truncated" in reasons["cut.png"]
    records = project.images()
    assert len(records) == 5 and {r.stored for r in records} == {"ref"}
    assert {r.domain for r in records} == {"target"} and {r.split for r in records} == {"pool"}
    assert project.current_labels() == {}
    nested = [r for r in records if r.location.endswith("img_003.jpg")][0]
    assert nested.location == "photos/2024/june/img_003.jpg"
    assert (nested.width, nested.height, nested.mode, nested.bit_depth) == (8, 8, "L", 8)
    assert "5 new images" in report.summary() and "cut.png" in report.summary()


def test_folder_walk_order_links_and_the_projects_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the source is named relative to the working folder
    root = tmp_path / "study"
    _write_images(root / "b", [1])
    _write_images(root / "a" / "deeper", [2])
    _write_images(root / "a", [3])
    _write_images(root, [4])
    _write_images(tmp_path / "outside", [5, 6])
    (root / "linked.png").symlink_to(tmp_path / "outside" / "img_005.png")
    (root / "linked_folder").symlink_to(tmp_path / "outside", target_is_directory=True)
    with Project.create(root / "p.atl") as project:
        _write_images(project.data_dir / "media", [7])  # the project's own files are not imported
        report = run_job(import_source(project, "study"))
        assert report.skipped == []
        records = [project.image(i) for i in report.image_ids]
        # a folder's files (sorted) before its subfolders (sorted), as os.walk lists them
        assert [r.location for r in records] == [
            "img_004.png", "../outside/img_005.png", "a/img_003.png", "a/deeper/img_002.png", "b/img_001.png",
        ]
        # a linked file is referred to where it is, and remembered under the name it was given
        assert records[1].original_path == str(root / "linked.png")
        assert records[3].original_path == str(root / "a" / "deeper" / "img_002.png")
        assert project.image_path(records[1]).resolve() == (tmp_path / "outside" / "img_005.png").resolve()


def test_duplicates_merged(project, tmp_path):
    paths = _write_images(tmp_path / "a", range(4))
    shutil.copy(paths[0], tmp_path / "a" / "copy_of_0.png")
    first = run_job(import_source(project, tmp_path / "a"))
    assert (first.added, first.duplicates) == (4, 1)
    again = run_job(import_source(project, tmp_path / "a"))
    assert (again.added, again.duplicates) == (0, 5)
    assert len(project.images()) == 4
    assert sorted(set(again.image_ids)) == sorted(set(first.image_ids))


def test_imagefolder_labels(project, tmp_path):
    root = tmp_path / "tree"
    _write_images(root / "dog", range(3))
    _write_images(root / "cat", range(3, 5))
    _write_images(root / "cat" / "sub", range(5, 6))  # nested files belong to the class
    (root / "stray.png").write_bytes(b"")
    assert detect_format(root) == "folder"  # an image at the top: not a class tree
    (root / "stray.png").unlink()
    assert detect_format(root) == "imagefolder"

    report = run_job(import_source(project, root, ImportOptions(domain="source", split="val")))
    assert report.format == "imagefolder"
    assert (report.added, report.labelled) == (6, 6)
    assert project.class_names() == ["cat", "dog"]  # sorted, as torchvision's ImageFolder
    assert report.classes_added == ["cat", "dog"]
    labels = _label_names(project)
    assert labels == {
        "img_000.png": "dog", "img_001.png": "dog", "img_002.png": "dog",
        "img_003.png": "cat", "img_004.png": "cat", "img_005.png": "cat",
    }
    assert {(r.domain, r.split) for r in project.images()} == {("source", "val")}
    events = project.label_history()
    assert {e.kind for e in events} == {"import"} and {e.annotator for e in events} == {"tree"}


def test_truth_is_hidden_not_a_label(project, tmp_path):
    root = tmp_path / "tree"
    _write_images(root / "a", range(2))
    _write_images(root / "b", range(2, 3))
    report = run_job(import_source(project, root, ImportOptions(labels="truth")))
    assert report.labelled == 3
    assert project.current_labels() == {}
    names = {c.id: c.name for c in project.classes()}
    assert sorted(names[c] for c in project.truth().values()) == ["a", "a", "b"]


def test_labels_none(project, tmp_path):
    root = tmp_path / "tree"
    _write_images(root / "a", range(2))
    _write_images(root / "b", range(2, 4))
    report = run_job(import_source(project, root, ImportOptions(labels="none")))
    assert report.added == 4 and project.current_labels() == {} and project.classes() == []


def test_csv_relative_absolute_header_and_errors(project, tmp_path):
    folder = tmp_path / "data"
    paths = _write_images(folder / "imgs", range(4))
    csv = folder / "labels.csv"
    csv.write_text(
        "path,label\n"
        "imgs/img_000.png,round\n"
        f"{paths[1]},square\n"
        "imgs/img_002.png,\n"
        "imgs/missing.png,round\n"
        "imgs/img_003.png,round\n"
    )
    report = run_job(import_source(project, csv))
    assert report.format == "csv"
    assert (report.added, report.labelled) == (4, 3)
    assert [(Path(p).name, r) for p, r in report.skipped] == [("missing.png", "file not found.")]
    assert project.class_names() == ["round", "square"]
    assert _label_names(project) == {
        "img_000.png": "round", "img_001.png": "square", "img_003.png": "round",
    }


def test_csv_without_header(project, tmp_path):
    _write_images(tmp_path / "imgs", range(2))
    csv = tmp_path / "list.csv"
    csv.write_text("imgs/img_000.png,x\nimgs/img_001.png,y\n")
    report = run_job(import_source(project, csv))
    assert report.added == 2 and project.class_names() == ["x", "y"]


def test_npz_single_split_copies_png(project):
    source = TESTDATA / "mnist_600.npz"
    with np.load(source, allow_pickle=False) as data:
        x, y, classes = data["x"], data["y"], list(data["classes"])
    report = run_job(import_source(project, source, ImportOptions(domain="source")))
    assert report.format == "npz"
    # MNIST test images are all distinct
    assert (report.added, report.duplicates, report.labelled) == (600, 0, 600)
    assert project.class_names() == [str(c) for c in classes]
    records = project.images()
    assert {r.stored for r in records} == {"media"} and {r.split for r in records} == {"pool"}
    # pixels survive the PNG round trip, labels match the arrays
    index = project.class_index()
    labels = project.current_labels()
    for k in (0, 17, 599):
        rec = project.image(report.image_ids[k])
        with Image.open(project.image_path(rec)) as img:
            np.testing.assert_array_equal(np.asarray(img), x[k])
        assert index[labels[rec.id]] == y[k]


def test_npz_splits_and_named_split(project, tmp_path):
    source = TESTDATA / "usps_900.npz"
    report = run_job(import_source(project, source, ImportOptions(labels="truth")))
    splits = {}
    for r in project.images():
        splits[r.split] = splits.get(r.split, 0) + 1
    assert report.added + report.duplicates == 900
    assert splits.get("pool", 0) + splits.get("test", 0) == report.added
    assert set(splits) == {"pool", "test"}
    assert len(project.truth()) == report.added

    with Project.create(tmp_path / "second.atl") as other:
        run_job(import_source(other, source, ImportOptions(split="val", labels="none")))
        assert {r.split for r in other.images()} == {"val"}


def test_npz_bad_arrays(project, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(SourceError, match="uint8"):
        run_job(import_source(project, bad))
    nothing = tmp_path / "nothing.npz"
    np.savez(nothing, images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(SourceError, match="no image arrays"):
        run_job(import_source(project, nothing))
    assert project.images() == []


def test_copy_into_media(project, tmp_path):
    paths = _write_images(tmp_path / "src", range(3))
    report = run_job(import_source(project, tmp_path / "src", ImportOptions(copy=True)))
    assert report.added == 3
    for path in paths:
        path.unlink()  # the copies must not depend on the originals
    for rec in project.images():
        assert rec.stored == "media" and rec.location.startswith("media/")
        assert project.image_path(rec).is_file()


def test_cancel_mid_import_keeps_committed_batches(tmp_path):
    root = tmp_path / "tree"
    _write_images(root / "a", range(20))
    _write_images(root / "b", range(20, 40))
    with Project.create(tmp_path / "p.atl") as project:
        job = import_source(project, root, ImportOptions(batch_size=7))
        for progress in job:
            assert isinstance(progress, Progress)
            if progress.metrics.get("committed") == 14:
                break
        job.close()  # cancel at a yield
        assert len(project.images()) == 14
    with Project.open(tmp_path / "p.atl") as project:
        assert project.integrity_ok()
        ids = {r.id for r in project.images()}
        assert len(ids) == 14 and set(project.current_labels()) == ids
        # importing again finishes the job: the first 14 are duplicates
        report = run_job(import_source(project, root))
        assert (report.added, report.duplicates) == (26, 14)
        assert len(project.current_labels()) == 40


def test_moved_project_still_finds_its_images(tmp_path):
    home = tmp_path / "study"
    _write_images(home / "images", range(3))
    with Project.create(home / "p.atl") as project:
        run_job(import_source(project, home / "images"))
    moved = tmp_path / "elsewhere" / "study"
    moved.parent.mkdir()
    shutil.move(home, moved)
    with Project.open(moved / "p.atl", readonly=True) as project:
        for rec in project.images():
            path = project.image_path(rec)
            assert path.is_file() and moved in path.parents
            assert rec.location.startswith("images/")


def test_missing_source(project, tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        run_job(import_source(project, tmp_path / "nowhere"))


def test_options_validated():
    with pytest.raises(SourceError, match="domain"):
        ImportOptions(domain="elsewhere")
    with pytest.raises(SourceError, match="labels"):
        ImportOptions(labels="maybe")
    assert ImportOptions().to_json()["split"] is None


def test_cli_import_and_export(tmp_path, capsys):
    from atl_desktop.cli import main

    _write_images(tmp_path / "tree" / "a", range(2))
    _write_images(tmp_path / "tree" / "b", range(2, 3))
    project = tmp_path / "c.atl"
    Project.create(project).close()
    assert main(["import", str(project), str(tmp_path / "tree"), "--quiet"]) == 0
    assert "3 new images" in capsys.readouterr().out
    out = tmp_path / "labels.csv"
    assert main(["export", str(project), str(out), "--format", "csv"]) == 0
    assert len(out.read_text().splitlines()) == 4
    assert main(["export", str(project), str(out), "--format", "csv"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["import", str(project), str(tmp_path / "missing"), "--quiet"]) == 1


def test_format_must_fit_the_source(project, tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(SourceError, match="needs a file"):
        run_job(import_source(project, tmp_path / "dir", ImportOptions(format="npz")))
    with pytest.raises(SourceError, match="needs a folder"):
        run_job(import_source(project, TESTDATA / "mnist_600.npz", ImportOptions(format="imagefolder")))


@pytest.mark.parametrize(
    "name",
    ["a.png", "A.PNG", "a.b.jpg", "a..png", "x.Tif", ".png", "..png", ".hidden.jpeg", "png", "a.", ".",
     "", "noext", "a.png.txt", "x.tar.gz"],
)
def test_image_names_are_told_by_their_suffix_as_splitext_would(name):
    assert _is_image_name(name) == (os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES)
