"""GAN sampling: GAAL (Zhu & Bento 2017) and ASAL (Mayer & Timofte 2020).

Both search the GAN's latent space for images the current classifier is most
unsure of: starting from codes z0 ~ N(0, I), they climb the predictive entropy
H(softmax(f(G(z)))) by gradient ascent on z (GAAL's query synthesis by
"descending the gradient" of an uncertainty objective, with entropy as the
multi-class uncertainty, as ASAL does).

- GAAL asks the expert to label these synthetic images themselves.
- ASAL instead retrieves, for each synthetic image, its nearest *real*
  unlabelled pool image in a feature space (pixels reduced by PCA, the GAN
  discriminator's last hidden layer reduced by PCA, or an autoencoder's code),
  with an approximate nearest-neighbour index (lsh.py), and queries those. The
  pool's features do not depend on the classifier, so they are computed and
  indexed once; a query costs the latent search plus index look-ups, not a
  pass of the classifier over the pool.

The ascent is normalised per sample (z_i += eta_t * g_i / ||g_i||, eta_t
decaying linearly to 0): the softmax saturates on confident images and plain
gradients vanish there, while the direction is still the exact gradient. With
the "sphere" constraint each code is put back on the sphere of radius
sqrt(d) after every step, where N(0, I) puts nearly all its mass, so the
generator is only ever asked for codes like those it was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atl_desktop.active.gan import (
    Dcgan,
    DcganDiscriminator,
    DcganGenerator,
    GanConfig,
    images_to_tensor,
    match_channels,
    tensor_to_images,
)
from atl_desktop.active.lsh import ExactIndex, LshConfig, LshIndex, Neighbours
from atl_desktop.jobs import Progress

CONSTRAINTS = ("sphere", "none")
FEATURE_SPACES = ("pca", "discriminator", "autoencoder")
TRANSFORM_BATCH = 512


# ---- from GAN images to classifier inputs ---------------------------------------------


def classifier_input(x: Tensor, spec) -> Tensor:
    """GAN images in [-1, 1] -> what a classifier with InputSpec `spec` takes, differentiably:
    the same colour conversion, resize and normalisation as models.transforms.input_transform."""
    x = match_channels((x + 1.0) * 0.5, spec.channels)
    if x.shape[-1] != spec.size or x.shape[-2] != spec.size:
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > spec.size)
    mean = torch.tensor(spec.mean[: spec.channels], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std[: spec.channels], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def entropy_of_logits(logits: Tensor) -> Tensor:
    """Predictive entropy in nats per row, from logits (stable: log_softmax)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


# ---- the latent search -------------------------------------------------------------------


@dataclass(frozen=True)
class LatentSearch:
    steps: int = 60
    step_size: float = 0.5  # first step length in latent units (||z|| is about sqrt(d))
    constraint: str = "sphere"

    def __post_init__(self) -> None:
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"unknown latent constraint {self.constraint!r}; use one of {CONSTRAINTS}")
        if self.steps < 0 or self.step_size < 0:
            raise ValueError("steps and step size must not be negative")


@dataclass(frozen=True)
class LatentResult:
    z: Tensor  # (n, d) final codes
    entropy_start: np.ndarray  # (n,) at z0
    entropy_end: np.ndarray  # (n,) at z


def _project(z: Tensor, constraint: str) -> Tensor:
    if constraint == "sphere":
        return z * (math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return z


def maximise_entropy(generate: Callable[[Tensor], Tensor], classify: Callable[[Tensor], Tensor],
                     z0: Tensor, search: LatentSearch | None = None) -> LatentResult:
    """Normalised gradient ascent of the entropy of classify(generate(z)) over z, per sample.

    Only z moves: gradients are taken with autograd.grad, so the models' own
    parameters and .grad fields are left alone. Samples are independent (the
    models must be in eval mode), so a batch is n separate searches.
    """
    search = search or LatentSearch()
    z = _project(z0.detach().clone().float(), search.constraint)

    def entropy(codes: Tensor) -> Tensor:
        return entropy_of_logits(classify(generate(codes)))

    with torch.no_grad():
        start = entropy(z).cpu().numpy()
    for t in range(search.steps):
        with torch.enable_grad():  # also when the caller is inside no_grad
            z.requires_grad_(True)
            (grad,) = torch.autograd.grad(entropy(z).sum(), z)
        eta = search.step_size * (1.0 - t / search.steps)
        with torch.no_grad():
            z = z + eta * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-20)
            z = _project(z, search.constraint)
    with torch.no_grad():
        end = entropy(z).cpu().numpy()
    return LatentResult(z.detach(), start, end)


