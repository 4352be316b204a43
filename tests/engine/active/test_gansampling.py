"""GAN sampling: the DCGAN, the latent entropy search (GAAL/ASAL), LSH against exact search,
ASAL's matching rule, and the GAN-to-classifier input path."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atl_desktop.active.gan import (
    GanConfig,
    GanFileError,
    build_gan,
    gan_bytes,
    gan_from_bytes,
    images_to_tensor,
    layout,
    preview_grid,
    sample_images,
    train_gan,
)
from atl_desktop.active.gansampling import (
    FeatureSpaceConfig,
    GanContext,
    LatentSearch,
    PoolFeatures,
    _first_free,
    asal_matches,
    classifier_input,
    entropy_of_logits,
    fit_feature_space,
    gaal_synthesise,
    maximise_entropy,
    space_from_tensors,
)
from atl_desktop.active.lsh import (
    DEFAULT_PROBES,
    ExactIndex,
    LshConfig,
    LshIndex,
    Neighbours,
    _probe_keys,
)
from atl_desktop.active.strategies import STRATEGIES, SelectionInput, select, synthesise
from atl_desktop.jobs import run_job
from atl_desktop.models import build_model
from atl_desktop.models.transforms import input_transform

# ---- the latent search ------------------------------------------------------------------


class Linear2(nn.Module):
    """Two-class logits (0, w.z + b): the entropy is largest on the plane w.z + b = 0."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = torch.tensor(w), torch.tensor(b)

    def forward(self, z):
        m = z @ self.w + self.b
        return torch.stack([torch.zeros_like(m), m], dim=1)


def test_entropy_ascent_on_a_linear_classifier_ends_at_the_projection_onto_its_boundary():
    # w = (1, 2, 2), b = -1, z0 = (2, 1, 0): w.z0 + b = 3 and |w|^2 = 9, so every gradient of the
    # entropy points along w and the search ends at the orthogonal projection onto the plane,
    # z0 - (3 / 9) w = (5/3, 1/3, -2/3), where both classes have p = 1/2 (entropy ln 2).
    classifier = Linear2([1.0, 2.0, 2.0], -1.0)
    z0 = torch.tensor([[2.0, 1.0, 0.0]])
    result = maximise_entropy(lambda z: z, classifier, z0, LatentSearch(steps=200, step_size=1.0, constraint="none"))
    assert result.z[0].tolist() == pytest.approx([5 / 3, 1 / 3, -2 / 3], abs=0.02)
    p = 1 / (1 + math.exp(-3.0))
    assert result.entropy_start[0] == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)), abs=1e-5)
    assert result.entropy_end[0] == pytest.approx(math.log(2), abs=1e-4)


def test_entropy_ascent_raises_a_toy_classifiers_entropy_and_keeps_codes_on_the_sphere():
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 6))
    classifier = nn.Sequential(nn.Linear(6, 5))
    with torch.no_grad():
        classifier[0].weight.mul_(8.0)  # confident: low entropy at random codes
    z0 = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    result = maximise_entropy(generator, classifier, z0, LatentSearch(steps=80, step_size=0.5))
    assert result.entropy_end.mean() > result.entropy_start.mean() + 0.3
    assert (result.entropy_end >= result.entropy_start - 1e-3).mean() > 0.9
    assert result.entropy_end.max() <= math.log(5) + 1e-6
    assert torch.allclose(result.z.norm(dim=1), torch.full((32,), math.sqrt(8)), atol=1e-4)
    assert all(p.grad is None for p in [*generator.parameters(), *classifier.parameters()])
    with torch.no_grad():  # a caller's no_grad does not stop the search
        again = maximise_entropy(generator, classifier, z0, LatentSearch(steps=80, step_size=0.5))
    assert np.allclose(again.entropy_end, result.entropy_end, atol=1e-6)


def test_entropy_of_logits_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1.0, 1e-30, 1e-30]]))
    assert entropy_of_logits(logits).tolist() == pytest.approx([1.5 * math.log(2), 0.0], abs=1e-6)


# ---- the DCGAN ----------------------------------------------------------------------------


