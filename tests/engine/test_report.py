"""`atl report`: counts by annotator worked out by hand, a self-contained HTML file, the
current model evaluated only when no round assessed it."""

import base64
import hashlib
import re

import numpy as np
import pytest
from PIL import Image

from atl_desktop.cli import main as atl
from atl_desktop.data.importers import ImportOptions, import_source
from atl_desktop.jobs import run_job
from atl_desktop.loop.session import TRAIN_SETTING, round_job, train_job
from atl_desktop.report import REFERENCES, gather, labels_by_annotator, render_html, report_job
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import BASELINE_SETTING
from tests.conftest import TESTDATA

TRAIN = {"backbone": "smallcnn", "epochs": 2, "batch_size": 16, "patience": 0, "device": "cpu", "seed": 5}


def _hand_project(folder):
    """Four images; alice, bob and an import label them; alice overrides one of bob's."""
    images = folder / "images"
    images.mkdir()
    for k in range(4):
        Image.fromarray(np.full((8, 8), 40 * k, dtype=np.uint8)).save(images / f"{k}.png")
    path = folder / "hand.atl"
    with Project.create(path) as p:
        run_job(import_source(p, images, ImportOptions()))
        cat, dog = p.add_class("cat"), p.add_class("dog")
        ids = p.image_ids()
        p.set_label(ids[0], cat, annotator="alice")
        p.set_label(ids[1], dog, annotator="bob")
        p.set_label(ids[1], cat, annotator="alice")  # the newest label counts
        p.set_label(ids[2], dog, kind="import", annotator="labels.csv")
        p.set_label(ids[3], dog, annotator="bob")
        p.set_label(ids[3], None, annotator="bob")  # cleared: counts for nobody
    return path, images


def _pngs(text):
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_labels_by_annotator_counts_the_newest_label_of_each_image(tmp_path):
    path, _ = _hand_project(tmp_path)
    with Project.open(path) as p:
        assert labels_by_annotator(p) == {"alice": {"cat": 2}, "imported (labels.csv)": {"dog": 1}}


def test_report_of_a_project_without_model_says_so_and_hashes_every_image(tmp_path):
    path, images = _hand_project(tmp_path)
    digests = sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in images.glob("*.png"))
    with Project.open(path) as p:
        facts = gather(p)
        out = run_job(report_job(p, tmp_path / "r.html"))
    assert facts["images"]["combined"] == hashlib.sha256("\n".join(digests).encode()).hexdigest()
    text = out.read_text()
    assert all(d in text for d in digests) and facts["images"]["combined"] in text
    assert "No round has finished" in text and "Not assessed" in text
    assert "<td>alice</td>" not in text and "<th>alice</th>" in text  # a column per annotator
    assert _pngs(text) == []  # nothing to draw


def test_report_refuses_a_file_that_is_not_html(tmp_path):
    path, _ = _hand_project(tmp_path)
    with Project.open(path) as p, pytest.raises(ProjectError, match="HTML"):
        run_job(report_job(p, tmp_path / "r.pdf"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """USPS digits (150 pool, 80 test as hidden truth) after two rounds, with a baseline recorded."""
    folder = tmp_path_factory.mktemp("digits")
    with np.load(TESTDATA / "usps_900.npz", allow_pickle=False) as f:
        np.savez(folder / "usps.npz", x_train=f["x_train"][:150], y_train=f["y_train"][:150],
                 x_test=f["x_test"][:80], y_test=f["y_test"][:80], classes=f["classes"])
    path = folder / "d.atl"
    with Project.create(path) as p:
        run_job(import_source(p, folder / "usps.npz", ImportOptions(labels="truth")))
        p.set_setting(TRAIN_SETTING, TRAIN)
        for strategy in ("random", "entropy"):
            run_job(round_job(p, strategy=strategy, batch=10, seed=7))
        p.set_setting(BASELINE_SETTING, {"strategy": "random", "seed": 7, "labels": [10, 20],
                                         "accuracy": [0.25, 0.5], "how": "by hand for the test"})
    return path


def test_report_holds_curve_calibration_confusion_methods_and_versions(digits, tmp_path):
    with Project.open(digits, readonly=True) as p:
        facts = gather(p)
        out = run_job(report_job(p, tmp_path / "d.html"))
    text = out.read_text()
    assert [point["labels"] for point in facts["curve"]] == [10, 20]
    assert facts["assessed"]["checkpoint"] == facts["current_checkpoint"]  # the last round assessed it
    pngs = _pngs(text)
    assert len(pngs) == 3 and all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)
    for words in ("random sampling", "by hand for the test", REFERENCES["calibration"][:40],
                  REFERENCES["stopping"][:40], REFERENCES["ceal"][:40], "torch", "numpy"):
        assert words in text
    for checkpoint in facts["checkpoints"]:
        assert checkpoint["sha256"] in text
    # Self-contained: no external files, scripts or style sheets.
    assert not re.search(r'(src|href)="(?!data:)', text) and "<script" not in text and "<link" not in text


def test_a_checkpoint_no_round_assessed_is_evaluated_for_the_report(digits, tmp_path):
    import shutil

    from atl_desktop.transfer.train import evaluate_project

    copy = tmp_path / "d.atl"
    shutil.copy(digits, copy)
    shutil.copytree(digits.with_name("d.atl.d"), tmp_path / "d.atl.d", ignore=shutil.ignore_patterns("lock"))
    with Project.open(copy) as p:
        checkpoint = run_job(train_job(p))  # no open round: plain training
        expected = run_job(evaluate_project(p, checkpoint_id=checkpoint))
        out = run_job(report_job(p, tmp_path / "r.html"))
        facts = gather(p)
        assert facts["assessed"]["checkpoint"] != checkpoint  # recorded: the last round's
        recorded_only = render_html(facts, {})
    text = out.read_text()
    assert f"Checkpoint {checkpoint} (evaluated for this report)" in text
    assert f"accuracy {expected.accuracy:.3f}" in text
    assert "it has no test assessment" in recorded_only


def test_atl_report_writes_beside_the_project(digits, capsys):
    assert atl(["report", str(digits), "--quiet"]) == 0
    out = digits.with_name("d-report.html")
    assert capsys.readouterr().out.strip() == f"Wrote {out}" and out.read_text().startswith("<!DOCTYPE html>")
    assert atl(["report", str(digits.with_name("missing.atl"))]) == 1


def test_the_report_says_ece_before_and_after_temperature_scaling(digits):
    with Project.open(digits, readonly=True) as p:
        facts = gather(p)
    calibration = facts["assessed"]["test"]["calibration"]
    text = render_html(facts, {})
    assert f"ECE {calibration['ece']:.2f}, not temperature-scaled" in text  # no validation labels here
    calibration["scaled"] = {"ece": 0.0412, "temperature": 1.8205, "fitted_on": "80 labelled validation images",
                             "bins": calibration["bins"]}
    text = render_html(facts, {})
    assert (f"ECE {calibration['ece']:.2f} → 0.04 (T = 1.8), T fitted on 80 labelled validation images"
            in text)
