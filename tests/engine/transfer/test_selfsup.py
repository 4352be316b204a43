"""SimCLR pre-training: the loss by hand, the augmentations, and the project job."""

import math

import numpy as np
import pytest
import torch

from atl_desktop.jobs import Cancelled, run_job
from atl_desktop.models import build_model
from atl_desktop.store import Project
from atl_desktop.transfer.selfsup import (
    BatchAugment,
    SelfSupConfig,
    _lr_factor,
    is_encoder_only,
    nt_xent,
    pretrain,
    pretrain_project,
)


def test_nt_xent_by_hand():
    # Two images, views identical, orthogonal: each anchor sees its positive at cosine 1
    # and two negatives at cosine 0, so every term is -log(e / (e + 2)).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(nt_xent(z, z.clone(), 1.0)) == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    # Temperature 0.5 doubles the logits: -log(e^2 / (e^2 + 2)).
    assert float(nt_xent(z, z.clone(), 0.5)) == pytest.approx(math.log(1 + 2 / math.e**2), rel=1e-6)


def test_nt_xent_prefers_matching_views():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    swapped = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert float(nt_xent(a, a, 0.2)) < float(nt_xent(a, swapped, 0.2))


def test_augment_keeps_shape_range_and_differs_per_call():
    config = SelfSupConfig(steps=1, batch_size=2)
    aug = BatchAugment(config, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.Generator().manual_seed(0))
    batch = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    a, b = aug(batch), aug(batch)
    assert a.shape == (4, 3, 16, 16)
    assert float(a.min()) >= -2.0 - 1e-6 and float(a.max()) <= 2.0 + 1e-6  # (0 - .5) / .25 .. (1 - .5) / .25
    assert not torch.allclose(a, b)


def test_learning_rate_warms_up_then_decays_to_zero():
    c = SelfSupConfig(steps=110, warmup_steps=10)
    assert _lr_factor(0, c) == pytest.approx(0.1)
    assert _lr_factor(9, c) == pytest.approx(1.0)
    assert _lr_factor(60, c) == pytest.approx(0.5)
    assert _lr_factor(110, c) == pytest.approx(0.0)


def test_pretrain_changes_the_body_not_the_head():
    model = build_model("smallcnn", 3, input_size=16, seed=0)
    head = model.head.weight.detach().clone()
    body = [p.detach().clone() for p in model.body.parameters()]
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    metrics = run_job(pretrain(model, images, SelfSupConfig(steps=3, batch_size=4, warmup_steps=1)))
    assert metrics["steps"] == 3 and np.isfinite(metrics["loss"])
    assert torch.equal(model.head.weight, head)
    assert any(not torch.equal(a, b) for a, b in zip(body, model.body.parameters(), strict=True))


def test_pretrain_is_reproducible():
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    losses = []
    for _ in range(2):
        model = build_model("smallcnn", 2, input_size=16, seed=0)
        losses.append(run_job(pretrain(model, images, SelfSupConfig(steps=2, batch_size=4)))["loss"])
    assert losses[0] == losses[1]


@pytest.fixture
def small_project(tmp_path):
    from atl_desktop.data.importers import ImportOptions, import_source
    from tests.conftest import TESTDATA

    with Project.create(tmp_path / "p.atl") as p:
        run_job(import_source(p, TESTDATA / "pathmnist_270.npz",
                              ImportOptions(domain="target", split="pool", labels="truth")))
        yield p


def test_project_job_records_an_encoder_and_cancel_records_nothing(small_project):
    project = small_project
    config = SelfSupConfig(backbone="smallcnn", image_size=16, steps=2, batch_size=4)
    with pytest.raises(Cancelled):
        run_job(pretrain_project(project, config), should_cancel=lambda: True)
    assert project.checkpoints() == []
    checkpoint_id = run_job(pretrain_project(project, config))
    record = project.checkpoint(checkpoint_id)
    assert is_encoder_only(record)
    assert record.config["selfsup"]["steps"] == 2
