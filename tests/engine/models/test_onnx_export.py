"""`atl export P.atl model.onnx`: the exported graph gives the torch model's probabilities, and the
model card states what it was trained on and how well it did (Wilson interval worked by hand)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import torch  # noqa: E402

from atl_desktop.cli import main as atl  # noqa: E402
from atl_desktop.data.importers import ImportOptions, import_source  # noqa: E402
from atl_desktop.jobs import run_job  # noqa: E402
from atl_desktop.loop.session import TRAIN_SETTING, round_job  # noqa: E402
from atl_desktop.models.checkpoints import load_checkpoint  # noqa: E402
from atl_desktop.models.onnx_export import export_onnx, wilson_interval  # noqa: E402
from atl_desktop.models.transforms import input_transform  # noqa: E402
from atl_desktop.store import Project, ProjectError  # noqa: E402
from atl_desktop.transfer.train import project_eval_dataset  # noqa: E402
from tests.conftest import TESTDATA  # noqa: E402

TRAIN = {"backbone": "smallcnn", "epochs": 2, "batch_size": 16, "patience": 0, "device": "cpu", "seed": 5}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """USPS digits: 120 pool, 40 test with hidden truth; one round trained and assessed a smallcnn."""
    folder = tmp_path_factory.mktemp("onnx")
    with np.load(TESTDATA / "usps_900.npz", allow_pickle=False) as f:
        np.savez(folder / "usps.npz", x_train=f["x_train"][:120], y_train=f["y_train"][:120],
                 x_test=f["x_test"][:40], y_test=f["y_test"][:40], classes=f["classes"])
    path = folder / "d.atl"
    with Project.create(path) as p:
        run_job(import_source(p, folder / "usps.npz", ImportOptions(labels="truth")))
        p.set_setting(TRAIN_SETTING, TRAIN)
        run_job(round_job(p, strategy="random", batch=12, seed=7))
    return path


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19207) / 1.38415 = 0.71674,
    # half 1.96 / 1.38415 * sqrt(0.016 + 0.0096037) = 0.22658
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.49016, 0.94332), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] == pytest.approx(0.72247, abs=1e-4)


def test_onnx_probabilities_match_torch_on_32_images(trained, tmp_path, capsys):
    out = tmp_path / "digits.onnx"
    assert atl(["export", str(trained), str(out), "--quiet"]) == 0
    assert "Exported checkpoint" in capsys.readouterr().out
    with Project.open(trained, readonly=True) as p:
        model, record = load_checkpoint(p)
        dataset = project_eval_dataset(p, "pool", input_transform(model.spec))
        x = torch.stack([dataset[i][0] for i in range(32)])
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    got = session.run(["probabilities"], {"image": x.numpy().astype(np.float32)})[0]
    difference = float(np.abs(got - expected).max())
    print(f"ONNX vs torch, 32 images: max abs difference {difference:.2e}")
    assert got.shape == (32, 10) and difference <= 1e-4
    assert np.allclose(got.sum(1), 1, atol=1e-5)  # the softmax is in the graph
    one = session.run(["probabilities"], {"image": x[:1].numpy()})[0]  # the batch size is dynamic
    assert np.abs(one - expected[:1]).max() <= 1e-4
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["classes"]) == record.classes and metadata["checkpoint_sha256"] == record.sha256


def test_model_card_states_classes_input_labels_and_test_accuracy(trained, tmp_path):
    out = tmp_path / "m.onnx"
    with Project.open(trained) as p:
        pool = p.image_ids(split="pool")
        p.set_label(pool[-1], p.class_by_name("3").id, annotator="alice")  # a person's label
        report = run_job(export_onnx(p, out))
        record = p.latest_checkpoint()
        test = p.rounds()[-1].metrics["test"]
        # held-out audit images train nothing, so the card leaves them out
        labels = {i: c for i, c in p.current_labels().items() if i in set(pool) and i not in p.audit_ids()}
        assert len(labels) < len(p.current_labels(split="pool"))
    card = json.loads((tmp_path / "m.card.json").read_text())
    assert report.checkpoint_id == record.id and card["checkpoint"]["sha256"] == record.sha256
    assert card["classes"] == [str(d) for d in range(10)]
    assert card["input"]["shape"] == ["N", 3, 28, 28] and card["input"]["mean"] == [0.5, 0.5, 0.5]
    assert card["backbone"]["name"] == "smallcnn" and card["transfer"]["method"] == "finetune"
    assert card["training_labels"]["total"] == len(labels) == sum(card["training_labels"]["by_class"].values())
    assert card["training_labels"]["by_annotator"]["human:alice"] == 1
    correct = sum(test["confusion"][i][i] for i in range(10))
    assert card["test"]["n"] == 40 and card["test"]["correct"] == correct and card["test"]["this_checkpoint"]
    assert card["test"]["wilson95"] == pytest.approx(list(wilson_interval(correct, 40)))
    assert card["test"]["ece"] == test["calibration"]["ece"]
    import hashlib

    assert card["onnx_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    markdown = (tmp_path / "m.card.md").read_text()
    assert record.sha256 in markdown and "Wilson" in markdown and "ECE" in markdown


def test_export_refusals_are_one_line(trained, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty.atl"
    Project.create(empty).close()
    assert atl(["export", str(empty), str(tmp_path / "m.onnx")]) == 1
    assert "no checkpoint yet" in capsys.readouterr().err
    (tmp_path / "m.card.md").write_text("mine")
    assert atl(["export", str(trained), str(tmp_path / "m.onnx")]) == 1
    assert "m.card.md already exists" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    assert atl(["export", str(trained), str(tmp_path / "n.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "atl: error: ONNX export needs the onnx package: pip install onnx"
    with Project.open(trained, readonly=True) as p, pytest.raises(ProjectError):
        run_job(export_onnx(p, tmp_path / "n.onnx"))