# ---- the context a query needs ---------------------------------------------------------------


@dataclass
class PoolFeatures:
    """The pool in an ASAL feature space: the space, the index over every pool image, and the
    index row of each row the strategy chooses from (SelectionInput rows)."""

    space: FeatureSpace
    index: LshIndex | ExactIndex
    exact: ExactIndex  # the reference
    rows: np.ndarray  # (n_unlabelled,) index row of each candidate


@dataclass
class GanContext:
    gan: Dcgan
    classifier: nn.Module  # a models.Classifier (its `spec` says what input it takes)
    device: torch.device
    pool: PoolFeatures | None = None

    def classify(self, images: Tensor) -> Tensor:
        return self.classifier(classifier_input(images, self.classifier.spec))


def _latent_search(ctx: GanContext, n: int, rng: np.random.Generator, search: LatentSearch) -> LatentResult:
    seed = int(rng.integers(0, 2**63 - 1))
    z0 = torch.randn(n, ctx.gan.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    was = ctx.gan.training, ctx.classifier.training
    ctx.gan.to(ctx.device).eval()
    ctx.classifier.to(ctx.device).eval()
    try:
        return maximise_entropy(ctx.gan.generator, ctx.classify, z0.to(ctx.device), search)
    finally:
        ctx.gan.train(was[0])
        ctx.classifier.train(was[1])


@dataclass(frozen=True)
class SyntheticBatch:
    """GAAL's query: new images with the codes that made them."""

    images: np.ndarray  # uint8 (b, H, W) or (b, H, W, 3)
    latents: np.ndarray  # float32 (b, d)
    probs: np.ndarray  # (b, C) the classifier on the stored (8-bit) images
    entropy_start: np.ndarray  # (b,) at the random starting codes
    entropy: np.ndarray  # (b,) of `probs`


def gaal_synthesise(ctx: GanContext, batch: int, rng: np.random.Generator, *, steps: int = 60,
                    step_size: float = 0.5, constraint: str = "sphere") -> SyntheticBatch:
    """GAAL: `batch` images made to maximise the classifier's entropy, from random starts."""
    result = _latent_search(ctx, batch, rng, LatentSearch(steps, step_size, constraint))
    with torch.no_grad():
        images = tensor_to_images(ctx.gan.eval().generator(result.z))
        probs = predict_images(ctx, images)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)
    return SyntheticBatch(images, result.z.cpu().numpy().astype(np.float32), probs, result.entropy_start, entropy)


@torch.no_grad()
def predict_images(ctx: GanContext, images: np.ndarray) -> np.ndarray:
    """Softmax of the classifier on uint8 images at the GAN's size (as they are stored)."""
    x = images_to_tensor(images, ctx.gan.config).to(ctx.device)
    was = ctx.classifier.training
    ctx.classifier.eval()
    try:
        return torch.softmax(ctx.classify(x).float(), dim=1).cpu().numpy()
    finally:
        ctx.classifier.train(was)


@dataclass(frozen=True)
class AsalMatches:
    rows: np.ndarray  # chosen SelectionInput rows, in order
    distances: np.ndarray  # feature distance of each to the synthetic image it matches
    entropy: np.ndarray  # entropy of that synthetic image
    candidates: float  # mean points examined per look-up
    fallback: float  # share of look-ups answered by exact search


