"""Slides in the learning loop: training with stain normalisation and HED augmentation,
scoring, and AIFT whose augmented patches are crops jittered around each patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atl_desktop.active.predictions import latest_predictions
from atl_desktop.data.datasets import AugmentedCopies, project_dataset
from atl_desktop.data.decode import load_image
from atl_desktop.data.slides import SLIDES
from atl_desktop.data.stain import StainNormalise, fit_stain
from atl_desktop.data.tiling import TilingParams, add_slide
from atl_desktop.jobs import run_job
from atl_desktop.loop.session import query_job
from atl_desktop.models.checkpoints import load_checkpoint
from atl_desktop.models.transforms import input_transform
from atl_desktop.store import Project
from atl_desktop.store.keys import STAIN_SETTING
from atl_desktop.transfer.train import TrainConfig, train_project
from tests.slidefiles import tissue_image, write_pyramid


@pytest.fixture
def slide_project(tmp_path):
    img = tissue_image(seed=1)
    img[128:512, 448:640] = (110, 70, 190)  # the right part of the block is another tissue
    path = tmp_path / "s.tif"
    write_pyramid(path, img)
    with Project.create(tmp_path / "p.atl") as project:
        tumour, stroma = project.add_class("tumour"), project.add_class("stroma")
        report = run_job(add_slide(project, path, TilingParams(patch=64, tissue_side=256)))
        for image_id in report.image_ids:
            ref = project.image_path(project.image(image_id))
            if ref.x + 64 <= 448 and ref.y < 256:
                project.set_label(image_id, tumour)
            elif ref.x >= 448 and ref.y < 256:
                project.set_label(image_id, stroma)
        yield project, report
    SLIDES.close()


def test_training_records_stain_normalisation_and_scoring_uses_it(slide_project):
    project, report = slide_project
    reference = load_image(project.image_path(project.image(report.image_ids[0])))
    project.set_setting(STAIN_SETTING, fit_stain("macenko", reference, name="image 1").to_json())
    config = TrainConfig(backbone="smallcnn", epochs=1, batch_size=16, device="cpu", patience=0,
                         augment="hed")
    result = run_job(train_project(project, config))
    model, record = load_checkpoint(project, result.checkpoint_id)
    assert model.spec.stain["method"] == "macenko" and model.spec.stain["reference_image"] == "image 1"
    assert any(isinstance(step, StainNormalise) for step in input_transform(model.spec).transforms)

    query = run_job(query_job(project, strategy="aift", batch=3, params={"m": 4}))
    assert len(query.items) == 3
    predictions = latest_predictions(project, report.image_ids)
    assert predictions.scored.all() and predictions.checkpoint_id == result.checkpoint_id
    assert np.allclose(predictions.probs.sum(axis=1), 1.0, atol=1e-5)


def test_aift_copies_of_a_patch_are_jittered_crops_of_the_slide(slide_project):
    project, report = slide_project
    dataset = project_dataset(project, labelled=None)
    copies = AugmentedCopies(dataset, copies=4, min_scale=0.6, seed=0)
    x, _ = copies[0]
    assert tuple(x.shape) == (5, 3, 64, 64)
    assert torch.equal(x[0], dataset[0][0])  # the patch itself comes first
    assert not any(torch.equal(x[0], x[k]) for k in range(1, 5))
    again, _ = AugmentedCopies(dataset, copies=4, min_scale=0.6, seed=0)[0]
    assert torch.equal(x, again)  # seeded by (seed, image id): reproducible
    # A patch at the block's edge: jittered crops take in the glass beside it, which a crop
    # inside the patch never could. The block's left edge is x = 256; the patch at x = 256.
    edge = next(i for i, image_id in enumerate(dataset.image_ids)
                if project.image_path(project.image(image_id)).x == 256)
    xs, _ = AugmentedCopies(dataset, copies=8, min_scale=0.6, seed=1)[edge]
    whiter = [(xs[k].mean() > xs[0].mean() + 0.02).item() for k in range(1, 9)]
    assert any(whiter)
