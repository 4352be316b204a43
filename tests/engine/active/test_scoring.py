"""The scoring pass: results, cache hits, resume after cancel, invalidation, flat memory."""

import json
import tracemalloc
import weakref

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from atl_desktop.active.scoring import (
    MissingScores,
    ScoringConfig,
    load_scores,
    model_fingerprint,
    random_patches,
    remove_stale_scores,
    score_pool,
    scores_dir,
)
from atl_desktop.jobs import run_job


class TinyNet(nn.Module):
    """features_and_logits like the real Classifier; counts the images it sees."""

    def __init__(self, side=4, feature_dim=8, classes=3, seed=0):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(side * side, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, classes)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.seen = 0
        self.outputs: list[weakref.ref] = []

    def features_and_logits(self, x):
        self.seen += len(x)
        f = self.body(x)
        logits = self.head(f)
        self.outputs.append(weakref.ref(f))
        return f, logits

    def forward(self, x):
        return self.features_and_logits(x)[1]

    def alive_outputs(self):
        return sum(r() is not None for r in self.outputs)


class Pool(Dataset):
    """Images made from the index, so the dataset itself holds nothing per image."""

    def __init__(self, n, side=4, first_id=100):
        self.n, self.side = n, side
        self.image_ids = list(range(first_id, first_id + n))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.rand(1, self.side, self.side, generator=g), -1


def expected(model, dataset):
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        f, logits = model.features_and_logits(x)
    return torch.softmax(logits, 1).numpy(), f.numpy()


def test_pass_gives_softmax_and_features_and_caches_them(tmp_path):
    model, pool = TinyNet(), Pool(50)
    config = ScoringConfig(batch_size=16, device="cpu")
    progress = []
    table = run_job(score_pool(model, pool, tmp_path / "c", config=config), progress.append)
    probs, feats = expected(TinyNet(), pool)
    np.testing.assert_allclose(table.probs, probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table.features, feats, rtol=1e-5, atol=1e-6)
    assert table.image_ids.tolist() == pool.image_ids
    assert isinstance(table.probs, np.memmap)  # served from disk, not copied
    assert [p.done for p in progress] == [16, 32, 48, 50, 50] and progress[-1].total == 50
    assert model.seen == 50

    # cache hit: a second pass (a restarted session) computes nothing
    model.seen = 0
    again = run_job(score_pool(model, pool, tmp_path / "c", config=config))
    assert model.seen == 0
    np.testing.assert_array_equal(again.probs, table.probs)
    np.testing.assert_array_equal(load_scores(tmp_path / "c", pool.image_ids[::-1]).probs, probs[::-1])


def test_cancelled_pass_keeps_its_rows_and_resumes(tmp_path):
    model, pool = TinyNet(), Pool(100)
    config = ScoringConfig(batch_size=10, device="cpu", flush_seconds=3600.0)
    job = score_pool(model, pool, tmp_path / "c", config=config)
    for _ in range(3):
        next(job)
    job.close()  # cancel at a yield: the finally block marks the written rows done
    with pytest.raises(MissingScores):
        load_scores(tmp_path / "c", pool.image_ids)
    assert load_scores(tmp_path / "c", pool.image_ids[:30]).probs.shape == (30, 3)

    model.seen = 0
    table = run_job(score_pool(model, pool, tmp_path / "c", config=config))
    assert model.seen == 70  # only the rest
    probs, _ = expected(TinyNet(), pool)
    np.testing.assert_allclose(table.probs, probs, rtol=1e-5, atol=1e-6)


def test_rows_written_but_not_marked_done_are_recomputed(tmp_path):
    # As after a kill between writing rows and marking them: data present, done False.
    model, pool = TinyNet(), Pool(20)
    run_job(score_pool(model, pool, tmp_path / "c", config=ScoringConfig(batch_size=8, device="cpu")))
    part = next((tmp_path / "c").glob("part-*"))
    done = np.load(part / "done.npy", mmap_mode="r+")
    done[5:9] = False
    done.flush()
    del done
    (tmp_path / "c" / ".tmp-deadbeef").mkdir()  # a part whose creation was interrupted
    model.seen = 0
    table = run_job(score_pool(model, pool, tmp_path / "c", config=ScoringConfig(device="cpu")))
    assert model.seen == 4
    assert not (tmp_path / "c" / ".tmp-deadbeef").exists()
    np.testing.assert_allclose(table.probs, expected(TinyNet(), pool)[0], rtol=1e-5, atol=1e-6)


