"""Rounds end to end on a tiny real project: records, resumption after SIGKILL, CEAL bookkeeping, CLI."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from atl_desktop.active.pseudo import PseudoLabelConfig
from atl_desktop.cli import main
from atl_desktop.jobs import run_job
from atl_desktop.loop.rounds import (
    STOP_SET,
    label_from_truth,
    open_round,
    round_state,
    training_labels,
)
from atl_desktop.loop.session import (
    TRAIN_SETTING,
    finish_round_job,
    pseudo_label_job,
    query_job,
    round_job,
)
from atl_desktop.store import Project
from atl_desktop.store.keys import ROUND_STATE
from tests.conftest import PYTHON, ROOT, TESTDATA

TRAIN = {"backbone": "smallcnn", "epochs": 10, "batch_size": 16, "patience": 0, "device": "cpu", "seed": 3}
PSEUDO = PseudoLabelConfig(delta0=2.0, decay=0.0, max_per_class=2)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """USPS digits (200 pool, 100 test, ground truth hidden) after one random round of 20 labels."""
    from atl_desktop.data.importers import ImportOptions, import_source

    folder = tmp_path_factory.mktemp("template")
    with np.load(TESTDATA / "usps_900.npz", allow_pickle=False) as f:
        np.savez(folder / "usps.npz", x_train=f["x_train"][:200], y_train=f["y_train"][:200],
                 x_test=f["x_test"][:100], y_test=f["y_test"][:100], classes=f["classes"])
    path = folder / "p.atl"
    with Project.create(path) as p:
        run_job(import_source(p, folder / "usps.npz", ImportOptions(labels="truth")))
        p.set_setting(TRAIN_SETTING, TRAIN)
        run_job(round_job(p, strategy="random", batch=20, seed=1))
        p.set_setting(TRAIN_SETTING, {**TRAIN, "epochs": 2})  # later rounds: short fine-tunes
    return path


def copy_project(template, folder):
    target = folder / template.name
    shutil.copy(template, target)
    shutil.copytree(template.with_name(template.name + ".d"), target.with_name(target.name + ".d"),
                    ignore=shutil.ignore_patterns("lock"))
    return target


def test_first_round_records_everything(template):
    with Project.open(template, readonly=True) as p:
        (rnd,) = p.rounds()
        assert rnd.finished is not None and rnd.strategy == "random"
        labels = p.current_labels()
        assert len(labels) == 20 and set(rnd.params["chosen"]) == set(labels)
        truth = p.truth()
        assert all(truth[i] == c for i, c in labels.items())  # the oracle used the ground truth
        assert {e.annotator for e in p.label_history()} == {"oracle"}
        m = rnd.metrics
        # 2 of the 20 (1 in 10) are audit images: labelled, measured, never trained on
        audit = p.audit_ids(held_out=True)
        assert len(audit) == 2 and audit <= set(rnd.params["chosen"])
        assert m["labels"] == 20 and m["training_labels"] == 18 and m["train"]["n_train"] == 18
        assert m["train_config"]["epochs"] == 10
        assert m["audit"]["n"] == 2 and m["audit"]["head"] == "model"
        assert m["audit"]["checkpoint_id"] == rnd.checkpoint_id
        assert m["stop"]["rule"]["stop"] is False and "Keep labelling" in m["stop"]["rule"]["reason"]
        test = m["test"]
        assert test["n"] == 100 and 0.0 <= test["accuracy"] <= 1.0
        bins = test["calibration"]["bins"]
        assert len(bins) == 15 and sum(b["count"] for b in bins) == 100
        assert m["stop"]["kappa"] is None  # nothing to compare with yet
        assert len(p.get_setting(STOP_SET)["image_ids"]) == 180  # the unlabelled pool, under 1000
        assert p.get_setting(ROUND_STATE) is None
        ckpt = p.checkpoint(rnd.checkpoint_id)
        assert ckpt.round_id == rnd.id and ckpt.parent_id is None


def test_second_round_with_pseudo_labels_compares_with_the_first(template, tmp_path):
    path = copy_project(template, tmp_path)
    with Project.open(path) as p:
        first = p.rounds()[0]
        summary = run_job(round_job(p, strategy="entropy", batch=10, pseudo=PSEUDO))
        second = p.rounds()[1]
        assert second.finished is not None and summary.round_id == second.id
        assert p.checkpoint(summary.checkpoint_id).parent_id == first.checkpoint_id
        m = second.metrics
        assert m["labels"] == 30
        proposed = [x for x in p.pseudo_labels() if x.round_id == second.id]
        assert m["pseudo_proposed"] == len(proposed) > 0 and m["pseudo_used"] == len(proposed)
        assert m["train"]["n_train"] == 30 - 3 + len(proposed)  # 3 audit images train nothing
        assert not {x.image_id for x in proposed} & p.audit_ids()  # nor are they pseudo-labelled
        assert m["audit"]["n"] == 3
        assert -1.0 <= m["stop"]["kappa"] <= 1.0 and m["stop"]["n"] == 180
        assert not set(second.params["chosen"]) & set(first.params["chosen"])


def _records(path):
    """Everything a round leaves, without times and row ids."""
    with Project.open(path, readonly=True) as p:
        sha = {c.id: c.sha256 for c in p.checkpoints()}
        return {
            "rounds": [(r.strategy, r.params, sha.get(r.checkpoint_id), r.finished is not None, r.metrics)
                       for r in p.rounds()],
            "labels": [(e.image_id, e.class_id, e.kind, e.round_id) for e in p.label_history()],
            "pseudo": [(x.image_id, x.class_id, x.round_id, x.status) for x in p.pseudo_labels(None)],
            "checkpoints": [(c.sha256, sha.get(c.parent_id), c.round_id) for c in p.checkpoints()],
            "state": p.get_setting(ROUND_STATE),
        }


KILLER = """
import os, signal, sys
from atl_desktop.active.pseudo import PseudoLabelConfig
from atl_desktop.jobs import run_job
from atl_desktop.loop.session import round_job
from atl_desktop.store import Project

