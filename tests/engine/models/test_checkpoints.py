"""Checkpoints in a project and as loose files: round trip and every refusal."""

from __future__ import annotations

import json

import pytest
import torch

from atl_desktop.models import build_model
from atl_desktop.models.checkpoints import (
    CheckpointError,
    checkpoint_bytes,
    checkpoint_metadata,
    load_checkpoint,
    load_model_file,
    read_metadata,
    save_checkpoint,
    save_model_file,
)
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.files import sha256_file

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture
def project(tmp_path):
    with Project.create(tmp_path / "p.atl") as p:
        yield p


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_in_a_project(project):
    model = build_model("smallcnn", 3, seed=0, bottleneck_dim=8)
    round_id = project.start_round("random", {})
    first = save_checkpoint(project, model, classes=CLASSES, seed=7)
    second = save_checkpoint(project, model, classes=CLASSES, parent_id=first, round=round_id,
                             config={"epochs": 2}, metrics={"val_accuracy": 0.5}, seed=7)
    record = project.checkpoint(second)
    path = project.data_dir / record.file
    assert record.file == f"checkpoints/{record.sha256}.safetensors"
    assert sha256_file(path) == record.sha256
    assert (record.backbone, record.classes, record.parent_id) == ("smallcnn", CLASSES, first)
    meta = read_metadata(path)
    assert meta["classes"] == CLASSES and meta["parent_id"] == first and meta["round"] == round_id
    assert meta["config"] == {"epochs": 2} and meta["metrics"] == {"val_accuracy": 0.5}
    assert meta["seed"] == 7 and meta["bottleneck_dim"] == 8
    assert meta["input"] == {"size": 28, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert {"torch", "torchvision", "safetensors", "numpy", "python"} <= set(meta["versions"])

    loaded, loaded_record = load_checkpoint(project)  # latest
    assert loaded_record.id == second and not loaded.training
    assert same_weights(loaded, model)
    x = torch.randn(4, 3, 28, 28)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert loaded.spec == model.spec


def test_identical_weights_share_one_file(project):
    model = build_model("smallcnn", 3, seed=0)
    a = project.checkpoint(save_checkpoint(project, model, classes=CLASSES))
    b = project.checkpoint(save_checkpoint(project, model, classes=CLASSES))
    assert a.id != b.id and a.file == b.file
    assert len(list((project.data_dir / "checkpoints").iterdir())) == 1


def test_no_checkpoint_yet(project):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(project)


def test_checkpoint_errors_are_project_errors():
    assert issubclass(CheckpointError, ProjectError)


def test_wrong_class_list_says_what_differs(project):
    model = build_model("smallcnn", 3, seed=0)
    ckpt = save_checkpoint(project, model, classes=CLASSES)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(project, ckpt, classes=["cat", "dog", "owl"])
    assert "missing ['owl']" in str(error.value) and "unexpected ['fox']" in str(error.value)
    with pytest.raises(CheckpointError, match="another order"):
        load_checkpoint(project, ckpt, classes=["dog", "cat", "fox"])
    with pytest.raises(CheckpointError, match="2 class names"):
        save_checkpoint(project, model, classes=["cat", "dog"])


def test_record_and_file_disagreeing_on_architecture(project):
    model = build_model("smallcnn", 3, seed=0)
    good = project.checkpoint(save_checkpoint(project, model, classes=CLASSES))
    bad = project.add_checkpoint(file=good.file, sha256=good.sha256, backbone="resnet18", classes=CLASSES)
    with pytest.raises(CheckpointError, match="records backbone resnet18 but the file holds smallcnn"):
        load_checkpoint(project, bad)


def test_file_whose_weights_are_another_architecture(tmp_path):
    small = build_model("smallcnn", 3, seed=0)
    meta = checkpoint_metadata(small, classes=CLASSES)
    meta["backbone"] = "squeezenet1_1"
    meta["input"]["size"] = 32
    path = tmp_path / "liar.safetensors"
    path.write_bytes(checkpoint_bytes(small, meta))
    with pytest.raises(CheckpointError) as error:
        load_model_file(path)
    message = str(error.value)
    assert "missing keys: body.features.0.weight" in message
    assert "unexpected keys: body.conv1.0." in message
    assert "head.weight (3, 256) vs (3, 512)" in message


def test_head_shape_mismatch_is_reported(tmp_path):
    four = build_model("smallcnn", 4, seed=0)
    meta = checkpoint_metadata(four, classes=["a", "b", "c", "d"])
    meta["classes"] = ["a", "b", "c"]
    path = tmp_path / "head.safetensors"
    path.write_bytes(checkpoint_bytes(four, meta))
    with pytest.raises(CheckpointError, match=r"head.weight \(4, 256\) vs \(3, 256\)"):
        load_model_file(path)


def test_changed_or_missing_file_is_refused(project):
    model = build_model("smallcnn", 3, seed=0)
    ckpt = save_checkpoint(project, model, classes=CLASSES)
    path = project.data_dir / project.checkpoint(ckpt).file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed or is damaged"):
        load_checkpoint(project, ckpt)
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(project, ckpt)


def test_loose_model_file_round_trip_and_foreign_files(tmp_path):
    model = build_model("smallcnn", 3, seed=4)
    path = save_model_file(tmp_path / "m.safetensors", model, classes=CLASSES, metrics={"a": 1.0})
    loaded, meta = load_model_file(path, classes=CLASSES)
    assert same_weights(loaded, model) and meta["metrics"] == {"a": 1.0}
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an ATL Desktop checkpoint"):
        load_model_file(foreign)
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(checkpoint_bytes(model, {**checkpoint_metadata(model, classes=CLASSES), "format": "x/9"}))
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_model_file(odd)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_file(tmp_path / "nothing.safetensors")
    assert json.loads(json.dumps(read_metadata(path)))["backbone"] == "smallcnn"
