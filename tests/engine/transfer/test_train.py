"""The fine-tuning loop: freezing, layer-wise rates, sampling, seeds, cancelling, projects, CLI."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from atl_desktop.jobs import Cancelled, Progress, run_job
from atl_desktop.models import build_model
from atl_desktop.models.checkpoints import load_checkpoint, save_checkpoint
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.files import sha256_file
from atl_desktop.transfer import train as train_module
from atl_desktop.transfer.freeze import freeze_stages, layerwise_param_groups, stage_learning_rates
from atl_desktop.transfer.methods import METHODS, Method, StepOutputs
from atl_desktop.transfer.train import (
    EvalResult,
    TrainConfig,
    balanced_weights,
    evaluate,
    evaluate_project,
    make_optimizer,
    train,
    train_project,
)

TESTDATA = Path(__file__).resolve().parents[3] / "resources" / "testdata"
DIGITS = [str(i) for i in range(10)]


def digits(n: int, offset: int = 0, seed: int = 0) -> TensorDataset:
    """MNIST digits from the shipped subset as normalised 3-channel tensors."""
    data = np.load(TESTDATA / "mnist_600.npz", allow_pickle=False)
    x = torch.tensor(data["x"][offset:offset + n]).float().div(255).sub(0.5).div(0.5)
    return TensorDataset(x[:, None].expand(-1, 3, -1, -1).contiguous(),
                         torch.tensor(data["y"][offset:offset + n]))


def small_config(**changes) -> TrainConfig:
    base = dict(backbone="smallcnn", epochs=1, batch_size=16, lr=1e-3, device="cpu", patience=0)
    return TrainConfig(**{**base, **changes})


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- freezing and learning rates ------------------------------------------------------


def test_frozen_stages_stay_bit_identical_after_a_step():
    model = build_model("smallcnn", 10, seed=0)
    before = state_copy(model)
    result = run_job(train(model, digits(32), small_config(freeze=2, max_steps=2)))
    assert result.steps == 2
    after = model.state_dict()
    for name, value in before.items():
        frozen = name.startswith(("body.conv1.", "body.conv2."))  # weights and BN statistics
        assert torch.equal(after[name], value) == frozen, name
    # Training leaves the model unfrozen again.
    assert all(p.requires_grad for p in model.parameters()) and model.frozen_stages == 0


def test_frozen_batch_norm_stays_in_eval_mode():
    model = build_model("smallcnn", 2, seed=0)
    freeze_stages(model, 1)
    model.train()
    assert not model.body.conv1[1].training and model.body.conv2[1].training
    with pytest.raises(ValueError, match="between 0 and 3"):
        freeze_stages(model, 4)


def test_layerwise_rates_by_hand():
    model = build_model("smallcnn", 3, seed=0, bottleneck_dim=8)
    # Three body stages: stage i gets lr * decay ** (3 - i).
    assert stage_learning_rates(model, 0.1, 0.5) == pytest.approx(
        {"conv1": 0.0125, "conv2": 0.025, "fc": 0.05, "bottleneck": 0.1, "head": 0.1})
    freeze_stages(model, 1)
    for config in (small_config(lr=0.1, lr_decay=0.5, optimizer="sgd"),
                   small_config(lr=0.1, lr_decay=0.5)):
        groups = layerwise_param_groups(model, config.lr, config.lr_decay, 0.0)
        optimizer = make_optimizer(config, groups)
        assert [g["name"] for g in optimizer.param_groups] == ["conv2", "fc", "bottleneck", "head"]
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.025, 0.05, 0.1, 0.1])
    with pytest.raises(ValueError):
        layerwise_param_groups(model, 0.1, 1.5)


def test_each_stage_moves_by_its_own_rate_in_a_training_step():
    """One plain SGD step inside `train` changes every parameter by -lr_stage * gradient."""
    model = build_model("smallcnn", 10, seed=0)
    model.body.fc[4].p = 0.0  # no dropout: the gradient below is then deterministic
    data = digits(8)
    reference = copy.deepcopy(model).train()
    x, y = data.tensors
    F.cross_entropy(reference(x), y).backward()  # full batch: order does not matter
    config = small_config(optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.2, lr_decay=0.5,
                          batch_size=8, max_steps=1)
    run_job(train(model, data, config))
    rates = stage_learning_rates(model, 0.2, 0.5)
    new = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        stage = name.split(".")[1] if name.startswith("body.") else "head"
        expected = p.detach() - rates[stage] * p.grad
        assert torch.allclose(new[name].detach(), expected, atol=1e-6), name


# ---- sampling, seeds, progress ------------------------------------------------------


def test_balanced_weights_by_hand_and_by_drawing():
    assert balanced_weights([0, 0, 0, 1]).tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    labels = [0] * 90 + [1] * 10
    dataset = TensorDataset(torch.zeros(100, 1), torch.tensor(labels))
    loader = train_module.make_loader(dataset, small_config(batch_size=100), 0, train=True,
                                      balanced=True, pin=False)
    drawn = torch.cat([y for _ in range(20) for _, y in loader])
    assert abs(drawn.float().mean().item() - 0.5) < 0.05


def test_imbalance_by_hand():
    assert not train_module.is_imbalanced([3, 2])  # 3 is 1.5 times 2: not above it
    assert train_module.is_imbalanced([4, 2, 3])
    assert not train_module.is_imbalanced([0, 3, 3])  # a class with no label is left out
    assert train_module.is_imbalanced([5, 0, 3])  # 5 > 1.5 * 3
    assert not train_module.is_imbalanced([])


@pytest.mark.parametrize(("labels", "setting", "expected"), [
    ([0] * 12 + [1] * 4, "auto", True),  # 12 against 4: imbalanced, so balanced sampling
    ([0] * 8 + [1] * 8, "auto", False),
    ([0] * 9 + [1] * 7, "auto", False),  # 9 / 7 = 1.29
    ([0] * 12 + [1] * 4, False, False),  # an explicit choice is kept either way
    ([0] * 8 + [1] * 8, True, True),
])
def test_auto_balanced_sampling_follows_the_labelled_sets_imbalance(labels, setting, expected, monkeypatch):
    from torch.utils.data import WeightedRandomSampler

    samplers = []
    real = train_module.make_loader

    def recording(*args, **kwargs):
        loader = real(*args, **kwargs)
        samplers.append(loader.sampler)
        return loader

    monkeypatch.setattr(train_module, "make_loader", recording)
    data = digits(len(labels))
    labelled = TensorDataset(data.tensors[0], torch.tensor(labels))
    result = run_job(train(build_model("smallcnn", 10, seed=0), labelled, small_config(balanced=setting,
                                                                                        max_steps=1)))
    assert len(samplers) == 1 and isinstance(samplers[0], WeightedRandomSampler) == expected
    assert result.metrics["labelled_balanced_sampling"] == float(expected)


def test_projects_train_balanced_auto_unless_they_say_otherwise(tmp_path):
    from atl_desktop.loop.session import TRAIN_SETTING, project_train_config

    with Project.create(tmp_path / "p.atl") as project:
        assert project_train_config(project).balanced == "auto"
        project.set_setting(TRAIN_SETTING, {"balanced": False})
        assert project_train_config(project).balanced is False
    assert TrainConfig().balanced is False  # the library default: what the caller asks for
    with pytest.raises(ValueError, match="balanced"):
        TrainConfig(balanced="sometimes")


def test_same_seed_same_result_on_cpu_whatever_happens_between_steps():
    def run(seed: int, disturb: bool):
        model = build_model("smallcnn", 10, seed=seed)
        config = small_config(epochs=2, seed=seed, balanced=True, max_steps=6)
        job = train(model, digits(48), config, source_set=digits(32, offset=100),
                    val_set=digits(20, offset=200))
        losses = []
        for p in job:
            losses.append(p.metrics.get("loss"))
            if disturb:
                torch.rand(100)  # someone else using the global generator between steps
        return state_copy(model), losses

    a, losses_a = run(3, disturb=False)
    b, losses_b = run(3, disturb=True)
    c, _ = run(4, disturb=False)
    assert losses_a == losses_b
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_progress_every_step_with_losses():
    model = build_model("smallcnn", 10, seed=0)
    steps = [p for p in train(model, digits(40), small_config(epochs=2, batch_size=16))]
    assert [p.done for p in steps] == [1, 2, 3, 4, 5, 6]  # 3 batches (16, 16, 8) per epoch
    assert all(p.total == 6 and isinstance(p, Progress) for p in steps)
    assert all(math.isfinite(p.metrics["loss"]) and "ce" in p.metrics for p in steps)
    assert steps[-1].message == "epoch 2/2"


def test_early_stopping_restores_the_best_epoch(monkeypatch):
    accuracies = iter([0.5, 0.7, 0.6, 0.6, 0.9])
    snapshots = []

    def scripted_evaluate(model, dataset, **kwargs):
        snapshots.append(state_copy(model))
        yield Progress(1, 1, "evaluating")
        return EvalResult(10, 1.0, ((int(next(accuracies) * 10),),))

    monkeypatch.setattr(train_module, "evaluate", scripted_evaluate)
    model = build_model("smallcnn", 10, seed=0)
    result = run_job(train(model, digits(16), small_config(epochs=10, patience=2),
                           val_set=digits(4)))
    assert result.stopped_early and result.epochs == 4 and result.best_epoch == 2
    assert result.metrics["val_accuracy"] == pytest.approx(0.7)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshots[1].items())


# ---- methods -------------------------------------------------------------------------


class ToyAlignment(Method):
    """A method of the coming kind: its own parameters, several layers, source and target."""

    name = "toy"
    layers = ("conv2", "features", "logits")
    uses_unlabelled_target = True

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[tuple] = []

    def extra_losses(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        self.seen.append((out.source.labels is not None, out.target.labels,
                          tuple(out.target.layers["conv2"].shape[1:]), out.progress))
        gap = out.source.features.mean(0) - out.target.features.mean(0)
        return {"toy": self.scale * gap.pow(2).sum()}


def test_a_method_gets_layers_roles_and_its_own_optimiser_group():
    method = ToyAlignment()
    model = build_model("smallcnn", 10, seed=0)
    job = train(model, digits(16), small_config(epochs=3), source_set=digits(16, 100),
                target_set=digits(16, 200), method=method)
    metrics = [p.metrics for p in job]
    assert all({"ce", "ce_source", "toy", "loss"} <= set(m) for m in metrics)
    assert method.seen[0][:3] == (True, None, (64, 4, 4))
    assert [s[3] for s in method.seen] == pytest.approx([0, 1 / 3, 2 / 3])
    assert method.scale.item() != 1.0  # its parameter was optimised
    assert {"finetune", "source_only"} <= set(METHODS)


# ---- evaluation -----------------------------------------------------------------------


def test_eval_result_by_hand():
    result = EvalResult(9, 0.5, ((2, 1, 0), (0, 3, 0), (0, 0, 0)), ("a", "b", "c"))
    assert result.per_class_recall == pytest.approx((2 / 3, 1.0, None))
    assert result.balanced_accuracy == pytest.approx((2 / 3 + 1) / 2)
    assert "confusion" in result.report() and "a" in result.report()


def test_balanced_accuracy_leads_the_report_where_classes_are_imbalanced():
    # 10 images of "a" (8 right) against 2 of "b" (1 right): accuracy 9/12 = 0.75 mostly
    # counts "a"; balanced accuracy is (0.8 + 0.5) / 2 = 0.65.
    imbalanced = EvalResult(12, 0.5, ((8, 2), (1, 1)), ("a", "b"))
    assert imbalanced.headline == "balanced_accuracy" and imbalanced.to_dict()["headline"] == "balanced_accuracy"
    first = imbalanced.report().splitlines()[0]
    assert first == "images: 12   balanced accuracy: 0.6500   accuracy: 0.7500   loss: 0.5000"
    assert "imbalanced (10 images against 2)" in imbalanced.report().splitlines()[1]
    balanced = EvalResult(8, 0.5, ((3, 1), (1, 3)), ("a", "b"))  # 4 and 4
    assert balanced.headline == "accuracy"
    assert balanced.report().splitlines()[0] == "images: 8   accuracy: 0.7500   balanced accuracy: 0.7500   loss: 0.5000"


def test_evaluate_agrees_with_brute_force():
    model = build_model("smallcnn", 10, seed=1).eval()
    data = digits(50, offset=300)
    result = run_job(evaluate(model, data, batch_size=16, device="cpu"))
    confusion = np.zeros((10, 10), int)
    losses = []
    with torch.no_grad():
        for x, y in data:
            logits = model(x[None])
            confusion[int(y), int(logits.argmax())] += 1
            losses.append(F.cross_entropy(logits, y[None]).item())
    assert np.array_equal(np.array(result.confusion), confusion)
    assert result.accuracy == pytest.approx(np.trace(confusion) / 50)
    assert result.loss == pytest.approx(np.mean(losses), rel=1e-4)


# ---- projects ------------------------------------------------------------------------


def add_images(project: Project, folder: Path, x, y, class_ids, *, domain, split,
               label=False, truth=False) -> list[int]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    with project.transaction():
        for i, (pixels, cls) in enumerate(zip(x, y, strict=True)):
            path = folder / f"{domain}_{split}_{i}.png"
            Image.fromarray(pixels).save(path)
            image_id, _ = project.add_image(
                sha256=sha256_file(path), location=project.relative_location(path), stored="ref",
                original_path=str(path), width=pixels.shape[1], height=pixels.shape[0], mode="L",
                bit_depth=8, domain=domain, split=split)
            if label:
                project.set_label(image_id, class_ids[int(cls)])
            if truth:
                project.set_truth(image_id, class_ids[int(cls)])
            ids.append(image_id)
    return ids


@pytest.fixture
def digits_project(tmp_path):
    """USPS as the labelled source, MNIST as the target (pool unlabelled, val labelled,
    test with hidden truth only)."""
    usps = np.load(TESTDATA / "usps_900.npz", allow_pickle=False)
    mnist = np.load(TESTDATA / "mnist_600.npz", allow_pickle=False)
    with Project.create(tmp_path / "digits.atl") as project:
        ids = {name: project.add_class(name) for name in DIGITS}
        class_ids = [ids[name] for name in DIGITS]
        images = tmp_path / "images"
        add_images(project, images, usps["x_train"], usps["y_train"], class_ids,
                   domain="source", split="pool", label=True)
        pool = add_images(project, images, mnist["x"][:200], mnist["y"][:200], class_ids,
                          domain="target", split="pool", truth=True)
        add_images(project, images, mnist["x"][200:300], mnist["y"][200:300], class_ids,
                   domain="target", split="val", label=True)
        add_images(project, images, mnist["x"][300:], mnist["y"][300:], class_ids,
                   domain="target", split="test", truth=True)
        project.pool_ids = pool
        yield project


def test_fine_tuning_improves_on_the_source_checkpoint(digits_project):
    project = digits_project
    config = small_config(epochs=4, batch_size=32, patience=2, augment="none")
    first = run_job(train_project(project, config))
    assert first.phases == ("source pre-training",)  # no target labels yet
    source_only = run_job(evaluate_project(project, split="test", device="cpu"))
    assert source_only.n == 300  # test images take their hidden truth

    truth = project.truth("target", "pool")
    with project.transaction():
        for image_id in project.pool_ids:
            project.set_label(image_id, truth[image_id])
    second = run_job(train_project(project, config))
    assert second.phases == ("fine-tuning",)
    record = project.checkpoint(second.checkpoint_id)
    assert record.parent_id == first.checkpoint_id  # incremental: continued from the source model
    assert record.config["phase"] == "fine-tuning" and record.metrics["n_train"] == 200
    tuned = run_job(evaluate_project(project, split="test", device="cpu"))
    assert tuned.accuracy >= source_only.accuracy + 0.1, (source_only.accuracy, tuned.accuracy)


def test_cancelled_training_leaves_the_previous_checkpoint(digits_project):
    project = digits_project
    model = build_model("smallcnn", 10, seed=0)
    previous = save_checkpoint(project, model, classes=DIGITS)
    record = project.checkpoint(previous)
    files = set((project.data_dir / "checkpoints").iterdir())
    asked = iter(range(100))
    with pytest.raises(Cancelled):
        run_job(train_project(project, small_config(epochs=3)), should_cancel=lambda: next(asked) >= 2)
    assert project.latest_checkpoint().id == previous
    assert set((project.data_dir / "checkpoints").iterdir()) == files
    assert sha256_file(project.data_dir / record.file) == record.sha256
    loaded, _ = load_checkpoint(project)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_new_classes_extend_the_head_of_the_continued_model(digits_project):
    project = digits_project
    old = build_model("smallcnn", 10, seed=0)
    save_checkpoint(project, old, classes=DIGITS)
    project.add_class("smudge")
    result = run_job(train_project(project, small_config(lr=1e-9, optimizer="sgd",
                                                         momentum=0.0, max_steps=1)))
    model, record = load_checkpoint(project, result.checkpoint_id)
    assert record.classes == [*DIGITS, "smudge"] and model.num_classes == 11
    assert torch.allclose(model.head.weight[:10], old.head.weight, atol=1e-6)
    assert torch.allclose(model.body.conv1[0].weight, old.body.conv1[0].weight, atol=1e-6)


def test_project_refusals(digits_project, tmp_path):
    project = digits_project
    save_checkpoint(project, build_model("smallcnn", 10, seed=0), classes=DIGITS)
    with pytest.raises(ProjectError, match="start over from scratch"):
        next(train_project(project, small_config(backbone="resnet18")))
    with pytest.raises(ProjectError, match="between 0 and 3"):
        next(train_project(project, small_config(freeze=5)))
    with pytest.raises(ProjectError, match="Unknown method"):
        next(train_project(project, small_config(method="no_such_method")))
    with Project.create(tmp_path / "empty.atl") as empty:
        empty.add_class("a")
        with pytest.raises(ProjectError, match="two classes"):
            next(train_project(empty, small_config()))


# ---- command line -------------------------------------------------------------------


def test_cli_trains_and_evaluates_loose_npz(tmp_path, capsys):
    from atl_desktop.cli import main

    data = np.load(TESTDATA / "mnist_600.npz", allow_pickle=False)
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=data["x"][:64], y_train=data["y"][:64], x_test=data["x"][64:96],
             y_test=data["y"][64:96], classes=data["classes"])
    model = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(npz), "--out", str(model), "--epochs", "1",
                 "--device", "cpu", "--quiet"]) == 0
    assert model.is_file()
    capsys.readouterr()
    assert main(["evaluate", "--data", str(npz), "--model", str(model), "--json", "--quiet"]) == 0
    out = capsys.readouterr().out
    import json

    result = json.loads(out)
    assert result["n"] == 32 and len(result["confusion"]) == 10
    assert main(["train", "--data", str(npz), "--epochs", "1"]) == 1  # no --out: one-line error
    assert "needs --out" in capsys.readouterr().err


class Shaped(Dataset):
    """A dataset without a labels attribute (labels found by iterating)."""

    def __init__(self, labels):
        self.labels_hidden = labels

    def __len__(self):
        return len(self.labels_hidden)

    def __getitem__(self, i):
        return torch.zeros(1), self.labels_hidden[i]


def test_dataset_labels_without_attributes():
    assert train_module.dataset_labels(Shaped([2, 0, 1])) == [2, 0, 1]
    loader = DataLoader(Shaped([1, 1]), batch_size=2)
    assert next(iter(loader))[1].tolist() == [1, 1]


def test_cli_trains_and_evaluates_a_project(digits_project, capsys):
    from atl_desktop.cli import main

    path = digits_project.path
    digits_project.close()  # the command opens the project itself
    args = ["--epochs", "1", "--device", "cpu", "--quiet", "--json"]
    assert main(["train", str(path), *args]) == 0
    import json

    trained = json.loads(capsys.readouterr().out)
    assert trained["phases"] == ["source pre-training"]  # smallcnn chosen for 28 px images
    assert main(["evaluate", str(path), "--split", "test", "--quiet", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    calibration = evaluated["calibration"]  # the project's labelled validation split gives a temperature
    assert evaluated["n"] == 300 and calibration["temperature"]["fitted_on"].endswith("labelled validation images")
    assert main(["evaluate", str(path), "--split", "test", "--quiet"]) == 0
    assert (f"Calibration: ECE {calibration['ece']:.2f} → {calibration['ece_scaled']:.2f} "
            f"(T = {calibration['temperature']['temperature']:.2g})") in capsys.readouterr().out
    assert main(["evaluate", str(path), "--checkpoint", "99", "--quiet"]) == 1
    assert "No checkpoint with id 99" in capsys.readouterr().err
    with Project.open(path, readonly=True) as project:
        assert project.latest_checkpoint().backbone == "smallcnn"


# ---- transfer methods in projects ---------------------------------------------------------


def test_adda_pre_trains_a_source_model_then_adapts_and_records_its_options(digits_project):
    project = digits_project
    config = small_config(method="adda", method_options={"hidden": 64, "layer": "features"}, max_steps=2)
    result = run_job(train_project(project, config))
    assert result.phases == ("source pre-training", "adaptation")
    first, second = (project.checkpoint(i) for i in result.checkpoint_ids)
    assert first.config["method"] == "source_only" and second.config["method"] == "adda"
    assert second.config["method_options"] == {"hidden": 64, "layer": "features", "adam_beta1": 0.5,
                                               "discriminator_lr": 1.0}
    assert second.metrics["n_target"] == 200 and "n_train" not in second.metrics
    # The classifier stays the source model's; the encoder is adapted.
    source_model, _ = load_checkpoint(project, first.id)
    adapted, _ = load_checkpoint(project, second.id)
    assert torch.equal(source_model.head.weight, adapted.head.weight)
    assert not torch.equal(source_model.body.conv1[0].weight, adapted.body.conv1[0].weight)


def test_default_options_are_recorded_and_selective_fine_tunes_jointly(digits_project):
    project = digits_project
    truth = project.truth("target", "pool")
    with project.transaction():
        for image_id in project.pool_ids[:40]:
            project.set_label(image_id, truth[image_id])
    config = small_config(method="selective", max_steps=2)
    result = run_job(train_project(project, config))
    assert result.phases == ("source pre-training", "fine-tuning")
    record = project.checkpoint(result.checkpoint_id)
    assert record.config["method_options"] == {"neighbours": 5, "bins": 16, "filters": "gabor",
                                               "distance": "kl"}
    assert record.metrics["n_train"] == 40 and record.metrics["n_source"] == 600
    # Up to 5 nearest source images for each of the 40 labelled target images.
    assert 5 <= record.metrics["n_source_selected"] <= 5 * 40


def test_cli_passes_method_options_and_refuses_unknown_ones(digits_project, capsys):
    import json

    from atl_desktop.cli import main

    path = digits_project.path
    digits_project.close()
    args = ["--epochs", "1", "--device", "cpu", "--quiet", "--json", "--batch-size", "64"]
    assert main(["train", str(path), "--method", "ddc", "--method-option", "lambda=1", *args]) == 1
    assert "trade_off" in capsys.readouterr().err  # the error lists the method's options
    assert main(["train", str(path), "--method", "ddc", "--method-option", "trade_off=0.5",
                 "--method-option", "estimator=linear", *args]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["phases"] == ["adaptation"]
    with Project.open(path, readonly=True) as project:
        options = project.checkpoint(trained["checkpoints"][-1]).config["method_options"]
    assert options == {"trade_off": 0.5, "estimator": "linear", "alpha": 1.0, "layer": "features"}


def test_min_steps_lengthens_short_epochs_but_never_shortens_long_ones():
    from atl_desktop.transfer.train import with_min_steps

    config = small_config(epochs=2, min_steps=10)
    assert with_min_steps(config, 3).epochs == 4  # ceil(10 / 3) epochs of 3 steps
    assert with_min_steps(config, 20).epochs == 2  # two long epochs are already enough
    assert with_min_steps(small_config(epochs=2), 3).epochs == 2  # no minimum: unchanged
    model = build_model("smallcnn", 10, seed=0)
    # 20 images in batches of 16: 2 steps an epoch, so 7 steps need 4 epochs, cut at 7 steps.
    result = run_job(train(model, digits(20), small_config(epochs=1, min_steps=7, max_steps=7)))
    assert result.steps == 7 and result.epochs == 4


@pytest.mark.parametrize(("argv", "expected"), [([], "auto"), (["--balanced"], True), (["--balanced", "off"], False)])
def test_atl_train_balanced_option(argv, expected):
    from atl_desktop.cli import build_parser
    from atl_desktop.commands.train import _config

    args = build_parser().parse_args(["train", "p.atl", *argv])
    assert _config(args, "smallcnn").balanced == expected


def test_one_cycle_schedule_rates_worked_by_hand():
    """10 steps peaking at lr = 0.1: warm-up from 0.1 / 25 over steps 0..2 (30 %, less one),
    then cosine annealing to (0.1 / 25) / 1e4 at the last step; each step reports the rate it used."""
    gen = train(build_model("smallcnn", 10, seed=0), digits(20),
                small_config(epochs=1, min_steps=10, max_steps=10, lr=0.1, schedule="onecycle"))
    rates = [p.metrics["lr"] for p in collect_progress(gen) if "lr" in p.metrics]
    assert len(rates) == 10
    assert rates[0] == pytest.approx(0.004)
    assert rates[1] == pytest.approx(0.1 + (0.004 - 0.1) / 2 * (1 + math.cos(math.pi * 0.5)))  # 0.052
    assert rates[2] == pytest.approx(0.1)
    assert rates[9] == pytest.approx(0.004 / 1e4)
    assert all(a > b for a, b in zip(rates[2:], rates[3:], strict=False))  # annealing
    constant = [p.metrics["lr"] for p in collect_progress(train(build_model("smallcnn", 10, seed=0), digits(20),
                small_config(epochs=1, min_steps=4, max_steps=4, lr=0.1))) if "lr" in p.metrics]
    assert constant == [pytest.approx(0.1)] * 4
    with pytest.raises(ValueError, match="schedule"):
        small_config(schedule="cosine")


def collect_progress(gen) -> list:
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration:
            return progress


def test_atl_train_takes_the_project_s_settings_and_the_options_given(tmp_path):
    """One recipe for the window and `atl train`: the project's saved training settings, then
    only the options the user typed."""
    from atl_desktop.cli import build_parser
    from atl_desktop.commands.train import _project_config
    from atl_desktop.store import Project
    from atl_desktop.store.keys import TRAIN_SETTING

    with Project.create(tmp_path / "p.atl") as project:
        project.add_class("a")
        project.set_setting(TRAIN_SETTING, {"backbone": "smallcnn", "min_steps": 7, "schedule": "onecycle",
                                            "batch_size": 64, "augment": "histology"})
        plain = _project_config(build_parser().parse_args(["train", "p.atl"]), project)
        assert (plain.backbone, plain.min_steps, plain.schedule, plain.batch_size, plain.augment) == (
            "smallcnn", 7, "onecycle", 64, "histology")
        assert (plain.epochs, plain.lr, plain.balanced, plain.weights) == (10, 1e-3, "auto", None)
        typed = _project_config(build_parser().parse_args(
            ["train", "p.atl", "--schedule", "constant", "--batch-size", "16", "--epochs", "2"]), project)
        assert (typed.schedule, typed.batch_size, typed.epochs, typed.min_steps) == ("constant", 16, 2, 7)