def test_new_images_are_scored_alone_and_joined(tmp_path):
    model = TinyNet()
    run_job(score_pool(model, Pool(30), tmp_path / "c", config=ScoringConfig(device="cpu")))
    bigger = Pool(45)
    model.seen = 0
    table = run_job(score_pool(model, bigger, tmp_path / "c", config=ScoringConfig(device="cpu")))
    assert model.seen == 15
    np.testing.assert_allclose(table.probs, expected(TinyNet(), bigger)[0], rtol=1e-5, atol=1e-6)


def test_new_checkpoint_means_new_cache(tmp_path):
    pool, config = Pool(20), ScoringConfig(device="cpu")
    old, new = TinyNet(seed=0), TinyNet(seed=1)
    key_old, key_new = model_fingerprint(old), model_fingerprint(new)
    assert key_old != key_new and key_old == model_fingerprint(TinyNet(seed=0))
    dir_old, dir_new = scores_dir(tmp_path, key_old, config), scores_dir(tmp_path, key_new, config)
    assert dir_old != dir_new and dir_old.parent.parent == tmp_path / "scores"
    run_job(score_pool(old, pool, dir_old, config=config))
    table = run_job(score_pool(new, pool, dir_new, config=config))
    assert new.seen == 20
    np.testing.assert_allclose(table.probs, expected(TinyNet(seed=1), pool)[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(table.probs, load_scores(dir_old, pool.image_ids).probs)
    removed = remove_stale_scores(tmp_path / "scores", keep_keys=[key_new])
    assert removed == [tmp_path / "scores" / key_old]
    with pytest.raises(MissingScores):
        load_scores(dir_old, pool.image_ids)


def test_augmented_and_mc_dropout_passes(tmp_path):
    pool = Pool(12)
    config = ScoringConfig(batch_size=5, device="cpu", augment_copies=4, mc_samples=6, seed=3)
    assert config.variant() != ScoringConfig().variant()
    table = run_job(score_pool(TinyNet(), pool, tmp_path / "a", config=config))
    assert table.augmented_probs.shape == (12, 4, 3) and table.mc_probs.shape == (12, 6, 3)
    np.testing.assert_allclose(table.augmented_probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(table.mc_probs.sum(-1), 1.0, rtol=1e-5)
    assert table.mc_probs.std(axis=1).max() > 1e-3  # dropout samples differ
    assert table.augmented_probs.std(axis=1).max() > 1e-4  # patches differ
    again = run_job(score_pool(TinyNet(), pool, tmp_path / "b", config=config))
    np.testing.assert_array_equal(again.mc_probs, table.mc_probs)  # seeded
    np.testing.assert_array_equal(again.augmented_probs, table.augmented_probs)


def test_random_patches_are_crops_of_the_image():
    x = torch.arange(64.0).reshape(1, 1, 8, 8).repeat(3, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    whole = random_patches(x, g, min_scale=1.0)  # side 1: the image itself or its mirror
    for i in range(3):
        assert torch.allclose(whole[i], x[i], atol=1e-4) or torch.allclose(whole[i], x[i].flip(-1), atol=1e-4)
    crops = random_patches(x, torch.Generator().manual_seed(1), min_scale=0.5)
    assert crops.shape == x.shape and crops.min() >= 0 and crops.max() <= 63


def peak_bytes(n, tmp_path, feature_dim):
    model, pool = TinyNet(side=4, feature_dim=feature_dim, classes=10), Pool(n)
    config = ScoringConfig(batch_size=250, device="cpu")
    job = score_pool(model, pool, tmp_path / f"m{n}", config=config)
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        for _ in job:
            # no model output outlives its batch (a list of tensors would keep them all)
            assert model.alive_outputs() <= 1
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_stays_flat_when_the_pool_grows_tenfold(tmp_path):
    feature_dim = 512
    small = peak_bytes(1_000, tmp_path, feature_dim)
    large = peak_bytes(10_000, tmp_path, feature_dim)
    per_row = (large - small) / 9_000
    # Keeping the features in memory would cost 4 * (512 + 10) = 2088 bytes per image; the
    # pass may only grow by its row index (ids, row numbers, done flags: tens of bytes).
    assert per_row < 128, f"{per_row:.0f} bytes per image"


# ---- the commands, end to end on a small project ---------------------------------------


@pytest.fixture
def project_with_checkpoint(tmp_path):
    from atl_desktop.data.importers import ImportOptions, import_source
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint
    from atl_desktop.store import Project

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    y = np.arange(30) % 3
    npz = tmp_path / "digits.npz"
    np.savez(npz, x=x, y=y, classes=np.array(["a", "b", "c"]))
    project = Project.create(tmp_path / "p.atl")
    run_job(import_source(project, npz, ImportOptions(labels="truth")))
    ids = project.image_ids(domain="target", split="pool")
    class_of = {c.name: c.id for c in project.classes()}
    for image_id, name in zip(ids[:6], ["a", "b", "c", "a", "b", "c"], strict=True):
        project.set_label(image_id, class_of[name])
    model = build_model("smallcnn", 3, seed=0)
    save_checkpoint(project, model, classes=project.class_names())
    project.close()
    return tmp_path / "p.atl"


def test_score_and_query_commands(project_with_checkpoint, capsys):
    from atl_desktop.cli import main
    from atl_desktop.store import Project

    path = project_with_checkpoint
    assert main(["score", str(path), "--device", "cpu", "--quiet"]) == 0
    with Project.open(path, readonly=True) as project:
        sha = project.latest_checkpoint().sha256
        parts = list((project.data_dir / "scores" / sha / "base").glob("part-*"))
        labelled = set(project.current_labels())
    assert len(parts) == 1
    assert main(["score", str(path), "--device", "cpu", "--quiet"]) == 0  # all cached
    assert list(parts[0].parent.glob("part-*")) == parts
    capsys.readouterr()

    for strategy, extra in [("entropy", []), ("hybrid", ["--param", "k=2", "--param", "diversity=mmd"]),
                            ("coreset", ["--prototypes"]), ("random", []),
                            ("aift", ["--param", "m=3"]), ("bald", ["--mc-samples", "3"])]:
        assert main(["query", str(path), "--strategy", strategy, "--batch", "4", "--device", "cpu",
                     "--quiet", "--json", *extra]) == 0
        shown = [item["id"] for item in json.loads(capsys.readouterr().out)["images"]]
        with Project.open(path, readonly=True) as project:
            last = project.rounds()[-1]
        assert last.strategy == strategy and last.params["chosen"] == shown
        assert len(set(shown)) == 4 and not set(shown) & labelled
        assert main(["round", "discard", str(path)]) == 0  # one open round at a time
        capsys.readouterr()


def test_a_new_checkpoint_is_scored_into_its_own_folder(project_with_checkpoint):
    from atl_desktop.cli import main
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint
    from atl_desktop.store import Project

    path = project_with_checkpoint
    assert main(["score", str(path), "--device", "cpu", "--quiet"]) == 0
    with Project.open(path) as project:
        save_checkpoint(project, build_model("smallcnn", 3, seed=1), classes=project.class_names())
    assert main(["score", str(path), "--device", "cpu", "--quiet"]) == 0
    with Project.open(path, readonly=True) as project:
        shas = sorted(c.sha256 for c in project.checkpoints())
        folders = sorted(p.name for p in (project.data_dir / "scores").iterdir())
        ids = project.image_ids(domain="target", split="pool")
        a, b = (load_scores(project.data_dir / "scores" / s / "base", ids) for s in shas)
    assert folders == shas and len(set(shas)) == 2
    assert not np.allclose(a.probs, b.probs)
