"""The bundled demo: copied on first use, never changed in place, resettable."""

import hashlib

import pytest

from atl_desktop.cli import main as atl
from atl_desktop.demo import bundled_demo, install_demo
from atl_desktop.store import Project, ProjectLockedError


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ATL_DESKTOP_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_demo_is_copied_once_and_the_bundle_is_never_changed(data_dir):
    bundle = bundled_demo()
    before = _digest(bundle)
    copy = install_demo()
    assert copy == data_dir / "demo" / "bloodcells.atl" and copy.is_file()
    with Project.open(copy) as project:
        counts = project.counts()
        assert counts["images"]["target/pool"] > 0 and counts["images"]["target/test"] > 0
        assert counts["labelled"] > 0 and project.latest_checkpoint() is not None
        assert [r.finished is not None for r in project.rounds()][:3] == [True, True, True]
        assert all(project.image_path(project.image(i)).exists() for i in project.image_ids()[:20])
        project.add_class("my own class")
    assert install_demo() == copy  # the user's copy is kept...
    with Project.open(copy, readonly=True) as project:
        assert "my own class" in project.class_names()
    install_demo(reset=True)  # ...until they ask for a fresh one
    with Project.open(copy, readonly=True) as project:
        assert "my own class" not in project.class_names()
    assert _digest(bundle) == before


@pytest.mark.parametrize("name", ["bloodcells", "histology", "digits"])
def test_each_demo_has_a_learning_curve_a_baseline_and_work_waiting(name, data_dir):
    from atl_desktop.loop.rounds import open_round
    from atl_desktop.report import learning_curve
    from atl_desktop.store.keys import BASELINE_SETTING, SOURCE_SETTING

    with Project.open(install_demo(name)) as project:
        finished = [r for r in project.rounds() if r.finished is not None]
        curve = learning_curve(finished)
        assert len(curve) >= 3 and all(p["accuracy"] is not None and p["ece"] is not None for p in curve)
        assert [p["labels"] for p in curve] == sorted(p["labels"] for p in curve)
        baseline = project.get_setting(BASELINE_SETTING)
        source = project.get_setting(SOURCE_SETTING)
        if source is None:  # no source model: both curves start from nothing labelled
            assert not project.image_ids("source") and baseline["labels"] == [p["labels"] for p in curve]
        else:
            assert len(baseline["labels"]) == len(curve) + 1 and source["accuracy"] == baseline["accuracy"][0]
        assert baseline["strategy"] == "random"
        pending = open_round(project)
        assert pending is not None and len(project.get_setting("last_query")) > 0
        assert project.pseudo_labels("pending") and project.image_ids("target", "test")
        assert {c.round_id for c in project.checkpoints()} >= {r.id for r in finished}


def test_reset_is_refused_while_the_demo_is_open(data_dir):
    copy = install_demo()
    with Project.open(copy):
        with pytest.raises(ProjectLockedError):
            install_demo(reset=True)
    assert copy.is_file()


def test_atl_demo_prints_the_copy(capsys, data_dir):
    assert atl(["demo"]) == 0
    assert capsys.readouterr().out.strip() == str(data_dir / "demo" / "bloodcells.atl")


def test_self_test_passes_on_a_working_install(capsys):
    from atl_desktop.selftest import run_self_test

    lines = []
    assert run_self_test(lines.append) == 0, "\n".join(lines)
    assert lines[-1] == "self-test passed" and lines[0].startswith("ok    device: ")
    assert any(line.startswith("ok    torchvision backbone") for line in lines)


def test_self_test_fails_with_a_non_zero_status_when_a_check_fails(monkeypatch, capsys):
    import atl_desktop.demo
    from atl_desktop.gui.app import main as desktop

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(atl_desktop.demo, "install_demo", broken)
    assert desktop(["--self-test"]) == 1  # the exit status of `atl-desktop --self-test`
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "self-test FAILED (3 checks)"  # open demo, and the two that need it
    assert any(line.startswith("FAIL  open demo") for line in lines) and "OSError: disk full" in lines
