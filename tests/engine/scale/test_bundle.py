"""atl pack / atl unpack-results: a bundle runs as a project elsewhere; its checkpoints,
metrics and score caches come back with their provenance; another state is refused."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atl_desktop.active.scoring import ScoringConfig, load_scores, scores_dir
from atl_desktop.cli import main
from atl_desktop.jobs import Cancelled, run_job
from atl_desktop.loop.session import ModelChoice, score_job
from atl_desktop.models import build_model
from atl_desktop.models.checkpoints import load_checkpoint, save_checkpoint
from atl_desktop.scale.bundle import pack, state_fingerprint, unpack_results
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.files import sha256_file

TESTDATA = Path(__file__).resolve().parents[3] / "resources" / "testdata"
CLASSES = ["a", "b", "c"]


def make_project(folder: Path, n: int = 12, offset: int = 0) -> Path:
    mnist = np.load(TESTDATA / "mnist_600.npz", allow_pickle=False)
    folder.mkdir(parents=True, exist_ok=True)
    with Project.create(folder / "lab.atl") as project:
        ids = [project.add_class(name) for name in CLASSES]
        with project.transaction():
            for i in range(n):
                image = folder / "images" / f"{i}.png"
                image.parent.mkdir(exist_ok=True)
                Image.fromarray(mnist["x"][offset + i]).save(image)
                image_id, _ = project.add_image(
                    sha256=sha256_file(image), location=project.relative_location(image),
                    original_path=str(image), width=28, height=28, mode="L", bit_depth=8)
                if i < 6:
                    project.set_label(image_id, ids[i % 3])
        project.set_setting("train_config", {"backbone": "smallcnn", "epochs": 2})
        save_checkpoint(project, build_model("smallcnn", 3, seed=0), classes=CLASSES, config={})
    return folder / "lab.atl"


@pytest.fixture
def lab(tmp_path) -> Path:
    return make_project(tmp_path / "lab")


def remote_work(bundle: Path) -> tuple[str, np.ndarray]:
    """What a cluster run does in the bundle: a new checkpoint (child of the packed one) and
    scores of the pool with it. Returns (its sha256, its probabilities)."""
    with Project.open(bundle / "project.atl") as remote:
        parent = remote.latest_checkpoint()
        model, _ = load_checkpoint(remote, parent.id)
        for p in model.head.parameters():
            p.data.add_(0.5)
        new = save_checkpoint(remote, model, classes=CLASSES, parent_id=parent.id,
                              config={"phase": "fine-tuning", "processes": 8},
                              metrics={"val_accuracy": 0.75, "samples_seen": 6})
        scored = run_job(score_job(remote, model=ModelChoice(new), config=ScoringConfig(device="cpu")))
        return remote.checkpoint(new).sha256, np.array(scored.target.probs)


def test_pack_then_unpack_brings_checkpoints_metrics_and_scores_back(lab, tmp_path):
    with Project.open(lab, readonly=True) as project:
        info = run_job(pack(project, tmp_path / "bundle"))
        packed = project.latest_checkpoint()
    bundle = tmp_path / "bundle"
    assert info["images"] == 12 and info["checkpoint"] == packed.id
    rows = list(csv.DictReader((bundle / "manifest.csv").read_text().splitlines()))
    assert [r["label"] for r in rows[:7]] == ["a", "b", "c", "a", "b", "c", ""]
    shutil.rmtree(lab.parent / "images")  # the bundle holds copies: it no longer needs the originals
    with Project.open(bundle / "project.atl", readonly=True) as remote:
        assert remote.check_files() == {"missing": [], "changed": []}
        assert state_fingerprint(remote) == info["fingerprint"]  # the same state, elsewhere
        assert json.loads((bundle / "bundle.json").read_text())["settings"]["train_config"]["epochs"] == 2
    sha, probs = remote_work(bundle)

    with Project.open(lab) as project:
        merged = unpack_results(project, bundle)
        record = project.latest_checkpoint()
        assert merged["checkpoints"] == [record.id] and record.sha256 == sha
        assert record.parent_id == packed.id
        assert record.metrics == {"val_accuracy": 0.75, "samples_seen": 6}
        assert record.config["processes"] == 8
        assert record.config["provenance"]["bundle_id"] == info["id"]
        assert record.config["provenance"]["state"] == info["fingerprint"]
        load_checkpoint(project, record.id)  # the file came along, intact
        table = load_scores(scores_dir(project.data_dir, sha, ScoringConfig()), project.image_ids())
        np.testing.assert_array_equal(np.asarray(table.probs), probs)
        assert project.get_setting("imported_bundles")[0]["checkpoints"] == [record.id]
        with pytest.raises(ProjectError, match="already merged"):
            unpack_results(project, bundle)


def test_a_bundle_from_another_state_or_project_is_refused_and_nothing_changes(lab, tmp_path):
    with Project.open(lab, readonly=True) as project:
        run_job(pack(project, tmp_path / "bundle"))
    remote_work(tmp_path / "bundle")
    with Project.open(lab) as project:
        project.set_label(project.image_ids()[8], project.classes()[0].id)  # labelled since packing
        checkpoints = project.checkpoints()
        with pytest.raises(ProjectError, match="another state of the project"):
            unpack_results(project, tmp_path / "bundle")
        assert project.checkpoints() == checkpoints
        assert project.get_setting("imported_bundles") is None
        assert not (project.data_dir / "scores").exists()
    other = make_project(tmp_path / "other", offset=50)
    with Project.open(other) as project:
        assert main(["unpack-results", str(other), str(tmp_path / "bundle")]) == 1  # CLI: one line
        assert len(project.checkpoints()) == 1


def test_referenced_images_keep_absolute_paths_with_prefixes_mapped(lab, tmp_path, capsys):
    code = main(["pack", str(lab), str(tmp_path / "ref"), "--images", "reference", "--quiet",
                 "--map-prefix", f"{lab.parent}=/cluster/lab"])
    assert code == 0 and "atl unpack-results" in capsys.readouterr().out
    with Project.open(tmp_path / "ref" / "project.atl", readonly=True) as remote:
        paths = [str(remote.image_path(r)) for r in remote.images()]
    assert paths[0] == "/cluster/lab/images/0.png" and not (tmp_path / "ref" / "project.atl.d" / "media").exists()
    assert main(["pack", str(lab), str(tmp_path / "ref"), "--quiet"]) == 1  # never overwritten


def test_a_cancelled_pack_leaves_no_bundle(lab, tmp_path):
    seen = []
    with Project.open(lab, readonly=True) as project:
        with pytest.raises(Cancelled):  # while the images are being copied
            run_job(pack(project, tmp_path / "bundle"), seen.append, lambda: len(seen) == 2)
    assert seen[-1].message == "placing images"
    assert list(tmp_path.iterdir()) == [lab.parent]
