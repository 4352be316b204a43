"""A bundle is input from someone else: its database rows and its links must never write
outside the project or read outside the bundle (issue 19, case 1)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atl_desktop.jobs import run_job
from atl_desktop.models import build_model
from atl_desktop.models.checkpoints import checkpoint_bytes, checkpoint_metadata
from atl_desktop.scale.bundle import pack, unpack_results
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.files import sha256_bytes
from tests.engine.scale.test_bundle import CLASSES, make_project


def _bundle_with_row(lab: Path, bundle: Path, file: str, *, data: bytes | None = None) -> str:
    """A packed bundle whose database gains one checkpoint row naming `file`; the bytes
    (a valid checkpoint unless given) are written where that row points inside the bundle."""
    with Project.open(lab, readonly=True) as project:
        run_job(pack(project, bundle))
    if data is None:
        model = build_model("smallcnn", 3, seed=1)
        data = checkpoint_bytes(model, checkpoint_metadata(model, classes=CLASSES))
    sha = sha256_bytes(data)
    db = sqlite3.connect(bundle / "project.atl")
    db.execute("INSERT INTO checkpoints (file, sha256, backbone, classes, created) VALUES (?, ?, 'smallcnn', ?, 0)",
               (file, sha, '["a", "b", "c"]'))
    db.commit()
    db.close()
    return sha


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def packed_lab(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("lab") / "lab")


def test_a_row_climbing_out_of_the_bundle_writes_nothing_outside(packed_lab, tmp_path):
    lab = tmp_path / "lab.atl"
    _copy_project(packed_lab, lab)
    bundle = tmp_path / "bundle"
    sha = _bundle_with_row(lab, bundle, "checkpoints/../../../evil.safetensors")
    # the bytes sit where the row points, outside the bundle's project folder
    (tmp_path / "evil.safetensors").write_bytes(b"not written by us")
    before = _tree(tmp_path)
    with Project.open(lab) as project, pytest.raises(ProjectError, match="cannot be used"):
        unpack_results(project, bundle)
    after = _tree(tmp_path)
    outside = {k for k in set(before) | set(after) if not k.startswith("lab.atl")}
    assert {k for k in outside if before.get(k) != after.get(k)} == set()
    assert not list((tmp_path / "lab.atl.d" / "checkpoints").glob(f"{sha}*"))
    with Project.open(lab, readonly=True) as project:
        assert sha not in {c.sha256 for c in project.checkpoints()}


def test_a_symlinked_folder_inside_the_bundle_is_not_followed(packed_lab, tmp_path):
    lab = tmp_path / "lab.atl"
    _copy_project(packed_lab, lab)
    bundle = tmp_path / "bundle"
    outside = tmp_path / "outside"
    outside.mkdir()
    sha = _bundle_with_row(lab, bundle, "linked/ckpt.safetensors", data=None)
    model = build_model("smallcnn", 3, seed=1)
    (outside / "ckpt.safetensors").write_bytes(checkpoint_bytes(model, checkpoint_metadata(model, classes=CLASSES)))
    (bundle / "project.atl.d" / "linked").symlink_to(outside, target_is_directory=True)
    with Project.open(lab) as project, pytest.raises(ProjectError, match="symbolic link"):
        unpack_results(project, bundle)
    assert not (lab.parent / "lab.atl.d" / "checkpoints" / f"{sha}.safetensors").exists()


def test_a_good_row_with_an_odd_name_is_stored_under_its_hash(packed_lab, tmp_path):
    lab = tmp_path / "lab.atl"
    _copy_project(packed_lab, lab)
    bundle = tmp_path / "bundle"
    model = build_model("smallcnn", 3, seed=1)
    data = checkpoint_bytes(model, checkpoint_metadata(model, classes=CLASSES))
    sha = _bundle_with_row(lab, bundle, "elsewhere/x.safetensors", data=data)
    (bundle / "project.atl.d" / "elsewhere").mkdir()
    (bundle / "project.atl.d" / "elsewhere" / "x.safetensors").write_bytes(data)
    with Project.open(lab) as project:
        unpack_results(project, bundle)
        record = next(c for c in project.checkpoints() if c.sha256 == sha)
    assert record.file == f"checkpoints/{sha}.safetensors"
    assert (lab.parent / "lab.atl.d" / record.file).read_bytes() == data


def test_a_linked_score_cache_file_is_refused(packed_lab, tmp_path):
    lab = tmp_path / "lab.atl"
    _copy_project(packed_lab, lab)
    bundle = tmp_path / "bundle"
    with Project.open(lab, readonly=True) as project:
        run_job(pack(project, bundle))
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    variant = bundle / "project.atl.d" / "scores" / "k" / "v"
    variant.mkdir(parents=True)
    (variant / "part-0").mkdir()
    (variant / "part-0" / "probs.npy").symlink_to(secret)
    with Project.open(lab) as project, pytest.raises(ProjectError, match="symbolic link"):
        unpack_results(project, bundle)
    assert not list((tmp_path / "lab.atl.d").rglob("probs.npy"))
    assert not list((tmp_path / "lab.atl.d").rglob(".tmp-*"))


def _copy_project(source: Path, target: Path) -> None:
    """A fresh copy of a project whose images stay where they are (absolute original paths)."""
    import shutil

    db = sqlite3.connect(source)
    db.execute(f"VACUUM INTO '{target}'")
    db.close()
    shutil.copytree(source.parent / "lab.atl.d" / "checkpoints", target.parent / "lab.atl.d" / "checkpoints")


_part = st.sampled_from(["..", ".", "checkpoints", "x", "link", "/", "/tmp", "a..b", "~"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_part, min_size=1, max_size=6))
def test_property_no_bundle_row_writes_outside_the_project(packed_lab, tmp_path_factory, parts):
    """Any row (relative, absolute, climbing, through a link to outside): after the unpack,
    nothing outside the project's folder changed, and inside only checkpoints/<sha> appeared."""
    work = tmp_path_factory.mktemp("prop")
    lab = work / "lab" / "lab.atl"
    lab.parent.mkdir()
    _copy_project(packed_lab, lab)
    bundle = work / "bundle"
    file = os.path.join(*parts)
    model = build_model("smallcnn", 3, seed=1)
    data = checkpoint_bytes(model, checkpoint_metadata(model, classes=CLASSES))
    sha = _bundle_with_row(lab, bundle, file, data=data)
    outside = work / "outside"
    outside.mkdir()
    (bundle / "project.atl.d" / "link").symlink_to(outside, target_is_directory=True)
    for where in (bundle / "project.atl.d" / file, outside / "x"):
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            if not where.exists():
                where.write_bytes(data)
        except OSError:
            pass
    before = _tree(work)
    with Project.open(lab) as project:
        try:
            unpack_results(project, bundle)
        except ProjectError:
            pass
    after = _tree(work)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    allowed = {f"lab/lab.atl.d/checkpoints/{sha}.safetensors"}
    assert {k for k in changed if not k.startswith("lab/lab.atl")} == set()
    assert {k for k in changed if k.startswith("lab/lab.atl.d/")} - {"lab/lab.atl.d/lock"} <= allowed
