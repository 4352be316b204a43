"""Transfer methods: AdaBN, AutoDIAL's alignment layers, source selection, and every method
training a few steps end to end."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import TensorDataset

from atl_desktop.jobs import Cancelled, run_job
from atl_desktop.models import build_model
from atl_desktop.transfer import autodial
from atl_desktop.transfer.adabn import reestimate_batch_norm
from atl_desktop.transfer.methods import METHODS, make_method, method_options
from atl_desktop.transfer.selective import (
    gabor_bank,
    histogram_distances,
    nearest_source_indices,
    nearest_source_subset,
)
from atl_desktop.transfer.train import TrainConfig, train

TESTDATA = Path(__file__).resolve().parents[3] / "resources" / "testdata"


def digits(n: int, offset: int = 0, shift: float = 0.0) -> TensorDataset:
    data = np.load(TESTDATA / "mnist_600.npz", allow_pickle=False)
    x = torch.tensor(data["x"][offset:offset + n]).float().div(255).sub(0.5).div(0.5) + shift
    return TensorDataset(x[:, None].expand(-1, 3, -1, -1).contiguous(),
                         torch.tensor(data["y"][offset:offset + n]))


def small_config(**changes) -> TrainConfig:
    base = dict(backbone="smallcnn", epochs=1, batch_size=8, lr=1e-3, device="cpu", patience=0)
    return TrainConfig(**{**base, **changes})


# ---- AdaBN ---------------------------------------------------------------------------------


def test_adabn_changes_only_batch_norm_statistics_to_the_target_ones():
    model = build_model("smallcnn", 10, seed=0)
    run_job(train(model, digits(32), small_config(max_steps=3)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = digits(64, offset=100, shift=0.3)  # 4 batches (3 were tracked before)
    run_job(reestimate_batch_norm(model, target, batch_size=16))
    after = model.state_dict()
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for name, value in before.items():
        assert torch.equal(after[name], value) != name.endswith(statistics), name
    # Brute force: the first BN layer's mean is the mean of conv1's outputs over the target images.
    with torch.no_grad():
        conv = model.body.conv1[0](target.tensors[0])
    assert torch.allclose(model.body.conv1[1].running_mean, conv.mean((0, 2, 3)), atol=1e-5)
    assert model.body.conv1[1].momentum == 0.1 and model.training


def test_adabn_statistics_by_hand_with_the_other_layers_in_inference_mode():
    # Dropout before batch norm: it must not act while statistics are gathered, or the
    # variance would be that of the dropped-out inputs. One batch of the 1-D points
    # 0, 1, 2, 5: mean 2, unbiased variance (4 + 1 + 0 + 9) / 3 = 14/3.
    model = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(1))
    model.train()
    points = TensorDataset(torch.tensor([[0.0], [1.0], [2.0], [5.0]]), torch.zeros(4))
    run_job(reestimate_batch_norm(model, points, batch_size=4))
    assert model[1].running_mean.item() == pytest.approx(2.0)
    assert model[1].running_var.item() == pytest.approx(14 / 3)
    assert model[0].training and model[1].training  # modes put back


def test_cancelled_adabn_leaves_the_statistics_as_they_were():
    model = build_model("smallcnn", 10, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    asked = iter(range(10))
    with pytest.raises(Cancelled):
        run_job(reestimate_batch_norm(model, digits(48), batch_size=16),
                should_cancel=lambda: next(asked) >= 1)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


# ---- AutoDIAL ---------------------------------------------------------------------------------


def plain_bn(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.batch_norm(x, None, None, training=True, eps=1e-5)


def test_alignment_layer_extremes_reduce_to_plain_batch_norm():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(6, 3, 4, 4, generator=g)
    xt = torch.randn(6, 3, 4, 4, generator=g) * 2 + 1
    x, mask = torch.cat([xs, xt]), torch.tensor([False] * 6 + [True] * 6)
    for alpha, expected in ((1.0, torch.cat([plain_bn(xs), plain_bn(xt)])),  # each domain alone
                            (0.5, plain_bn(x))):  # the union of both
        layer = autodial.DomainAlignment(nn.BatchNorm2d(3), alpha).train()
        layer.target_mask = mask
        assert torch.allclose(layer(x), expected, atol=1e-5), alpha
    # In between, the target half is normalised with moments pulled towards the source's.
    layer = autodial.DomainAlignment(nn.BatchNorm2d(3), 0.75).train()
    layer.target_mask = mask
    y = layer(x)
    assert not torch.allclose(y[6:], plain_bn(xt), atol=1e-3)
    assert not torch.allclose(y, plain_bn(x), atol=1e-3)


def test_alignment_layer_normalises_inference_images_with_the_target_mixture():
    # momentum 1: the running moments are the last batch's (variances unbiased).
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(8, 2, 3, 3, generator=g)
    xt = torch.randn(8, 2, 3, 3, generator=g) * 3 - 2
    layer = autodial.DomainAlignment(nn.BatchNorm2d(2, momentum=1.0, affine=False), 0.75).train()
    layer.target_mask = torch.tensor([False] * 8 + [True] * 8)
    layer(torch.cat([xs, xt]))
    layer.target_mask = None
    layer.eval()
    mu_s, mu_t = xs.mean((0, 2, 3)), xt.mean((0, 2, 3))
    var_s, var_t = xs.var((0, 2, 3)), xt.var((0, 2, 3))  # unbiased, as running variances are
    # The target mixture: 0.75 of the target's moments, 0.25 of the source's, plus the gap.
    mean = 0.75 * mu_t + 0.25 * mu_s
    var = 0.75 * var_t + 0.25 * var_s + 0.75 * 0.25 * (mu_s - mu_t) ** 2
    x = torch.randn(4, 2, 3, 3, generator=g)
    expected = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_alignment_layers_fold_back_into_batch_norm_with_the_target_moments():
    model = build_model("smallcnn", 10, seed=0)
    layers = autodial.add_alignment_layers(model, 0.8)
    assert len(layers) == 2 and not any(isinstance(m, _BatchNorm) for m in model.modules())
    x, mask = digits(16).tensors[0], torch.tensor([False] * 8 + [True] * 8)
    model.train()
    with autodial.domains(layers, [False, True], [8, 8]):
        model(x)  # updates both domains' running moments
    assert torch.equal(layers[0].target_mask if layers[0].target_mask is not None else mask, mask)
    model.eval()
    with torch.no_grad():
        aligned = model(x)
        autodial.remove_alignment_layers(model)
        folded = model(x)
    assert all(not isinstance(m, autodial.DomainAlignment) for m in model.modules())
    assert torch.allclose(aligned, folded, atol=1e-5)
    assert set(model.state_dict()) == set(build_model("smallcnn", 10).state_dict())


def test_autodial_alpha_is_learned_and_stays_in_its_range():
    model = build_model("smallcnn", 10, seed=0)
    method = make_method("autodial", {"alpha_init": 0.75})
    seen = []
    job = train(model, None, small_config(lr=0.5, optimizer="sgd", max_steps=4),
                source_set=digits(32), target_set=digits(32, offset=100, shift=0.5), method=method)
    for _ in job:
        seen.extend(method.alphas())
    assert seen and all(0.5 <= a <= 1.0 for a in seen)
    assert any(a != 0.75 for a in seen)  # learned
    assert not any(isinstance(m, autodial.DomainAlignment) for m in model.modules())  # folded back


# ---- selective joint fine-tuning ----------------------------------------------------------------


def stripes(n: int, vertical: bool, period: int, generator: torch.Generator) -> torch.Tensor:
    r = torch.arange(28)
    wave = torch.cos(2 * torch.pi * r / period)
    image = wave[None, :].expand(28, 28) if vertical else wave[:, None].expand(28, 28)
    return image + 0.05 * torch.randn(n, 3, 28, 28, generator=generator)


def test_selection_picks_the_source_images_nearest_in_filter_bank_response():
    g = torch.Generator().manual_seed(0)
    # Source: 0-4 vertical stripes, 5-9 horizontal stripes, 10-14 noise; target: vertical stripes.
    source_x = torch.cat([stripes(5, True, 6, g), stripes(5, False, 6, g), torch.randn(5, 3, 28, 28, generator=g)])
    source = TensorDataset(source_x, torch.zeros(15, dtype=torch.long))
    target = TensorDataset(stripes(4, True, 6, g), torch.zeros(4, dtype=torch.long))
    chosen = nearest_source_subset(source, [target], neighbours=2, bins=8)
    assert chosen.indices and set(chosen.indices) <= {0, 1, 2, 3, 4}
    horizontal = TensorDataset(stripes(4, False, 6, g), torch.zeros(4, dtype=torch.long))
    assert set(nearest_source_subset(source, [horizontal], neighbours=3).indices) <= {5, 6, 7, 8, 9}
    assert len(nearest_source_subset(source, [target], neighbours=15).indices) == 15
    assert set(nearest_source_subset(source, [target], neighbours=2, bins=8, distance="l1").indices) \
        <= {0, 1, 2, 3, 4}


def test_histogram_distances_by_hand():
    # One filter, two bins. Target p = (0.9, 0.1); sources a = (0.8, 0.2), b = (0.99, 0.01).
    # L1: |a - p| = 0.2, |b - p| = 0.18 (b nearer).
    # KL(p || a) = 0.9 ln(0.9/0.8) + 0.1 ln(0.1/0.2) = 0.0367
    # KL(p || b) = 0.9 ln(0.9/0.99) + 0.1 ln(0.1/0.01) = 0.1445 (a nearer: b nearly lacks bin 2),
    # each bin smoothed first: v -> (v + 0.001) / 1.002.
    p = torch.tensor([[0.9, 0.1]], dtype=torch.float64)
    sources = torch.tensor([[0.8, 0.2], [0.99, 0.01]], dtype=torch.float64)
    assert histogram_distances(p, sources, 2, "l1")[0].tolist() == pytest.approx([0.2, 0.18])
    kl = histogram_distances(p, sources, 2, "kl")[0].tolist()
    def smoothed_kl(p, q):
        p, q = [(v + 1e-3) / 1.002 for v in p], [(v + 1e-3) / 1.002 for v in q]
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))

    assert kl == pytest.approx([smoothed_kl([0.9, 0.1], [0.8, 0.2]), smoothed_kl([0.9, 0.1], [0.99, 0.01])])
    assert kl == pytest.approx([0.9 * math.log(0.9 / 0.8) + 0.1 * math.log(0.5),
                                0.9 * math.log(0.9 / 0.99) + 0.1 * math.log(10)], rel=0.06)
    assert nearest_source_indices(sources, p, 1, 2, "kl").tolist() == [0]
    assert nearest_source_indices(sources, p, 1, 2, "l1").tolist() == [1]
    # An empty bin costs a finite amount (smoothing); identical histograms are at distance 0.
    empty = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert math.isfinite(histogram_distances(p, empty, 2)[0, 0].item())
    assert histogram_distances(p, p, 2)[0, 0].item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="distance"):
        make_method("selective", {"distance": "chi2"})


def test_gabor_bank_is_zero_mean_and_oriented():
    bank = gabor_bank(size=7, orientations=4, wavelengths=(4.0,))
    assert bank.shape == (4, 1, 7, 7)
    assert torch.allclose(bank.sum((1, 2, 3)), torch.zeros(4), atol=1e-6)
    # theta = 0 varies along x only near the centre row; theta = pi/2 is its transpose.
    assert torch.allclose(bank[0, 0].T, bank[2, 0], atol=1e-6)


# ---- every method, end to end ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_trains_a_few_steps(name):
    model = build_model("smallcnn", 10, seed=0)
    head = copy.deepcopy(model.head)
    body = copy.deepcopy(model.body)
    method = make_method(name)
    job = train(model, digits(16, offset=300), small_config(max_steps=3, epochs=3), source_set=digits(24),
                target_set=digits(24, offset=100, shift=0.3), method=method)
    progress = list(job)
    metrics = [p.metrics for p in progress if "loss" in p.metrics]
    assert len(metrics) == 3 and all(np.isfinite(m["loss"]) for m in metrics)
    expected = {"ddc": "mmd", "dan": "mk_mmd", "jan": "jmmd", "dann": "domain", "confusion": "confusion",
                "adda": "inverted", "autodial": "entropy"}
    if name in expected:
        assert all(expected[name] in m for m in metrics)
    assert type(model).__name__ == "Classifier"
    assert sum(isinstance(m, _BatchNorm) for m in model.modules()) == 2  # nothing left swapped in
    changed = any(not torch.equal(a, b) for a, b in zip(body.state_dict().values(),
                                                         model.body.state_dict().values(), strict=True))
    assert changed
    if name == "adda":  # target images only: no classification loss; the whole network adapts
        assert "ce_source" not in metrics[0] and "discriminator" in metrics[0]
        assert not torch.equal(head.weight, model.head.weight)
    if name == "dann":
        assert method.schedule.steps == 3
    if name == "adabn":
        assert any(p.message.startswith("adapting") for p in progress)
    json.dumps(method.hyperparameters())  # recordable


def test_adda_on_features_keeps_the_source_classifier_and_runs_adam_with_beta1_one_half(monkeypatch):
    from atl_desktop.transfer import train as train_module

    built = []
    real = train_module.make_optimizer

    def spy(config, groups):
        optimizer = real(config, groups)
        built.append(optimizer)
        return optimizer

    monkeypatch.setattr(train_module, "make_optimizer", spy)
    model = build_model("smallcnn", 10, seed=0)
    head, conv = copy.deepcopy(model.head), copy.deepcopy(model.body.conv1)
    start = copy.deepcopy(model.state_dict())
    method = make_method("adda", {"layer": "features", "hidden": 32})
    for _ in train(model, None, small_config(max_steps=2), source_set=digits(16),
                   target_set=digits(16, offset=100, shift=0.3), method=method):
        # The source model stays as it was, batch-norm statistics included.
        fixed = method.source_model.state_dict()
        assert all(torch.equal(fixed[k], v) for k, v in start.items())
    assert not hasattr(method, "source_model")  # dropped at the end
    assert torch.equal(head.weight, model.head.weight) and torch.equal(head.bias, model.head.bias)
    assert not torch.equal(conv[0].weight, model.body.conv1[0].weight)
    assert all(p.requires_grad for p in model.parameters())  # the head is trainable again afterwards
    groups = built[0].param_groups
    assert {g["name"] for g in groups} >= {"conv1", "fc", "method.adda.discriminator"}
    assert all(g["betas"] == (0.5, 0.999) for g in groups)
    assert "head" not in {g["name"] for g in groups}
    # SGD has no betas; other methods keep Adam's defaults.
    assert make_method("adda").optimizer_settings("sgd") == {}
    assert make_method("dann").optimizer_settings("adamw") == {}
    with pytest.raises(ValueError, match="layer"):
        make_method("adda", {"layer": "conv1"})


def test_options_are_dataclasses_with_defaults_and_bad_ones_are_refused():
    assert method_options("dann") == {"trade_off": 1.0, "gamma": 10.0, "hidden": 500, "dropout": 0.0}
    assert method_options("dan")["layers"] == ["features", "logits"]
    assert make_method("ddc", {"trade_off": 2.0}).hyperparameters()["trade_off"] == 2.0
    with pytest.raises(ValueError, match="trade_off"):
        make_method("ddc", {"lambda": 2.0})
    with pytest.raises(ValueError, match="unknown method"):
        make_method("cdan")


def test_dan_uses_the_linear_estimator_when_asked():
    method = make_method("dan", {"estimator": "linear", "layers": ["conv2", "features"]})
    assert method.layers[:2] == ("conv2", "features")
    assert all(m.estimator == "linear" for m in method.mmds)
    model = build_model("smallcnn", 10, seed=0)
    run_job(train(model, None, small_config(max_steps=2), source_set=digits(16),
                  target_set=digits(16, offset=100), method=method))
