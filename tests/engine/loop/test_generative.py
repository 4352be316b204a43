"""GAAL and ASAL over a real (tiny) project: the GAN job, synthetic images stored and labelled,
fine-tuning on them, ASAL's cached pool features, and the `atl gan` / `atl round` commands."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from atl_desktop.active.gan import tensor_to_images
from atl_desktop.cli import main as atl
from atl_desktop.jobs import Cancelled, run_job
from atl_desktop.loop.generative import default_gan_config, gan_train_job, load_gan
from atl_desktop.loop.rounds import STOP_SET
from atl_desktop.loop.session import TRAIN_SETTING, finish_round_job, query_job, unlabelled_pool
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import GAN_SETTING
from tests.conftest import TESTDATA

TINY_GAN = {"latent_dim": 12, "width": 8, "steps": 30, "batch_size": 16, "preview_every": 15, "preview_count": 4}
TRAIN = {"backbone": "smallcnn", "epochs": 1, "batch_size": 8, "patience": 0, "device": "cpu", "max_steps": 3}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """120 USPS digits (16 px, grey) in the pool with hidden truth, 40 test images, a random
    smallcnn checkpoint, and tiny GAN settings."""
    from atl_desktop.data.importers import ImportOptions, import_source
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    folder = tmp_path_factory.mktemp("gan")
    with np.load(TESTDATA / "usps_900.npz", allow_pickle=False) as f:
        np.savez(folder / "usps.npz", x_train=f["x_train"][:120], y_train=f["y_train"][:120],
                 x_test=f["x_test"][:40], y_test=f["y_test"][:40], classes=f["classes"])
    path = folder / "p.atl"
    with Project.create(path) as p:
        run_job(import_source(p, folder / "usps.npz", ImportOptions(labels="truth")))
        p.set_setting(GAN_SETTING, TINY_GAN)
        p.set_setting(TRAIN_SETTING, TRAIN)
        save_checkpoint(p, build_model("smallcnn", 10, seed=0), classes=p.class_names(), seed=0)
    return path


@pytest.fixture
def project_path(template, tmp_path):
    target = tmp_path / template.name
    shutil.copy(template, target)
    shutil.copytree(template.with_name(template.name + ".d"), target.with_name(target.name + ".d"),
                    ignore=shutil.ignore_patterns("lock"))
    return target


def test_gan_settings_follow_the_pool(template):
    with Project.open(template, readonly=True) as p:
        config = default_gan_config(p)
    assert (config.image_size, config.channels, config.width, config.steps) == (16, 1, 8, 30)


def test_gaal_round_stores_synthetic_images_that_are_labelled_and_trained_on(project_path):
    with Project.open(project_path) as p:
        result = run_job(query_job(p, strategy="gaal", batch=4, params={"steps": 5}, seed=2))
        (generator,) = p.generators()  # trained on the way, as there was none
        assert generator.metrics["images"] == 120 and generator.metrics["steps"] == 30
        previews = generator.metrics["previews"]
        assert len(previews) == 2 and all((p.data_dir / f).is_file() for f in previews)
        ids = [it.image_id for it in result.items]
        assert len(set(ids)) == 4 and all(it.synthetic for it in result.items)
        assert all(it.reason.startswith("SYNTHETIC") and len(it.top) == 3 for it in result.items)
        rnd = p.rounds()[-1]
        assert rnd.strategy == "gaal" and rnd.params["chosen"] == ids and rnd.params["synthetic"]
        unlabelled, _ = unlabelled_pool(p)
        assert not set(ids) & set(unlabelled.tolist()) and len(unlabelled) == 120
        with pytest.raises(ProjectError, match="images the GAN made"):  # no ground truth for them
            run_job(finish_round_job(p, oracle=True))
        for k, image_id in enumerate(ids):  # the expert's labels
            p.set_label(image_id, p.classes()[k].id, round=rnd.id, strategy="gaal")
        summary = run_job(finish_round_job(p))
        assert summary.metrics["labels"] == 4 and summary.metrics["train"]["n_train"] == 4
        assert summary.metrics["test"]["n"] == 40
        stop_set = p.get_setting(STOP_SET)["image_ids"]
        assert len(stop_set) == 120 and not set(stop_set) & set(ids)  # real images only
    with Project.open(project_path, readonly=True) as p:  # everything survives reopening
        gan, _ = load_gan(p)
        for image_id in ids:
            record, meta = p.image(image_id), p.synthetic_record(image_id)
            assert record.synthetic == 1 and meta.round_id == rnd.id and meta.generator_id == generator.id
            stored = np.asarray(Image.open(p.image_path(record)))
            with torch.no_grad():
                again = tensor_to_images(gan.generator(torch.tensor([meta.latent])))[0]
            assert np.array_equal(stored, again)  # the latent code regenerates the image exactly
        assert p.counts()["synthetic"] == 4 and len(p.current_labels()) == 4


def test_asal_queries_real_unlabelled_images_and_caches_the_pool_features(project_path):
    with Project.open(project_path) as p:
        run_job(gan_train_job(p))
        first = p.image_ids()[0]
        p.set_label(first, p.classes()[0].id)
        messages = []
        result = run_job(query_job(p, strategy="asal", batch=6, params={"steps": 5, "dims": 8}, seed=1),
                         lambda pr: messages.append(pr.message))
        ids = [it.image_id for it in result.items]
        assert len(set(ids)) == 6 and first not in ids and not any(it.synthetic for it in result.items)
        assert all(p.image(i).synthetic == 0 for i in ids)
        assert all(it.reason.startswith("looks like a GAN-made image") for it in result.items)
        rnd = p.rounds()[-1]
        assert rnd.strategy == "asal" and rnd.params["chosen"] == ids
        assert any("in the pca space" in m for m in messages)
        p.finish_round(rnd.id)
        messages.clear()
        run_job(query_job(p, strategy="asal", batch=6, params={"steps": 5, "dims": 8}, seed=1),
                lambda pr: messages.append(pr.message))
        assert "pool features from the cache" in messages


def test_cancelled_gan_training_records_no_generator(project_path):
    seen = []

    def cancel() -> bool:
        return len([m for m in seen if m == "training the GAN"]) >= 5

    with Project.open(project_path) as p:
        with pytest.raises(Cancelled):
            run_job(gan_train_job(p), lambda progress: seen.append(progress.message), cancel)
        assert p.generators() == [] and p.integrity_ok()
        assert not list((p.data_dir / "generators").glob("*.safetensors"))


def test_unknown_gan_parameters_are_a_clear_error(project_path):
    with Project.open(project_path) as p:
        with pytest.raises(ProjectError, match="gaal has no parameter step; it takes"):
            run_job(query_job(p, strategy="gaal", batch=2, params={"step": 3}))


def test_gan_train_refuses_a_pool_without_images(tmp_path):
    with Project.create(tmp_path / "e.atl") as p:
        with pytest.raises(ProjectError, match="fewer than two"):
            run_job(gan_train_job(p, default_gan_config(p)))


def test_atl_gan_train_and_atl_round_query_gaal(project_path, capsys):
    assert atl(["gan", "train", str(project_path), "--steps", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "GAN 1 trained on 120 images" in out
    assert atl(["round", "query", str(project_path), "--strategy", "gaal", "--batch", "2",
                "--param", "steps=3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("SYNTHETIC") == 2
    assert atl(["gan", "list", str(project_path)]) == 0
    assert "dcgan" in capsys.readouterr().out
    assert atl(["gan", "train", str(project_path), "--image-size", "30", "--quiet"]) == 1
    assert "not 4..7 times a power of two" in capsys.readouterr().err