def test_layout_of_image_sizes():
    assert [layout(s) for s in (16, 28, 32, 48, 64)] == [(4, 2), (7, 2), (4, 3), (6, 3), (4, 4)]
    with pytest.raises(ValueError, match="not 4..7 times"):
        layout(30)


@pytest.mark.parametrize("size,channels", [(16, 1), (28, 1), (32, 3)])
def test_generator_and_discriminator_shapes(size, channels):
    gan = build_gan(GanConfig(image_size=size, channels=channels, latent_dim=10, width=8))
    x = gan.generator(torch.randn(3, 10))
    assert x.shape == (3, channels, size, size) and x.abs().max() <= 1
    assert gan.discriminator(x).shape == (3,)
    assert gan.discriminator.features(x).shape == (3, gan.discriminator.feature_dim)


def _digits(n=64, size=16, seed=0):
    """Bars at random heights: a toy pool with structure a GAN can pick up quickly."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r = rng.integers(2, size - 4)
        x[i, r : r + 3] = 255 if i % 2 else 0
        x[i, :, r : r + 3] = 255 if i % 2 == 0 else x[i, :, r : r + 3]
    return x


def test_gan_training_is_a_job_with_previews_and_its_file_round_trips(tmp_path):
    config = GanConfig(image_size=16, latent_dim=8, width=8, steps=6, batch_size=16, preview_every=3,
                       preview_count=4)
    images = images_to_tensor(_digits(), config)
    seen = []
    job = train_gan(images, config, on_preview=lambda step, grid: seen.append((step, grid.shape)))
    progress = []
    result = run_job(job, progress.append)
    assert [p.done for p in progress] == list(range(1, 7)) and progress[-1].total == 6
    assert {"loss_d", "loss_g", "d_real", "d_fake"} <= set(progress[-1].metrics)
    assert [s for s, _ in seen] == [3, 6] and seen[0][1] == (2 + 2 * 18, 2 + 2 * 18)  # 2x2 grid, pad 2
    assert [s for s, _ in result.previews] == [3, 6]
    data = gan_bytes(result.gan, {"steps": 6})
    again, meta = gan_from_bytes(data)
    assert meta["config"]["latent_dim"] == 8 and meta["metrics"] == {"steps": 6}
    z = torch.randn(5, 8)
    assert np.array_equal(sample_images(again, z), sample_images(result.gan, z))
    with pytest.raises(GanFileError, match="not an ATL Desktop GAN"):
        gan_from_bytes(b"junk" * 10)


def test_same_seed_same_gan():
    config = GanConfig(image_size=16, latent_dim=8, width=8, steps=3, batch_size=8, preview_every=0)
    images = images_to_tensor(_digits(16), config)
    a, b = (run_job(train_gan(images, config)) for _ in range(2))
    for x, y in zip(a.gan.state_dict().values(), b.gan.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_preview_grid_by_hand():
    images = np.stack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30)])
    grid = preview_grid(images, pad=1)
    # 3 images -> 2 columns, 2 rows; each cell 2 px plus 1 px padding.
    assert grid.shape == (7, 7)
    assert grid[1, 1] == 10 and grid[1, 4] == 20 and grid[4, 1] == 30 and grid[4, 4] == 0 and grid[0, 0] == 0


# ---- GAN images as classifier inputs --------------------------------------------------------


def test_classifier_input_matches_the_models_own_transform():
    """A 16 px grey image through the GAN path equals the same image through input_transform."""
    pixels = _digits(1, 16)[0]
    model = build_model("smallcnn", 3, seed=0)
    expected = input_transform(model.spec)(Image.fromarray(pixels, "L"))
    gan_format = images_to_tensor(pixels[None], GanConfig(image_size=16))
    got = classifier_input(gan_format, model.spec)[0]
    assert got.shape == expected.shape == (3, 28, 28)
    assert (got - expected).abs().mean() < 0.02  # PIL's and torch's bilinear resampling differ slightly


# ---- nearest neighbours -----------------------------------------------------------------------


def _clustered(n, dims=16, clusters=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dims)) * 4
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dims))
    return x.astype(np.float32), rng


def test_exact_search_matches_brute_force_and_respects_the_allowed_mask():
    x, rng = _clustered(500)
    q = rng.standard_normal((7, 16)).astype(np.float32) * 4
    allowed = rng.random(500) < 0.5
    found = ExactIndex(x).search(q, 3, allowed)
    for i in range(7):
        d = np.sqrt(((x.astype(np.float64) - q[i]) ** 2).sum(1))
        d[~allowed] = np.inf
        want = np.argsort(d, kind="stable")[:3]
        assert found.indices[i].tolist() == want.tolist()
        assert found.distances[i] == pytest.approx(d[want], rel=1e-6)


def test_lsh_recall_against_exact_search_while_examining_a_small_share():
    x, rng = _clustered(20000)
    queries = x[rng.choice(len(x), 200, replace=False)] + 0.3 * rng.standard_normal((200, 16)).astype(np.float32)
    lsh = LshIndex.build(x, LshConfig(seed=0))
    approx, exact = lsh.search(queries, 5), ExactIndex(x).search(queries, 5)
    recall_at_1 = np.mean(approx.indices[:, 0] == exact.indices[:, 0])
    recall_at_5 = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx.indices, exact.indices, strict=True)])
    assert recall_at_1 >= 0.9 and recall_at_5 >= 0.85
    assert approx.candidates.mean() < 0.1 * len(x) and not approx.fallback.any()
    # Never a wrong distance: every returned neighbour is ranked by its exact distance.
    d = np.sqrt(((x[approx.indices[:, 0]].astype(np.float64) - queries) ** 2).sum(1))
    assert approx.distances[:, 0] == pytest.approx(d, rel=1e-6)


def test_multi_probe_moves_the_hash_nearest_its_boundary_by_one_step():
    # One table, K = 2 hashes, w = 1, a = identity, b = 0, mix = (1, 1000): the query (0.9, 0.35)
    # lies in bucket (0, 0), key 0. Its boundary gaps: down 0.9 / 0.35, up 0.1 / 0.65. Nearest: up
    # in hash 0 (key +1), then down in hash 1 (key -1000), then up in hash 1 (+1000).
    projections = np.eye(2)[None]
    keys = _probe_keys(np.array([[0.9, 0.35]]), projections, np.zeros((1, 2)), 1.0, np.array([[1, 1000]]), 3)
    assert keys.tolist() == [[[0, 1, -1000, 1000]]]


def test_lsh_width_is_four_times_the_radius_of_example_queries():
    # Points on a line at 0, 1, ..., 99; queries at 10.5 + 0.2 and 50 + 3: nearest distances 0.3 and 3,
    # median 1.65, so w = 4 * 1.65 = 6.6.
    x = np.stack([np.arange(100.0), np.zeros(100)], axis=1)
    queries = np.array([[10.7, 0.0], [50.0, 3.0]])
    assert LshIndex.build(x, LshConfig(bits=2), example_queries=queries).width == pytest.approx(6.6)
    # Without examples: the points' own median nearest-neighbour distance, 1.
    assert LshIndex.build(x, LshConfig(bits=2)).width == pytest.approx(4.0)


def test_lsh_falls_back_to_exact_search_when_its_buckets_hold_nothing_allowed(tmp_path):
    x, rng = _clustered(3000)
    lsh = LshIndex.build(x, LshConfig(seed=1))
    q = x[:4] + 0.01
    assert lsh.search(q, 1).indices[:, 0].tolist() == [0, 1, 2, 3]
    keys = _probe_keys(q.astype(np.float64), lsh.projections, lsh.offsets, lsh.width, lsh.mix, DEFAULT_PROBES)
    allowed = np.ones(len(x), dtype=bool)
    for t in range(lsh.tables):  # take away every point in a bucket that a query probes
        allowed[lsh.order[t][np.isin(lsh.sorted_keys[t], keys[t].ravel())]] = False
    found = lsh.search(q, 2, allowed)
    assert found.fallback.all() and (found.candidates == 0).all()
    assert np.array_equal(found.indices, ExactIndex(x).search(q, 2, allowed).indices)
    assert allowed[found.indices].all()
    lsh.save(tmp_path / "index.npz")
    again = LshIndex.load(tmp_path / "index.npz", x)
    assert np.array_equal(again.search(q, 3).indices, lsh.search(q, 3).indices)
    with pytest.raises(ValueError, match="indexes 3000 points"):
        LshIndex.load(tmp_path / "index.npz", x[:10])


def test_asal_matching_takes_the_nearest_free_image_most_uncertain_first():
    # Synthetic images 0, 1, 2 with entropies 0.2, 0.9, 0.5 -> served in the order 1, 2, 0.
    # Rank 1: image 1 takes 5, image 2 takes 8, image 0 wants 5 (taken). Rank 2: image 1 takes 7.
    found = Neighbours(np.array([[5, 6], [5, 7], [8, 5]]), np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
                       np.zeros(3), np.zeros(3, dtype=bool))
    entropy = np.array([0.2, 0.9, 0.5])
    chosen, dist, ent = _first_free(found, np.argsort(-entropy, kind="stable"), 3, entropy)
    assert chosen == [5, 8, 7] and dist == [3.0, 5.0, 4.0] and ent == [0.9, 0.5, 0.9]


# ---- GAAL and ASAL through the registry ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_context():
    config = GanConfig(image_size=16, latent_dim=8, width=8, steps=60, batch_size=16, preview_every=0)
    pool = images_to_tensor(_digits(80), config)
    gan = run_job(train_gan(pool, config)).gan
    classifier = build_model("smallcnn", 3, seed=0).eval()
    with torch.no_grad():
        classifier.head.weight.mul_(100.0)  # a confident (if untrained) classifier: entropy to gain
    return gan, classifier, pool


@pytest.mark.parametrize("space", ["pca", "discriminator", "autoencoder"])
def test_asal_picks_distinct_unlabelled_pool_rows(tiny_context, space):
    gan, classifier, pool = tiny_context
    fs_config = FeatureSpaceConfig(space, dims=6, autoencoder_steps=5)
    fitted = run_job(fit_feature_space(pool, gan, fs_config))
    feats = fitted.transform(pool)
    assert feats.shape == (80, 6)
    again = space_from_tensors(space, fitted.tensors(), gan, fs_config)
    assert np.allclose(again.transform(pool), feats, atol=1e-5)
    unlabelled = np.arange(10, 80)  # the first ten are labelled
    ctx = GanContext(gan, classifier, torch.device("cpu"),
                     PoolFeatures(fitted, LshIndex.build(feats), ExactIndex(feats), unlabelled))
    data = SelectionInput(generative=ctx)
    rows = select("asal", data, 12, np.random.default_rng(0), steps=5)
    assert len(rows) == 12 and len(set(rows.tolist())) == 12 and rows.min() >= 0 and rows.max() < 70
    exact = asal_matches(ctx, 12, np.random.default_rng(0), steps=5, exact=True)
    assert len(set(exact.rows.tolist())) == 12 and exact.rows.max() < 70 and exact.fallback == 1.0


def test_gaal_makes_images_of_higher_entropy_than_its_random_starts(tiny_context):
    gan, classifier, _ = tiny_context
    ctx = GanContext(gan, classifier, torch.device("cpu"))
    batch = synthesise("gaal", SelectionInput(generative=ctx), 6, np.random.default_rng(3), steps=15)
    assert batch.images.shape == (6, 16, 16) and batch.images.dtype == np.uint8
    assert batch.latents.shape == (6, 8) and batch.probs.shape == (6, 3)
    assert batch.entropy.mean() > batch.entropy_start.mean() + 0.05
    same = gaal_synthesise(ctx, 6, np.random.default_rng(3), steps=15)
    assert np.array_equal(same.images, batch.images)  # reproducible from the seed
    assert STRATEGIES["gaal"].synthetic and not STRATEGIES["asal"].synthetic
    with pytest.raises(ValueError, match="makes new images"):
        select("gaal", SelectionInput(generative=ctx), 2, np.random.default_rng(0))