def asal_matches(ctx: GanContext, batch: int, rng: np.random.Generator, *, steps: int = 60,
                 step_size: float = 0.5, constraint: str = "sphere", oversample: int = 1,
                 exact: bool = False) -> AsalMatches:
    """ASAL: `batch * oversample` high-entropy synthetic images; each, from the most uncertain
    down, takes its nearest unlabelled real image not already taken (next neighbours when
    two share one), until `batch` are chosen. `exact` uses brute-force search instead of LSH."""
    if ctx.pool is None:
        raise ValueError("ASAL needs the pool's features in a GAN feature space")
    pool = ctx.pool
    n_free = len(pool.rows)
    batch = min(batch, n_free)
    if batch <= 0:
        return AsalMatches(np.empty(0, np.int64), np.empty(0), np.empty(0), 0.0, 0.0)
    result = _latent_search(ctx, batch * max(1, oversample), rng, LatentSearch(steps, step_size, constraint))
    with torch.no_grad():
        feats = pool.space.transform(ctx.gan.eval().generator(result.z))
    allowed = np.zeros(len(pool.exact), dtype=bool)
    allowed[pool.rows] = True
    position = np.full(len(pool.exact), -1, dtype=np.int64)
    position[pool.rows] = np.arange(n_free)
    order = np.argsort(-result.entropy_end, kind="stable")
    index = pool.exact if exact else pool.index
    k = min(n_free, 4)
    while True:
        found = index.search(feats, k, allowed)
        chosen, dist, ent = _first_free(found, order, batch, result.entropy_end)
        if len(chosen) == batch or k >= n_free:
            break
        k = min(n_free, k * 4)
    return AsalMatches(position[np.asarray(chosen, dtype=np.int64)], np.asarray(dist), np.asarray(ent),
                       float(found.candidates.mean()), float(found.fallback.mean()))


def _first_free(found: Neighbours, order: np.ndarray, batch: int, entropy: np.ndarray):
    """Rank by rank, most uncertain synthetic image first: each takes its nearest untaken match."""
    chosen, dist, ent, taken = [], [], [], set()
    for r in range(found.indices.shape[1]):
        for i in order:
            j = int(found.indices[i, r])
            if j >= 0 and j not in taken:
                taken.add(j)
                chosen.append(j)
                dist.append(float(found.distances[i, r]))
                ent.append(float(entropy[i]))
                if len(chosen) == batch:
                    return chosen, dist, ent
    return chosen, dist, ent


# ---- feature spaces for ASAL --------------------------------------------------------------------