path, when = sys.argv[1], sys.argv[2]
def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)
def on_commit(step):
    if step == when:
        die()
def on_progress(p):
    if when == "mid-query" and p.message == "query" and p.done >= 1:
        die()  # the pool's scores are partly cached, no round is recorded yet
    if when == "mid-pseudo" and p.message == "pseudo-labelling":
        die()
    if when == "mid-training" and "fine-tuning" in p.message and p.done >= 1:
        die()
    if when == "mid-assess" and p.message.startswith("evaluating"):
        die()
with Project.open(path) as project:
    run_job(round_job(project, strategy="entropy", batch=10, pseudo=PseudoLabelConfig(**{pseudo}),
                      on_commit=on_commit), on_progress=on_progress)
"""


@pytest.fixture(scope="module")
def uninterrupted(template, tmp_path_factory):
    path = copy_project(template, tmp_path_factory.mktemp("reference"))
    with Project.open(path) as p:
        run_job(round_job(p, strategy="entropy", batch=10, pseudo=PSEUDO))
    return _records(path)


# Where the killed process stops -> the step the round has committed (None: no round yet).
KILL_POINTS = {
    "mid-query": None, "queried": "queried", "labelled": "labelled", "mid-pseudo": "labelled",
    "pseudo-labelled": "pseudo-labelled", "mid-training": "pseudo-labelled", "trained": "trained",
    "mid-assess": "trained",
}


@pytest.mark.parametrize("when", list(KILL_POINTS))
def test_a_round_killed_anywhere_resumes_to_the_same_records(template, uninterrupted, tmp_path, when):
    path = copy_project(template, tmp_path)
    script = KILLER.replace("{pseudo}", repr(PSEUDO.to_json()))
    done = subprocess.run([PYTHON, "-c", script, str(path), when], cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    with Project.open(path) as p:
        current = open_round(p)
        if KILL_POINTS[when] is None:
            assert current is None and len(p.rounds()) == 1  # killed before the round was recorded
        else:
            assert round_state(p, current.id).step == KILL_POINTS[when]
        assert p.integrity_ok()
        run_job(round_job(p, strategy="entropy", batch=10, pseudo=PSEUDO))  # resumes, no new query
        assert open_round(p) is None and len(p.rounds()) == 2
    assert _records(path) == uninterrupted


FIRST_ROUND = """
import os, signal, sys
from atl_desktop.jobs import run_job
from atl_desktop.loop.session import finish_round_job
from atl_desktop.store import Project

def on_progress(p):
    if p.message.startswith("fine-tuning") and p.done >= 1:  # the second phase
        os.kill(os.getpid(), signal.SIGKILL)
with Project.open(sys.argv[1]) as project:
    run_job(finish_round_job(project, oracle=True, from_scratch=True), on_progress=on_progress)
