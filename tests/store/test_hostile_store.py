"""The project file against careless states left on disk (issue 19, cases 9-11): a newer
file with a leftover WAL is not altered at all, a killed checkpoint write leaves nothing
behind for long, and a lock that is a folder or a link is one line."""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atl_desktop.cli import main
from atl_desktop.store import NewerProjectError, Project, ProjectError


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _beside(path: Path) -> dict[str, str]:
    """Every file beside and under the project, with its content hash."""
    return {str(p.relative_to(path.parent)): _digest(p) for p in sorted(path.parent.rglob("*")) if p.is_file()}


def _leave_newer_version_in_wal(path: Path) -> None:
    """What a newer ATL Desktop killed mid-session leaves: user_version 99 only in the -wal."""
    code = ("import os, sqlite3; db = sqlite3.connect(os.environ['P'], isolation_level=None); "
            "db.execute('PRAGMA wal_autocheckpoint=0'); db.execute('PRAGMA user_version=99'); "
            "db.execute('CREATE TABLE later (x)'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "P": str(path)}, check=True)


def test_a_newer_file_with_a_leftover_wal_is_not_changed_by_any_open(tmp_path, capsys):
    path = tmp_path / "v.atl"
    Project.create(path).close()
    _leave_newer_version_in_wal(path)
    assert Path(f"{path}-wal").stat().st_size > 0
    before = _beside(path)
    for readonly in (False, True):
        with pytest.raises(NewerProjectError, match="has not been changed"):
            Project.open(path, readonly=readonly)
    assert main(["info", str(path)]) == 1
    gc.collect()  # a connection left open by a refusal would checkpoint when collected
    # The main file, its -wal and the lock file are byte for byte the same. The -shm is
    # SQLite's shared-memory index of the WAL, which any reader may rebuild: not data.
    after = _beside(path)
    assert {k: v for k, v in after.items() if not k.endswith("-shm")} == \
        {k: v for k, v in before.items() if not k.endswith("-shm")}
    assert after.keys() == before.keys()


def test_a_newer_file_without_a_wal_leaves_no_wal_and_no_rewritten_lock(tmp_path):
    import sqlite3

    path = tmp_path / "v.atl"
    Project.create(path).close()
    db = sqlite3.connect(path)  # a newer version that closed cleanly: nothing beside the file
    db.execute("PRAGMA user_version = 99")
    db.close()
    before = _beside(path)
    for readonly in (False, True):
        with pytest.raises(NewerProjectError):
            Project.open(path, readonly=readonly)
    assert _beside(path) == before


def test_read_only_use_leaves_no_empty_wal_pair_behind(tmp_path):
    path = tmp_path / "r.atl"
    Project.create(path).close()
    assert not Path(f"{path}-wal").exists()
    with Project.open(path, readonly=True) as project:
        project.counts()
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()


def test_read_only_use_keeps_the_wal_while_a_writer_has_it_open(tmp_path):
    path = tmp_path / "w.atl"
    with Project.create(path) as writer:
        writer.add_class("a")
        with Project.open(path, readonly=True) as reader:
            assert reader.class_names() == ["a"]
        assert Path(f"{path}-wal").exists()  # the writer's, not ours to remove
        writer.add_class("b")
    with Project.open(path, readonly=True) as reader:
        assert reader.class_names() == ["a", "b"]


def test_leftovers_of_a_killed_checkpoint_write_are_removed_on_the_next_open_for_writing(tmp_path):
    path = tmp_path / "k.atl"
    Project.create(path).close()
    folder = tmp_path / "k.atl.d" / "checkpoints"
    folder.mkdir(parents=True)
    sha = "ab" * 32
    temp = folder / f".{sha}.safetensors.x1y2z3_9.tmp"  # atomic_write_bytes' temporary name
    unrecorded = folder / f"{sha}.safetensors"  # written, but killed before it was recorded
    foreign = [folder / "notes.txt", folder / "mine.safetensors", tmp_path / "k.atl.d" / f".{sha}.abcdefgh.tmp"]
    for f in (temp, unrecorded, *foreign):
        f.write_bytes(b"x")
    with Project.open(path, readonly=True):
        pass
    assert temp.exists() and unrecorded.exists()  # a reader never removes anything
    Project.open(path).close()
    assert not temp.exists() and not unrecorded.exists()
    assert all(f.exists() for f in foreign)  # only our own names, only in our own folder


def test_a_recorded_checkpoint_file_is_kept(tmp_path):
    path = tmp_path / "c.atl"
    sha = "cd" * 32
    with Project.create(path) as project:
        file = project.data_dir / "checkpoints" / f"{sha}.safetensors"
        file.parent.mkdir(parents=True)
        file.write_bytes(b"weights")
        project.add_checkpoint(file=f"checkpoints/{sha}.safetensors", sha256=sha, backbone="smallcnn",
                               classes=["a"])
    Project.open(path).close()
    assert file.exists()


def test_a_lock_that_is_a_folder_is_one_line(tmp_path, capsys):
    path = tmp_path / "l.atl"
    Project.create(path).close()
    lock = tmp_path / "l.atl.d" / "lock"
    lock.unlink()
    lock.mkdir()
    with pytest.raises(ProjectError, match="is a folder"):
        Project.open(path)
    assert main(["import", str(path), str(tmp_path / "nothing"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is a folder" in err


def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    path = tmp_path / "s.atl"
    Project.create(path).close()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    lock = tmp_path / "s.atl.d" / "lock"
    lock.unlink()
    lock.symlink_to(victim)
    with pytest.raises(ProjectError, match="symbolic link"):
        Project.open(path)
    assert victim.read_text() == "keep me"
