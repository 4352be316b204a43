"""The round's steps over a real (tiny) project: query with reasons, pseudo-labels."""

import numpy as np
import pytest

from atl_desktop.active.pseudo import PseudoLabelConfig
from atl_desktop.jobs import run_job
from atl_desktop.loop.rounds import discard_round
from atl_desktop.loop.session import pseudo_label_job, query_job, unlabelled_pool
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import AUDIT_SHARE_SETTING, SKIPPED_SETTING
from tests.conftest import TESTDATA


@pytest.fixture
def project(tmp_path):
    import torch

    from atl_desktop.data.importers import ImportOptions, import_source
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    with Project.create(tmp_path / "p.atl") as p:
        run_job(import_source(p, TESTDATA / "pathmnist_270.npz",
                              ImportOptions(domain="target", split="pool", labels="truth")))
        torch.manual_seed(0)
        model = build_model("smallcnn", len(p.class_names()))
        save_checkpoint(p, model, classes=p.class_names(), seed=0)
        yield p


def test_entropy_query_records_a_round_and_says_why(project):
    labelled_id = project.image_ids()[0]
    project.set_label(labelled_id, project.classes()[0].id)
    result = run_job(query_job(project, strategy="entropy", batch=5))
    assert len(result.items) == 5 and result.pool_size == 269
    ids = [it.image_id for it in result.items]
    assert labelled_id not in ids and len(set(ids)) == 5
    scores = [it.score for it in result.items]
    assert scores == sorted(scores, reverse=True)  # most uncertain first
    assert all(it.reason.startswith("entropy ") and "of 269 unlabelled" in it.reason for it in result.items)
    assert "top 1 %" in result.items[0].reason
    top = result.items[0].top
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
    (rnd,) = project.rounds()
    assert rnd.id == result.round_id and rnd.strategy == "entropy"
    assert rnd.params["chosen"] == ids and rnd.checkpoint_id == project.latest_checkpoint().id


def test_skipped_images_are_not_asked_again(project):
    skipped = project.image_ids()[:260]
    project.set_setting(SKIPPED_SETTING, skipped)
    unlabelled, _ = unlabelled_pool(project)
    assert len(unlabelled) == 10
    result = run_job(query_job(project, strategy="random", batch=20))
    assert len(result.items) == 10 and not set(skipped) & {it.image_id for it in result.items}
    assert result.items[0].reason == "chosen at random (the baseline)"


def test_coreset_reason_names_the_distance(project):
    for image_id in project.image_ids()[:3]:
        project.set_label(image_id, project.classes()[0].id)
    result = run_job(query_job(project, strategy="coreset", batch=3))
    assert all(it.reason.startswith("far from every labelled image") for it in result.items)
    assert result.items[0].score >= result.items[-1].score > 0


def test_unknown_strategy_and_head_are_refused(tmp_path):
    with Project.create(tmp_path / "q.atl") as p:
        p.add_class("a")
        with pytest.raises(ProjectError, match="Unknown strategy"):
            run_job(query_job(p, strategy="psychic", batch=1))
        with pytest.raises(ProjectError, match="Unknown head"):
            run_job(query_job(p, strategy="random", batch=1, head="oracle"))


@pytest.fixture
def fresh(tmp_path):
    """A project with images and classes but no checkpoint at all (offline, no weights)."""
    from atl_desktop.data.importers import ImportOptions, import_source

    with Project.create(tmp_path / "fresh.atl") as p:
        run_job(import_source(p, TESTDATA / "pathmnist_270.npz",
                              ImportOptions(domain="target", split="pool", labels="truth")))
        yield p


def test_cold_start_without_checkpoint_picks_typical_images(fresh):
    # entropy needs predictions; with nothing labelled and no checkpoint the query uses
    # an untrained encoder's embeddings and TypiClust instead of refusing.
    fresh.set_setting(AUDIT_SHARE_SETTING, 0.0)  # the second query would draw an audit image
    result = run_job(query_job(fresh, strategy="entropy", batch=6))
    assert len(result.items) == 6 and len({it.image_id for it in result.items}) == 6
    (rnd,) = fresh.rounds()
    assert rnd.params["cold_start"] == "typiclust" and rnd.params["head"] == "logreg"
    assert rnd.checkpoint_id is None
    assert all(it.reason == "typical of a cluster that has no label yet (TypiClust)" for it in result.items)
    # The embeddings are cached: the same query again reads them (same key, same picks).
    discard_round(fresh)  # one open round at a time
    again = run_job(query_job(fresh, strategy="typiclust", batch=6))
    assert [it.image_id for it in again.items] == [it.image_id for it in result.items]


