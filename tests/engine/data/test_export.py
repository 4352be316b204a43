"""Exports: CSV and JSON contents, class folders that round-trip, safe names, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atl_desktop.data.export import (
    ExportError,
    class_folder_names,
    export_csv,
    export_imagefolder,
    export_json,
    safe_name,
)
from atl_desktop.data.importers import ImportOptions, import_source
from atl_desktop.jobs import run_job
from atl_desktop.store import Project


def _image(value: int) -> Image.Image:
    pixels = np.full((6, 6), value, np.uint8)
    pixels[0, 0] = 255 - value
    return Image.fromarray(pixels)


@pytest.fixture
def labelled(tmp_path) -> Path:
    """A project with 4 images: two labelled 'cat', one 'dog' (relabelled), one unlabelled."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for v in range(4):
        _image(v * 10).save(folder / f"p{v}.png")
    path = tmp_path / "lab.atl"
    with Project.create(path) as project:
        run_job(import_source(project, folder))
        cat, dog = project.add_class("cat"), project.add_class("dog")
        ids = [project.image_id_for_path(folder / f"p{v}.png") for v in range(4)]
        project.set_label(ids[0], cat, annotator="ann")
        project.set_label(ids[1], cat, annotator="ann")
        round_id = project.start_round("entropy", {})
        project.set_label(ids[2], cat, annotator="bob")
        project.set_label(ids[2], dog, annotator="bob", round=round_id, confidence=0.75)
    return path


def test_csv_contents(labelled, tmp_path):
    out = tmp_path / "labels.csv"
    with Project.open(labelled, readonly=True) as project:
        report = export_csv(project, out)
    assert report.written == 3
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["p0.png", "p1.png", "p2.png"]
    assert [r["label"] for r in rows] == ["cat", "cat", "dog"]
    assert [r["who"] for r in rows] == ["human:ann", "human:ann", "human:bob"]
    assert rows[2]["round"] == "1" and float(rows[2]["confidence"]) == 0.75
    assert rows[0]["round"] == "" and rows[0]["confidence"] == ""
    with pytest.raises(ExportError, match="already exists"):
        with Project.open(labelled, readonly=True) as project:
            export_csv(project, out)


def test_csv_reimports_to_same_labels(labelled, tmp_path):
    out = tmp_path / "labels.csv"
    with Project.open(labelled, readonly=True) as project:
        export_csv(project, out)
    with Project.create(tmp_path / "copy.atl") as other:
        report = run_job(import_source(other, out))
        assert report.labelled == 3
        names = {c.id: c.name for c in other.classes()}
        got = {Path(other.image(i).original_path).name: names[c] for i, c in other.current_labels().items()}
    assert got == {"p0.png": "cat", "p1.png": "cat", "p2.png": "dog"}


def test_json_has_history(labelled, tmp_path):
    out = tmp_path / "labels.json"
    with Project.open(labelled, readonly=True) as project:
        export_json(project, out)
    doc = json.loads(out.read_text())
    assert doc["format"] == "atl-desktop-labels" and doc["version"] == 1
    assert [c["name"] for c in doc["classes"]] == ["cat", "dog"]
    by_name = {Path(i["path"]).name: i for i in doc["images"]}
    assert set(by_name) == {"p0.png", "p1.png", "p2.png"}  # the unlabelled one has no history
    relabelled = by_name["p2.png"]
    assert relabelled["label"] == "dog"
    assert [e["label"] for e in relabelled["history"]] == ["cat", "dog"]
    assert relabelled["history"][1]["confidence"] == 0.75
    assert relabelled["history"][1]["annotator"] == "bob"


def test_imagefolder_round_trip(labelled, tmp_path):
    out = tmp_path / "folders"
    with Project.open(labelled, readonly=True) as project:
        report = run_job(export_imagefolder(project, out))
    assert report.written == 3
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "cat/p0.png", "cat/p1.png", "dog/p2.png",
    ]
    with Project.create(tmp_path / "again.atl") as other:
        run_job(import_source(other, out, ImportOptions(format="imagefolder")))
        names = {c.id: c.name for c in other.classes()}
        got = {other.image(i).sha256: names[c] for i, c in other.current_labels().items()}
    with Project.open(labelled, readonly=True) as project:
        names = {c.id: c.name for c in project.classes()}
        want = {project.image(i).sha256: names[c] for i, c in project.current_labels().items()}
    assert got == want


def test_imagefolder_symlinks(labelled, tmp_path):
    out = tmp_path / "links"
    with Project.open(labelled, readonly=True) as project:
        run_job(export_imagefolder(project, out, symlink=True))
    link = out / "cat" / "p0.png"
    assert link.is_symlink() and link.resolve() == (tmp_path / "imgs" / "p0.png").resolve()


def test_refuses_non_empty_folder(labelled, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with Project.open(labelled, readonly=True) as project:
        with pytest.raises(ExportError, match="not empty"):
            run_job(export_imagefolder(project, out))
        run_job(export_imagefolder(project, out, overwrite=True))
    assert (out / "keep.txt").read_text() == "mine"
    assert (out / "dog" / "p2.png").is_file()


def test_never_writes_through_a_link(labelled, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat").symlink_to(outside, target_is_directory=True)
    with Project.open(labelled, readonly=True) as project:
        with pytest.raises(ExportError, match="symbolic link"):
            run_job(export_imagefolder(project, out, overwrite=True))
    assert list(outside.iterdir()) == []


def test_hostile_class_names_stay_inside(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["../escape", "a/b", "CON", "nul.txt", "", "..", "Cat", "cat", " spaced. "]
    path = tmp_path / "h.atl"
    with Project.create(path) as project:
        for v in range(len(names)):
            _image(v * 20).save(folder / f"h{v}.png")
        run_job(import_source(project, folder))
        for v, name in enumerate(names):
            if not name.strip():
                continue  # the store refuses empty class names
            class_id = project.add_class(name) if project.class_by_name(name.strip()) is None else None
            if class_id is not None:
                project.set_label(project.image_id_for_path(folder / f"h{v}.png"), class_id)
    out = tmp_path / "safe"
    with Project.open(path, readonly=True) as project:
        report = run_job(export_imagefolder(project, out))
        assert report.written == len(project.current_labels())
    written = [p for p in tmp_path.rglob("*.png") if folder not in p.parents]
    assert all(out in p.parents for p in written)
    assert {p.parent.name for p in written} == set(report.folders.values())


@pytest.mark.parametrize(
    ("name", "safe"),
    [("cat", "cat"), ("a/b", "a_b"), ("a\\b", "a_b"), ("..", "unnamed"), ("", "unnamed"),
     ("CON", "_CON"), ("nul.txt", "_nul.txt"), ("com1", "_com1"), ("x:y*?", "x_y__"),
     ("trailing. ", "trailing"), ("tab\there", "tab_here"), ("COMPUTER", "COMPUTER")],
)
def test_safe_name(name, safe):
    assert safe_name(name) == safe


def test_folder_names_disambiguated():
    assert class_folder_names(["Cat", "cat", "a/b", "a_b", ""]) == {
        "Cat": "Cat", "cat": "cat_2", "a/b": "a_b", "a_b": "a_b_2", "": "unnamed_class",
    }
