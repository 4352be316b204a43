"""`atl score` and `atl train` over 2 processes (torchrun, gloo on CPU) against one process,
and a rank that crashes: the job fails with a clear message and the project is unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atl_desktop.active.scoring import ScoringConfig, load_scores, score_pool, scores_dir
from atl_desktop.cli import main
from atl_desktop.data.datasets import project_dataset
from atl_desktop.jobs import run_job
from atl_desktop.models import build_model
from atl_desktop.models.checkpoints import load_checkpoint, save_checkpoint
from atl_desktop.models.transforms import input_transform
from atl_desktop.store import Project
from atl_desktop.store.files import sha256_file
from atl_desktop.transfer.train import TrainConfig, train_project

TESTDATA = Path(__file__).resolve().parents[3] / "resources" / "testdata"
DIGITS = [str(i) for i in range(10)]
N_POOL, N_LABELLED = 48, 32

pytestmark = pytest.mark.slow  # each torchrun start costs seconds


@pytest.fixture
def digits(tmp_path) -> Path:
    """48 MNIST digits in the target pool, the first 32 labelled; a random smallcnn checkpoint."""
    mnist = np.load(TESTDATA / "mnist_600.npz", allow_pickle=False)
    path = tmp_path / "digits.atl"
    with Project.create(path) as project:
        class_ids = [project.add_class(name) for name in DIGITS]
        with project.transaction():
            for i in range(N_POOL):
                image = tmp_path / "images" / f"{i:03d}.png"
                image.parent.mkdir(exist_ok=True)
                Image.fromarray(mnist["x"][i]).save(image)
                image_id, _ = project.add_image(
                    sha256=sha256_file(image), location=project.relative_location(image),
                    original_path=str(image), width=28, height=28, mode="L", bit_depth=8)
                if i < N_LABELLED:
                    project.set_label(image_id, class_ids[int(mnist["y"][i])])
        save_checkpoint(project, build_model("smallcnn", 10, seed=0), classes=DIGITS, config={})
    return path


def dump(path: Path) -> list[str]:
    """The whole database as SQL: equal dumps, an unchanged project."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_two_process_scoring_fails_cleanly_on_a_crash_then_equals_one_process(digits, capsys):
    victim = digits.parent / "images" / f"{N_POOL - 1:03d}.png"  # in rank 1's block
    good = victim.read_bytes()
    victim.write_bytes(good[:40])  # a truncated file: rank 1 raises while reading it
    before = dump(digits)
    code = main(["score", str(digits), "--nproc-per-node", "2", "--device", "cpu", "--quiet"])
    error = capsys.readouterr().err
    assert code == 1
    assert "Distributed job failed: rank 1 of 2" in error and victim.name in error
    assert "the project is unchanged" in error
    assert dump(digits) == before
    scores = digits.with_name(digits.name + ".d") / "scores"
    assert not scores.exists() or not list(scores.iterdir())

    victim.write_bytes(good)
    assert main(["score", str(digits), "--nproc-per-node", "2", "--device", "cpu", "--quiet"]) == 0
    assert "cached by 2 processes" in capsys.readouterr().out
    with Project.open(digits, readonly=True) as project:
        model, record = load_checkpoint(project)
        cache = scores_dir(project.data_dir, record.sha256, ScoringConfig())
        dataset = project_dataset(project, labelled=None, transform=input_transform(model.spec))
        assert len(list(cache.glob("part-*"))) == 1  # rank 0 merged the shards into one part
        two = load_scores(cache, dataset.image_ids)
        one = run_job(score_pool(model, dataset, digits.parent / "single",
                                 config=ScoringConfig(device="cpu")))
    assert isinstance(two.probs, np.memmap) and len(two.image_ids) == N_POOL
    np.testing.assert_allclose(two.probs, one.probs, atol=1e-5)
    np.testing.assert_allclose(two.features, one.features, atol=1e-4)


def test_two_process_epoch_sees_as_many_images_and_records_one_checkpoint(digits, capsys):
    config = TrainConfig(backbone="smallcnn", weights=None, epochs=1, batch_size=16, device="cpu",
                         patience=0)
    with Project.open(digits) as project:
        alone = run_job(train_project(project, config, from_scratch=True))
        before = len(project.checkpoints())
    code = main(["train", str(digits), "--backbone", "smallcnn", "--weights", "none", "--epochs", "1",
                 "--batch-size", "16", "--device", "cpu", "--from-scratch", "--nproc-per-node", "2",
                 "--quiet", "--json"])
    assert code == 0, capsys.readouterr().err
    with Project.open(digits, readonly=True) as project:
        added = project.checkpoints()[before:]
        assert len(added) == 1  # saved once, by one process
        record = added[0]
        assert project.latest_checkpoint().id == record.id
        model, _ = load_checkpoint(project, record.id)  # a whole, loadable model
    assert record.config["processes"] == 2 and record.parent_id is None
    assert record.metrics["samples_seen"] == alone.metrics["samples_seen"] == N_LABELLED
    assert record.metrics["steps"] == alone.metrics["steps"] == N_LABELLED // 16
    assert record.metrics["n_train"] == N_LABELLED


def test_asking_for_processes_inside_a_torchrun_rank_is_refused(digits, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["score", str(digits), "--nproc-per-node", "2", "--quiet"])
    assert code == 1 and "already rank 0 of 2" in capsys.readouterr().err
