"""`atl pretrain`, `atl encoder` and `atl query --head` from the command line."""

from atl_desktop.cli import main
from atl_desktop.store import Project
from tests.conftest import TESTDATA


def _project(tmp_path):
    path = tmp_path / "p.atl"
    assert main(["new", str(path)]) == 0
    assert main(["import", str(path), str(TESTDATA / "pathmnist_270.npz"), "--labels", "truth"]) == 0
    return path


def test_pretrain_then_query_with_a_head_on_its_embeddings(tmp_path, capsys):
    path = _project(tmp_path)
    assert main(["pretrain", str(path), "--backbone", "smallcnn", "--image-size", "16", "--steps", "2",
                 "--batch-size", "8", "--quiet"]) == 0
    assert "now current" in capsys.readouterr().out
    with Project.open(path) as p:
        for image_id, class_id in list(sorted(p.truth().items()))[:12]:
            p.set_label(image_id, class_id)
    assert main(["query", str(path), "--strategy", "margin", "--batch", "4", "--quiet"]) == 0
    with Project.open(path, readonly=True) as p:
        (rnd,) = p.rounds()
        assert rnd.params["head"] == "logreg"  # the encoder's head was never trained
        assert rnd.checkpoint_id == p.latest_checkpoint().id


def test_encoder_setting_is_checked_shown_and_used(tmp_path, capsys):
    path = _project(tmp_path)
    assert main(["encoder", str(path)]) == 0
    assert "untrained resnet18" in capsys.readouterr().out
    assert main(["encoder", str(path), "dinov2_vits14", "--weights", str(tmp_path / "nowhere")]) == 1
    assert "atl: error" in capsys.readouterr().err
    assert main(["encoder", str(path), "untrained:smallcnn", "--input-size", "16"]) == 0
    assert main(["encoder", str(path)]) == 0
    assert "untrained smallcnn" in capsys.readouterr().out
    assert main(["query", str(path), "--strategy", "typiclust", "--batch", "3", "--quiet"]) == 0


def test_a_new_project_fine_tunes_at_least_the_default_steps(tmp_path):
    from atl_desktop.loop.session import project_train_config
    from atl_desktop.store.keys import DEFAULT_MIN_STEPS

    path = _project(tmp_path)
    with Project.open(path) as p:
        assert project_train_config(p).min_steps == DEFAULT_MIN_STEPS
        assert project_train_config(p, min_steps=None).min_steps is None


def test_the_report_names_the_encoder_and_the_head(tmp_path):
    from atl_desktop.report import methods_used

    path = _project(tmp_path)
    assert main(["pretrain", str(path), "--backbone", "smallcnn", "--image-size", "16", "--steps", "1",
                 "--batch-size", "4", "--quiet"]) == 0
    assert main(["query", str(path), "--strategy", "typiclust", "--batch", "2", "--quiet"]) == 0
    with Project.open(path, readonly=True) as p:
        used = {m["name"]: m for m in methods_used(p, p.rounds(), p.checkpoints())}
    assert "Contrastive Learning" in used["SimCLR (self-supervised)"]["references"][0]
    assert used["head on cached embeddings"]["where"] == "round 1 (logreg)"
    assert "ICML 2022" in used["typiclust"]["references"][0]


def test_similar_prints_unlabelled_neighbours(tmp_path, capsys):
    import json

    path = _project(tmp_path)
    capsys.readouterr()
    assert main(["similar", str(path), "1", "--k", "3", "--json", "--quiet"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found) == 3 and all(f["id"] != 1 for f in found)
    assert [f["similarity"] for f in found] == sorted((f["similarity"] for f in found), reverse=True)
    assert main(["similar", str(path), "99999", "--quiet"]) == 1


def test_check_labels_finds_flipped_labels(tmp_path, capsys):
    import json

    path = _project(tmp_path)
    with Project.open(path) as p:
        truth = sorted(p.truth().items())[:120]
        classes = [c.id for c in p.classes()]
        flipped = {image_id for image_id, _ in truth[::15]}
        for image_id, class_id in truth:
            wrong = classes[(classes.index(class_id) + 1) % len(classes)]
            p.set_label(image_id, wrong if image_id in flipped else class_id)
    capsys.readouterr()
    assert main(["check-labels", str(path), "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and [r["margin"] for r in rows] == sorted((r["margin"] for r in rows), reverse=True)
    # Untrained features are weak; still, flipped labels are over-represented among the suspects.
    share = sum(r["id"] in flipped for r in rows) / len(rows)
    assert share > len(flipped) / len(truth)
    # The window reads the last check from the project.
    from atl_desktop.store.keys import LABEL_CHECK_SETTING

    with Project.open(path, readonly=True) as p:
        saved = p.get_setting(LABEL_CHECK_SETTING)
    assert [s["image_id"] for s in saved][: len(rows)] == [r["id"] for r in rows]  # rows: the top ones
    assert all(abs(s["probability"] - s["given_probability"] - s["margin"]) < 1e-9 for s in saved)


def test_a_label_kept_as_it_is_is_not_flagged_again_until_it_changes():
    from atl_desktop.loop.session import LabelSuspect, not_kept

    suspects = [LabelSuspect(5, 1, 2, 0.6), LabelSuspect(7, 2, 1, 0.4), LabelSuspect(9, 1, 3, 0.2)]
    # 5 kept with its label 1: gone; 7 was kept as class 3, then relabelled 2: flagged again
    assert [s.image_id for s in not_kept(suspects, {"5": 1, "7": 3})] == [7, 9]
    assert not_kept(suspects, {}) == suspects
