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