"""


def test_a_round_killed_between_its_training_phases_resumes_to_the_same_records(tmp_path):
    """Training from scratch with source images has two phases (source pre-training, then
    fine-tuning), the first recorded as a checkpoint of its own: the resumed round must
    neither train it again nor start the second phase anywhere else."""
    from atl_desktop.data.importers import ImportOptions, import_source

    with np.load(TESTDATA / "usps_900.npz", allow_pickle=False) as f:
        np.savez(tmp_path / "usps.npz", x_train=f["x_train"][:60], y_train=f["y_train"][:60],
                 x_test=f["x_test"][:40], y_test=f["y_test"][:40], classes=f["classes"])
    with np.load(TESTDATA / "mnist_600.npz", allow_pickle=False) as f:
        np.savez(tmp_path / "mnist.npz", x=f["x"][:100], y=f["y"][:100], classes=f["classes"])
    fresh = tmp_path / "fresh" / "p.atl"
    fresh.parent.mkdir()
    with Project.create(fresh) as p:
        run_job(import_source(p, tmp_path / "usps.npz", ImportOptions(labels="truth")))
        run_job(import_source(p, tmp_path / "mnist.npz", ImportOptions(domain="source")))
        p.set_setting(TRAIN_SETTING, {**TRAIN, "epochs": 2})
        run_job(query_job(p, strategy="random", batch=10, seed=2))
    (tmp_path / "reference").mkdir()
    reference = copy_project(fresh, tmp_path / "reference")
    with Project.open(reference) as p:
        run_job(finish_round_job(p, oracle=True, from_scratch=True))
        phases = [c.config["phase"] for c in p.checkpoints()]
    assert phases == ["source pre-training", "fine-tuning"]

    done = subprocess.run([PYTHON, "-c", FIRST_ROUND, str(fresh)], cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    with Project.open(fresh) as p:
        assert [c.config["phase"] for c in p.checkpoints()] == ["source pre-training"]
        assert round_state(p, open_round(p).id).step == "labelled"
        run_job(finish_round_job(p, oracle=True, from_scratch=True))  # the recorded phase is kept
        assert len(p.checkpoints()) == 2
    assert _records(fresh) == _records(reference)


def test_accepted_and_rejected_pseudo_labels_are_kept_apart(template, tmp_path):
    path = copy_project(template, tmp_path)
    with Project.open(path) as p:
        result = run_job(query_job(p, strategy="random", batch=5, seed=4))
        label_from_truth(p, result.round_id)
        n = run_job(pseudo_label_job(p, config=PseudoLabelConfig(delta0=10.0, decay=0.0, max_per_class=1)))
        pending = p.pseudo_labels()
        assert n == len(pending) >= 6 and all(x.round_id == result.round_id for x in pending)
        accepted, rejected, relabelled = pending[:2], pending[2:4], pending[4]
        p.accept_pseudo([x.id for x in accepted])
        p.reject_pseudo([x.id for x in rejected])
        other = next(c.id for c in p.classes() if c.id != relabelled.class_id)
        p.set_label(relabelled.image_id, other)  # the expert labels a proposed image differently
        labels, pseudo = training_labels(p, result.round_id)
        still_pending = {x.image_id: x.class_id for x in pending[5:]}
        assert pseudo == still_pending
        assert all(labels[x.image_id] == x.class_id for x in accepted)
        assert not {x.image_id for x in rejected} & (set(labels) | set(pseudo))
        assert labels[relabelled.image_id] == other and relabelled.image_id not in pseudo
        assert len(labels) == 20 + 5 + 2 + 1 - 2  # the first round's 2 audit images train nothing
        summary = run_job(finish_round_job(p))
        m = p.checkpoint(summary.checkpoint_id).metrics
        assert m["n_pseudo"] == len(still_pending) and m["n_train"] == len(labels) + len(still_pending)
        assert {x.id for x in p.pseudo_labels("rejected")} == {x.id for x in rejected}
        assert {x.id for x in p.pseudo_labels("accepted")} == {x.id for x in accepted}


def test_train_command_refuses_a_round_nobody_labelled(template, tmp_path, capsys):
    path = copy_project(template, tmp_path)
    assert main(["round", "train", str(path), "--quiet"]) == 1
    assert "No open round" in capsys.readouterr().err
    with Project.open(path) as p:
        run_job(query_job(p, strategy="random", batch=3))
    assert main(["round", "train", str(path), "--quiet"]) == 1
    assert "none of its 3 chosen images is labelled yet" in capsys.readouterr().err


def test_round_commands(template, tmp_path, capsys):
    path = copy_project(template, tmp_path)
    assert main(["round", "query", str(path), "--strategy", "margin", "--batch", "4", "--json", "--quiet"]) == 0
    chosen = [x["id"] for x in json.loads(capsys.readouterr().out)["images"]]
    assert main(["round", "query", str(path), "--strategy", "random", "--batch", "4", "--quiet"]) == 1
    assert "still open" in capsys.readouterr().err
    with Project.open(path) as p:
        truth = p.truth()
        for image_id in chosen[:3]:
            p.set_label(image_id, truth[image_id])
    assert main(["round", "status", str(path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["open"]["chosen"] == 4 and status["open"]["labelled"] == 3
    assert main(["round", "train", str(path), "--pseudo", "--json", "--quiet", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["labels"] == 23 and "test" in out["metrics"]
    assert main(["round", "status", str(path)]) == 0
    text = capsys.readouterr().out
    assert "No open round" in text and "round 2 (margin): 23 labels" in text


def test_assessment_fits_a_temperature_on_validation_labels(template, tmp_path):
    from atl_desktop.active.calibration import (
        apply_temperature,
        calibration_summary,
        fit_temperature,
    )
    from atl_desktop.data.importers import ImportOptions, import_source
    from atl_desktop.loop.rounds import (
        assess_job,
        calibration_job,
        calibration_words,
        checkpoint_temperature,
        predict_probs,
    )
    from atl_desktop.models.checkpoints import load_checkpoint
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.transfer.train import project_eval_dataset

    path = copy_project(template, tmp_path)
    with np.load(TESTDATA / "usps_900.npz", allow_pickle=False) as f:
        np.savez(tmp_path / "val.npz", x_val=f["x_train"][200:280], y_val=f["y_train"][200:280],
                 classes=f["classes"])
    with Project.open(path) as p:
        checkpoint = p.latest_checkpoint().id
        metrics = run_job(assess_job(p, checkpoint, None))
        assert "temperature" not in metrics  # no validation labels yet: nothing to fit on
        run_job(import_source(p, tmp_path / "val.npz", ImportOptions(labels="labels")))
        metrics = run_job(assess_job(p, checkpoint, None))
        # independently: the checkpoint's validation and test probabilities, fitted and scaled here
        model, _ = load_checkpoint(p, checkpoint, classes=p.class_names())
        val = project_eval_dataset(p, "val", input_transform(model.spec))
        test = project_eval_dataset(p, "test", input_transform(model.spec))
        t = fit_temperature(run_job(predict_probs(model, val)), val.labels, from_probs=True)
        test_probs = run_job(predict_probs(model, test))
        evaluated = run_job(calibration_job(p, checkpoint, "test"))  # what `atl evaluate` prints
    fitted = metrics["temperature"]
    assert fitted["n"] == 80 and fitted["fitted_on"] == "80 labelled validation images"
    assert fitted["temperature"] == pytest.approx(t, rel=1e-4) and fitted["nll_after"] <= fitted["nll_before"]
    scaled = metrics["test"]["calibration"]["scaled"]
    expected = calibration_summary(apply_temperature(test_probs, t), test.labels)["ece"]
    assert scaled["ece"] == pytest.approx(expected, abs=1e-4) and scaled["temperature"] == fitted["temperature"]
    assert metrics["test"]["calibration"]["ece"] != pytest.approx(scaled["ece"], abs=1e-3)
    assert evaluated["ece_scaled"] == pytest.approx(scaled["ece"]) and evaluated["ece"] == pytest.approx(
        metrics["test"]["calibration"]["ece"])
    assert calibration_words(evaluated) == (
        f"Calibration: ECE {evaluated['ece']:.2f} → {scaled['ece']:.2f} (T = {t:.2g}), "
        "T fitted on 80 labelled validation images")
    with Project.open(path) as p:  # kept with the round that assessed the checkpoint
        assert checkpoint_temperature(p, checkpoint) == 1.0  # the round recorded no temperature
        round_id = p.start_round("random", {"chosen": []}, checkpoint_id=checkpoint)
        p.finish_round(round_id, metrics, checkpoint_id=checkpoint)
        assert checkpoint_temperature(p, checkpoint) == pytest.approx(t, rel=1e-4)
