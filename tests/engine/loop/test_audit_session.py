"""The audit sample in queries, training and the estimate, over a real (tiny) project."""

import numpy as np
import pytest

from atl_desktop.data.datasets import project_dataset
from atl_desktop.jobs import run_job
from atl_desktop.loop.rounds import discard_round, label_from_truth, training_labels
from atl_desktop.loop.session import (
    AUDIT_REASON,
    audit_job,
    live_head,
    live_suggestions,
    query_job,
    unlabelled_pool,
)
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import AUDIT_SHARE_SETTING
from tests.conftest import TESTDATA


def _new_project(path):
    import torch

    from atl_desktop.data.importers import ImportOptions, import_source
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    p = Project.create(path)
    run_job(import_source(p, TESTDATA / "pathmnist_270.npz",
                          ImportOptions(domain="target", split="pool", labels="truth")))
    torch.manual_seed(0)
    save_checkpoint(p, build_model("smallcnn", len(p.class_names())), classes=p.class_names(), seed=0)
    return p


@pytest.fixture
def project(tmp_path):
    with _new_project(tmp_path / "p.atl") as p:
        yield p


def _audit_items(result):
    return [it.image_id for it in result.items if it.reason == AUDIT_REASON]


def test_one_in_ten_is_drawn_at_random_marked_and_shown_without_a_suggestion(project, tmp_path):
    result = run_job(query_job(project, strategy="entropy", batch=20, seed=5))
    audit = _audit_items(result)
    assert len(result.items) == 20 and len(audit) == 2
    assert all(not it.top for it in result.items if it.image_id in audit)  # no suggestion to lean on
    assert project.audit_ids() == set(audit)
    (rnd,) = project.rounds()
    assert rnd.params["audit"] == {"images": audit, "share": 0.1, "seed": 5}
    assert {r.round_id for r in project.audit_images()} == {rnd.id}
    assert not set(audit) & set(rnd.params["shown"])
    # the same seed draws the same audit images; another seed other ones
    with _new_project(tmp_path / "same.atl") as same:
        assert _audit_items(run_job(query_job(same, strategy="entropy", batch=20, seed=5))) == audit
    with _new_project(tmp_path / "other.atl") as other:
        assert _audit_items(run_job(query_job(other, strategy="entropy", batch=20, seed=6))) != audit


def test_the_share_adds_up_over_small_batches_and_discarded_audits_come_back(project):
    drawn = []
    for seed in range(4):  # 5 images a round: the 10th and the 20th image are audit images
        result = run_job(query_job(project, strategy="random", batch=5, seed=seed))
        drawn.append(_audit_items(result))
        discard_round(project)
    assert [len(d) for d in drawn] == [0, 1, 0, 1]
    assert drawn[3] == drawn[1]  # still unlabelled: offered again before any new draw
    project.set_setting(AUDIT_SHARE_SETTING, 0.0)
    assert _audit_items(run_job(query_job(project, strategy="random", batch=20))) == []
    discard_round(project)
    project.set_setting(AUDIT_SHARE_SETTING, 2)
    with pytest.raises(ProjectError, match="between 0 and 1"):
        run_job(query_job(project, strategy="random", batch=20))


def test_audit_labels_train_nothing_until_released(project):
    result = run_job(query_job(project, strategy="random", batch=20, seed=1))
    audit = _audit_items(result)
    label_from_truth(project, result.round_id)
    unlabelled, labels = unlabelled_pool(project)
    assert not set(audit) & set(unlabelled.tolist()) and not set(audit) & set(labels)
    train, _ = training_labels(project, result.round_id)
    assert len(train) == 18 and not set(audit) & set(train)
    dataset = project_dataset(project, for_training=True)
    assert len(dataset) == 18 and not set(audit) & set(dataset.image_ids)
    assert len(project_dataset(project)) == 20  # every label, for views and exports
    project.release_audit()
    assert set(audit) <= set(training_labels(project, result.round_id)[0])


def test_the_live_head_learns_without_audit_labels_and_suggests_nothing_for_them(project):
    result = run_job(query_job(project, strategy="random", batch=20, seed=2, head="logreg"))
    audit = _audit_items(result)
    label_from_truth(project, result.round_id)
    live = live_head(project, result.round_id)
    assert len(live.labels) == 18 and not set(audit) & set(live.labels)
    pool = project.image_ids()
    suggested = live_suggestions(live, pool)
    assert suggested and not set(audit) & set(suggested)


