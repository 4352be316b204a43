"""The default demo: real-resolution blood cell photographs, a useful model, within the size budget."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atl_desktop.demo import DEFAULT_DEMO, DEMOS, bundled_demo, install_demo, resources_dir
from atl_desktop.store import Project

PBC_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
               "platelet"]
BUDGET_BYTES = 25 * 1000 * 1000  # every bundled demo together, as shipped
SHIPPED = ("*.atl", "*.atl.d/**/*", "*.md", "*.csv")  # what pyproject's package-data ships


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ATL_DESKTOP_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def _manifest() -> list[dict]:
    with open(resources_dir() / "demo" / "bloodcells_files.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_bundled_demos_fit_the_size_budget():
    demo = resources_dir() / "demo"
    files = {f for pattern in SHIPPED for f in demo.glob(pattern) if f.is_file()}
    assert {f"{name}.atl" for name in DEMOS} <= {f.name for f in files}
    assert sum(f.stat().st_size for f in files) <= BUDGET_BYTES


def test_bloodcells_is_the_default_and_holds_the_listed_photographs_at_real_resolution():
    assert DEFAULT_DEMO == "bloodcells"
    rows = _manifest()
    with Project.open(bundled_demo("bloodcells"), readonly=True) as project:
        assert project.class_names() == PBC_CLASSES
        assert not project.image_ids("source")
        for split in ("pool", "test"):
            listed = sorted(r["file"] for r in rows if r["split"] == split)
            images = [project.image(i) for i in project.image_ids("target", split)]
            assert sorted(Path(im.original_path).name for im in images) == listed
        names = dict(zip(project.class_index(), project.class_names(), strict=True))
        truth = project.truth()
        by_file = {Path(project.image(i).original_path).name: names[c] for i, c in truth.items()}
        assert by_file == {r["file"]: r["class"] for r in rows}
        assert {r["class"] for r in rows if r["split"] == "test"} == set(PBC_CLASSES)
        for image_id in project.image_ids("target", "pool")[:25]:
            with Image.open(project.image_path(project.image(image_id))) as img:
                assert img.format == "JPEG" and max(img.size) >= 160  # sharp in 170-px tiles


def test_bloodcells_labels_came_from_the_expert_rounds_and_its_model_is_useful(data_dir):
    from atl_desktop.jobs import run_job
    from atl_desktop.transfer.train import evaluate_project

    with Project.open(install_demo("bloodcells")) as project:
        labels = project.current_labels(domain="target", split="pool")
        training = project.current_labels(domain="target", split="pool", for_training=True)
        audit = project.audit_ids()
        finished = [r for r in project.rounds() if r.finished is not None]
        assert 40 <= len(training) <= 80 and not set(training) & audit  # audit images train nothing
        chosen = {i for r in finished for i in r.params["chosen"]}
        assert chosen <= set(labels) and set(labels) - chosen <= audit  # the rest: the audit sample
        assert len(audit & set(labels)) >= 60
        assert finished[0].params.get("cold_start") == "typiclust"  # nothing labelled: typical first
        truth = project.truth()
        assert all(truth[i] == c for i, c in labels.items())
        result = run_job(evaluate_project(project, device="cpu"))
        assert result.n == len(project.image_ids("target", "test"))
        assert result.balanced_accuracy > 0.5  # chance is 1/8
        measured = project.get_setting("demo_measured")
        assert measured["test_balanced_accuracy"] == pytest.approx(result.balanced_accuracy)
        assert measured["checkpoint"] == project.latest_checkpoint().id
        recalls = [r for r in result.per_class_recall if r is not None]
        assert len(recalls) == len(PBC_CLASSES) and np.mean(np.array(recalls) > 0) >= 0.75


def test_the_demo_opens_with_its_audit_estimate_ready(data_dir):
    """The shipped scores of the current model give the audit estimate without any training or
    scoring: the first window shows it."""
    from atl_desktop.loop.session import audit_inputs, cached_audit

    with Project.open(install_demo("bloodcells", reset=True)) as project:
        estimate = cached_audit(audit_inputs(project))
        measured = project.get_setting("demo_measured")
    assert estimate.n >= 60 and not estimate.missing_classes
    assert [estimate.balanced_accuracy.estimate, estimate.balanced_accuracy.lower,
            estimate.balanced_accuracy.upper] == pytest.approx(measured["audit_balanced_accuracy"])