class FeatureSpace:
    """Maps GAN-format images ([-1, 1], (n, c, s, s)) to feature rows (n, dims)."""

    name = ""
    dims = 0

    def raw(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def __init__(self, mean: Tensor, components: Tensor):
        self.mean = mean  # (p,) of the raw features
        self.components = components  # (dims, p) principal axes, or an empty tensor: no PCA
        self.dims = int(components.shape[0]) if components.numel() else 0

    @torch.no_grad()
    def transform(self, images: Tensor) -> np.ndarray:
        parts = []
        for start in range(0, len(images), TRANSFORM_BATCH):
            r = self.raw(images[start : start + TRANSFORM_BATCH]).float().flatten(1)
            if self.components.numel():
                r = (r - self.mean.to(r.device)) @ self.components.to(r.device).T
            parts.append(r.cpu().numpy().astype(np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, self.dims), np.float32)

    def tensors(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "components": self.components}


class PixelPca(FeatureSpace):
    name = "pca"

    def raw(self, images: Tensor) -> Tensor:
        return images.flatten(1)


class DiscriminatorPca(FeatureSpace):
    name = "discriminator"

    def __init__(self, discriminator: DcganDiscriminator, mean: Tensor, components: Tensor):
        super().__init__(mean, components)
        self.discriminator = discriminator.eval()

    def raw(self, images: Tensor) -> Tensor:
        device = next(self.discriminator.parameters()).device
        return self.discriminator.features(images.to(device))


class Autoencoder(nn.Module):
    """DCGAN-shaped: the discriminator's convolutions plus a linear code layer, and a
    generator from the code back to the image."""

    def __init__(self, config: GanConfig, dims: int):
        super().__init__()
        self.body = DcganDiscriminator(config.image_size, config.channels, config.width)
        self.code = nn.Linear(self.body.feature_dim, dims)
        self.decoder = DcganGenerator(dims, config.image_size, config.channels, config.width)

    def encode(self, x: Tensor) -> Tensor:
        return self.code(self.body.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encode(x))


class AutoencoderSpace(FeatureSpace):
    name = "autoencoder"

    def __init__(self, autoencoder: Autoencoder):
        super().__init__(torch.zeros(0), torch.zeros(0))
        self.autoencoder = autoencoder.eval()
        self.dims = autoencoder.code.out_features

    def raw(self, images: Tensor) -> Tensor:
        device = next(self.autoencoder.parameters()).device
        return self.autoencoder.encode(images.to(device))

    def tensors(self) -> dict[str, Tensor]:
        return {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()}


def pca(rows: Tensor, dims: int) -> tuple[Tensor, Tensor]:
    """(mean, top `dims` principal axes as rows) of a (n, p) matrix, by SVD of the centred rows."""
    rows = rows.double()
    mean = rows.mean(dim=0)
    _, _, vh = torch.linalg.svd(rows - mean, full_matrices=False)
    return mean.float(), vh[: min(dims, vh.shape[0])].float().contiguous()


@dataclass(frozen=True)
class FeatureSpaceConfig:
    name: str = "pca"
    dims: int = 32
    fit_rows: int = 5000  # pool images the PCA (or autoencoder) learns from, at most
    autoencoder_steps: int = 600
    autoencoder_lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in FEATURE_SPACES:
            raise ValueError(f"unknown feature space {self.name!r}; use one of {', '.join(FEATURE_SPACES)}")

    def key(self) -> str:
        extra = f"-steps{self.autoencoder_steps}" if self.name == "autoencoder" else ""
        return f"{self.name}{self.dims}-fit{self.fit_rows}{extra}-seed{self.seed}"


def fit_feature_space(images: Tensor, gan: Dcgan, config: FeatureSpaceConfig,
                      device: torch.device | None = None) -> Generator[Progress, None, FeatureSpace]:
    """Learn an ASAL feature space from pool images (GAN format). A job: the autoencoder's
    steps are cancel points."""
    rng = torch.Generator().manual_seed(config.seed)
    n = len(images)
    fit = images[torch.randperm(n, generator=rng)[: min(n, config.fit_rows)]]
    device = device or torch.device("cpu")
    if config.name == "pca":
        mean, axes = pca(fit.flatten(1), config.dims)
        yield Progress(1, 1, "pixel PCA fitted")
        return PixelPca(mean, axes)
    if config.name == "discriminator":
        d = gan.discriminator.to(device).eval()
        with torch.no_grad():
            raw = torch.cat([d.features(fit[s : s + TRANSFORM_BATCH].to(device)).float().cpu()
                             for s in range(0, len(fit), TRANSFORM_BATCH)])
        mean, axes = pca(raw, config.dims)
        yield Progress(1, 1, "discriminator features fitted")
        return DiscriminatorPca(d, mean, axes)
    autoencoder = yield from train_autoencoder(fit, gan.config, config, device)
    return AutoencoderSpace(autoencoder)


def train_autoencoder(images: Tensor, gan_config: GanConfig, config: FeatureSpaceConfig,
                      device: torch.device) -> Generator[Progress, None, Autoencoder]:
    """A DCGAN-shaped autoencoder trained with mean squared error (Adam); one Progress per step."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(config.seed)
        model = Autoencoder(gan_config, config.dims)
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.autoencoder_lr)
    rng = torch.Generator().manual_seed(config.seed + 1)
    batch = min(config.batch_size, len(images))
    for step in range(1, config.autoencoder_steps + 1):
        x = images[torch.randint(len(images), (batch,), generator=rng)].to(device)
        loss = F.mse_loss(model(x), x)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        yield Progress(step, config.autoencoder_steps, "training the ASAL autoencoder",
                       {"loss": loss.detach().item()})
    return model.eval()


def space_from_tensors(name: str, tensors: dict[str, Tensor], gan: Dcgan, config: FeatureSpaceConfig) -> FeatureSpace:
    """Rebuild a saved feature space (`FeatureSpace.tensors()`)."""
    if name == "pca":
        return PixelPca(tensors["mean"], tensors["components"])
    if name == "discriminator":
        return DiscriminatorPca(gan.discriminator, tensors["mean"], tensors["components"])
    model = Autoencoder(gan.config, config.dims)
    prefix = "autoencoder."
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    return AutoencoderSpace(model)


@torch.no_grad()
def generated_features(gan: Dcgan, space: FeatureSpace, n: int = 32, seed: int = 0) -> np.ndarray:
    """Features of n images from random latent codes: typical ASAL queries, which set the
    LSH bucket width to the distance at which generated images meet the pool."""
    z = torch.randn(n, gan.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    device = next(gan.parameters()).device
    was = gan.training
    gan.eval()
    try:
        return space.transform(gan.generator(z.to(device)))
    finally:
        gan.train(was)


def build_index(features: np.ndarray, gan: Dcgan, space: FeatureSpace, seed: int = 0) -> LshIndex:
    """ASAL's LSH index over the pool's features, its width set by generated images."""
    return LshIndex.build(features, LshConfig(seed=seed), example_queries=generated_features(gan, space, seed=seed))