def test_labels_drive_a_logistic_head_on_embeddings(fresh):
    truth = fresh.truth()
    # Two labels in each of the first three classes, from the hidden ground truth.
    given = {}
    for image_id, class_id in sorted(truth.items()):
        if sum(1 for c in given.values() if c == class_id) < 2 and len(set(given.values()) | {class_id}) <= 3:
            given[image_id] = class_id
    for image_id, class_id in given.items():
        fresh.set_label(image_id, class_id)
    result = run_job(query_job(fresh, strategy="margin", batch=5))
    (rnd,) = fresh.rounds()
    assert "cold_start" not in rnd.params and rnd.params["head"] == "logreg"
    position = {c.id: k for k, c in enumerate(fresh.classes())}
    seen = {position[c] for c in given.values()}
    for item in result.items:
        assert {c for c, _ in item.top} <= seen | {c for c, p in item.top if p == 0.0}
        assert item.top[0][0] in seen  # a class never labelled is never suggested


def test_pseudo_labels_respect_threshold_and_rejections(project):
    # A threshold above log(9) takes every unlabelled image: the untrained model is unsure.
    everything = PseudoLabelConfig(delta0=10.0, decay=0.0)
    n = run_job(pseudo_label_job(project, config=everything))
    assert n == 270
    pending = project.pseudo_labels()
    assert {p.class_id for p in pending} <= {c.id for c in project.classes()}
    first = pending[0]
    project.reject_pseudo([first.id])
    again = run_job(pseudo_label_job(project, config=everything))
    assert again == 269  # the rejected (image, class) pair is not proposed again
    assert (first.image_id, first.class_id) not in {(p.image_id, p.class_id) for p in project.pseudo_labels()}
    none = run_job(pseudo_label_job(project, config=PseudoLabelConfig(delta0=0.0, decay=0.0)))
    assert none == 0 and project.pseudo_labels() == []


def test_train_job_finishes_the_open_round_with_a_child_checkpoint(project):
    from atl_desktop.loop.session import TRAIN_SETTING, train_job

    parent = project.latest_checkpoint().id
    result = run_job(query_job(project, strategy="random", batch=18))
    truth = project.truth()
    for item in result.items:
        project.set_label(item.image_id, truth[item.image_id])
    project.set_setting(TRAIN_SETTING, {"epochs": 1, "batch_size": 8, "patience": 0})
    new_id = run_job(train_job(project))
    record = project.checkpoint(new_id)
    assert record.parent_id == parent and record.backbone == "smallcnn"  # from the checkpoint
    assert record.config["epochs"] == 1
    (rnd,) = project.rounds()
    assert rnd.finished is not None and rnd.checkpoint_id == new_id
    assert project.latest_checkpoint().id == new_id


def test_live_suggestions_match_the_query_and_follow_new_labels(fresh):
    from atl_desktop.loop.session import live_head, live_suggestions

    labelled = {}
    for image_id, class_id in sorted(fresh.truth().items()):
        if list(labelled.values()).count(class_id) < 2:
            labelled[image_id] = class_id
        if len(labelled) == 8:
            break
    for image_id, class_id in labelled.items():
        fresh.set_label(image_id, class_id)
    result = run_job(query_job(fresh, strategy="margin", batch=4))
    live = live_head(fresh, result.round_id)
    assert live is not None and live.head == "logreg"
    ids = [it.image_id for it in result.items]
    before = live_suggestions(live, ids)
    for item in result.items:  # the same fit as the query's: the same suggestions
        assert [c for c, _ in before[item.image_id]] == [c for c, _ in item.top]
        assert [p for _, p in before[item.image_id]] == pytest.approx([p for _, p in item.top], abs=1e-3)
    fresh.set_label(ids[0], fresh.truth()[ids[0]])
    after = live_suggestions(live_head(fresh, result.round_id), ids[1:])
    assert any(after[i] != before[i] for i in ids[1:])