def test_audit_estimate_compares_the_model_with_the_audit_labels(project):
    with pytest.raises(ProjectError, match="no labelled audit images yet"):
        run_job(audit_job(project))
    for seed in range(3):
        result = run_job(query_job(project, strategy="random", batch=20, seed=seed))
        label_from_truth(project, result.round_id)
        discard_round(project)
    audit = sorted(project.audit_ids())
    assert len(audit) == 6
    estimate = run_job(audit_job(project, head="model")).estimate
    truth = project.truth()
    position = project.class_index()
    assert estimate.n == 6
    assert sum(c.count for c in estimate.per_class) == 6
    assert [c.count for c in estimate.per_class] == list(
        np.bincount([position[truth[i]] for i in audit], minlength=len(position)))
    # an independent computation: the checkpoint's cached probabilities on the audit images
    from atl_desktop.active.scoring import ScoringConfig
    from atl_desktop.loop.session import score_job

    table = run_job(score_job(project, config=ScoringConfig())).target
    preds = np.asarray(table.probs[table.rows(audit)]).argmax(1)
    right = int(sum(preds[k] == position[truth[i]] for k, i in enumerate(audit)))
    assert estimate.accuracy.estimate == pytest.approx(right / 6)
    project.release_audit()
    with pytest.raises(ProjectError, match="no labelled audit images yet"):
        run_job(audit_job(project))


def test_the_window_s_estimate_from_cached_scores_matches_the_job(project):
    from atl_desktop.loop.session import audit_inputs, cached_audit

    assert audit_inputs(project) is None  # nothing labelled yet
    for seed in range(2):
        result = run_job(query_job(project, strategy="random", batch=20, seed=seed, head="logreg"))
        label_from_truth(project, result.round_id)
        discard_round(project)
    project.release_audit([min(project.audit_ids())])  # released: no longer in the estimate
    inputs = audit_inputs(project)
    # the checkpoint's head predicts the project's classes: its own scores, as audit_job's "auto"
    assert len(inputs.ids) == 3 and inputs.head == "model" and not set(inputs.ids.tolist()) & set(inputs.train)
    cached = cached_audit(inputs)
    measured = run_job(audit_job(project)).estimate
    assert cached.n == measured.n == 3
    assert cached.accuracy == measured.accuracy and cached.per_class == measured.per_class


def test_audit_commands_show_release_and_set(project, capsys):
    import json

    from atl_desktop.cli import main

    path = str(project.path)
    project.close()
    assert main(["audit", "show", path, "--quiet"]) == 1
    assert "no labelled audit images yet" in capsys.readouterr().err
    with Project.open(path) as p:
        result = run_job(query_job(p, strategy="random", batch=20, seed=3))
        label_from_truth(p, result.round_id)
        audit = sorted(p.audit_ids())
    assert main(["audit", "show", path, "--json", "--quiet"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["n"] == 2 and shown["head"] == "model" and len(shown["per_class"]) == 9
    assert main(["audit", "show", path, "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("2 audit labels: accuracy")
    assert main(["info", path, "--no-check"]) == 0
    assert "audit images: 2 held out of training (2 labelled), 0 released" in capsys.readouterr().out
    assert main(["audit", "set", path, "--share", "0.2", "--width", "0.05", "--target", "0.9"]) == 0
    assert "Audit share 20%" in capsys.readouterr().out
    assert main(["audit", "set", path, "--share", "1.5"]) == 1
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(["audit", "release", path]) == 0
    assert "Released 2 audit images" in capsys.readouterr().out
    with Project.open(path) as p:
        assert p.audit_ids(held_out=False) == set(audit)
        assert p.get_setting("audit_share") == 0.2 and p.get_setting("stop_rule") == {"width": 0.05, "target": 0.9}


def test_info_shows_the_recorded_estimate_and_rule():
    from atl_desktop.commands.project import format_audit

    estimate = {
        "n": 10, "accuracy": {"estimate": 0.8, "lower": 0.4902, "upper": 0.9433},
        "balanced_accuracy": {"estimate": 0.75, "lower": 0.5, "upper": 0.9}}
    lines = format_audit({"drawn": 12, "held_out": 10, "labelled": 10},
                         {"round": 3, "estimate": estimate,
                          "rule": {"reason": "Keep labelling: predictions still change between rounds; x."}})
    assert lines[0] == "  audit images: 10 held out of training (10 labelled), 2 released"
    assert lines[1] == ("    round 3's model on 10 audit labels: accuracy 80.0% (95 % CI 49.0%–94.3%), "
                        "balanced accuracy 75.0% (50.0%–90.0%)")
    assert lines[2].strip().startswith("Keep labelling")
    assert format_audit({"drawn": 0, "held_out": 0, "labelled": 0}, None) == [
        "  audit images: 0 held out of training (0 labelled), 0 released"]