def test_no_live_head_for_a_round_on_the_models_own_head(project):
    from atl_desktop.loop.session import live_head

    result = run_job(query_job(project, strategy="entropy", batch=2, head="model"))
    assert live_head(project, result.round_id) is None


def test_suggestions_are_temperature_scaled_out_of_fold(fresh):
    from atl_desktop.active.calibration import apply_temperature
    from atl_desktop.active.head_calibration import head_temperature
    from atl_desktop.active.heads import head_probs
    from atl_desktop.active.scoring import ScoringConfig, load_scores, scores_dir
    from atl_desktop.loop.session import live_head, live_suggestions

    labelled = {}
    for image_id, class_id in sorted(fresh.truth().items()):
        if list(labelled.values()).count(class_id) < 5:
            labelled[image_id] = class_id
    for image_id, class_id in labelled.items():
        fresh.set_label(image_id, class_id)
    result = run_job(query_job(fresh, strategy="margin", batch=4))
    (rnd,) = fresh.rounds()
    fitted = rnd.params["temperature"]
    # recomputed independently from the cached embeddings: the same out-of-fold fit
    pool = np.asarray(sorted(fresh.image_ids(domain="target", split="pool")), dtype=np.int64)
    table = load_scores(scores_dir(fresh.data_dir, rnd.params["embeddings"], ScoringConfig()), pool)
    position = fresh.class_index()
    ids = np.asarray(sorted(labelled), dtype=np.int64)
    labels = np.asarray([position[labelled[i]] for i in ids])
    again = head_temperature(np.asarray(table.features[table.rows(ids)]), labels, len(position))
    assert fitted["temperature"] == pytest.approx(again["temperature"])
    assert fitted["temperature"] != pytest.approx(1.0, abs=0.02) and fitted["n"] == len(ids)
    # the shown confidence is the head's probability at that temperature
    picked = np.asarray([it.image_id for it in result.items])
    raw = head_probs("logreg", np.asarray(table.features), table.rows(ids), labels, len(position))
    scaled = apply_temperature(raw[table.rows(picked)], fitted["temperature"])
    for item, row in zip(result.items, scaled, strict=True):
        assert item.top[0][1] == pytest.approx(row.max(), abs=1e-4)  # the query scales over its own rows
        assert item.top[0][1] != pytest.approx(raw[table.rows([item.image_id])[0]].max(), abs=1e-3)
    live = live_head(fresh, result.round_id)
    assert live.temperature == pytest.approx(fitted["temperature"])
    shown = live_suggestions(live, picked.tolist())
    assert [shown[i][0][1] for i in picked] == pytest.approx([it.top[0][1] for it in result.items], abs=1e-3)


def test_pseudo_labels_use_the_checkpoints_temperature(project):
    from atl_desktop.active.pseudo import select_pseudo_labels
    from atl_desktop.loop.session import score_job

    # The untrained model is unsure (entropy near ln 9 = 2.2): none pass 0.5 at T = 1.
    config = PseudoLabelConfig(delta0=0.5, decay=0.0)
    assert run_job(pseudo_label_job(project, config=config)) == 0
    # An assessment that fitted a sharpening temperature on this checkpoint.
    checkpoint = project.latest_checkpoint().id
    round_id = project.start_round("random", {"chosen": []}, checkpoint_id=checkpoint)
    project.finish_round(round_id, {"temperature": {"temperature": 1e-4}}, checkpoint_id=checkpoint)
    scored = run_job(score_job(project))
    ids = np.asarray(sorted(project.image_ids(domain="target", split="pool")))
    probs = np.asarray(scored.target.probs[scored.target.rows(ids)])
    expected = select_pseudo_labels(probs, ids, 0.5, temperature=1e-4)
    assert len(expected) > 0 and select_pseudo_labels(probs, ids, 0.5) == []
    assert run_job(pseudo_label_job(project, config=config)) == len(expected)
    assert sorted(p.image_id for p in project.pseudo_labels()) == sorted(p.image_id for p in expected)
