"""Self-supervised pre-training on the project's own unlabelled images (SimCLR).

With no pretrained weights on the machine (the common offline case), the
encoder of the embedding-first loop is learnt from the images themselves:
SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020). Two random views of
every image in a batch go through the encoder and a small projection MLP; the
NT-Xent loss pulls the two views of an image together and pushes the other
2N - 2 views away. The projection head is dropped afterwards and the encoder's
features are the embeddings.

Sized for a CPU laptop: images are decoded once into a uint8 array at the
training size, and the augmentations run on whole batches (one affine
resampling for crop, flip and 90-degree rotation; colour jitter and grey as
per-image tensor operations), so a step is the network's forward and backward
pass and little else. Microscopy has no "up", so rotations are included.
Departures from the paper, for small batches on a CPU: AdamW instead of LARS,
temperature 0.2 (the paper's 0.5 suits batches of thousands), no hue jitter or
blur (stain colour and sharpness tell cell types apart).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atl_desktop.jobs import Progress
from atl_desktop.models.classifier import Classifier

METHOD = "simclr"
PHASE = "self-supervised"  # a checkpoint's config["phase"]: an encoder, its head untrained


@dataclass(frozen=True)
class SelfSupConfig:
    backbone: str = "resnet18"
    image_size: int = 64
    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 10
    temperature: float = 0.2
    projection_dim: int = 128
    min_scale: float = 0.35  # smallest crop, as a share of the image's area
    jitter: float = 0.4  # brightness and contrast factors in [1 - j, 1 + j]; saturation half that
    jitter_p: float = 0.8
    grey_p: float = 0.2
    max_images: int = 20000  # images read for training (a random sample above this)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or not self.lr > 0 or not self.temperature > 0:
            raise ValueError("steps >= 1, batch size >= 2, a positive learning rate and temperature")
        if not 0 < self.min_scale <= 1:
            raise ValueError("min_scale must be in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SelfSupConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy over 2N views.

    For view i, its positive is the other view of the same image; the softmax runs
    over the other 2N - 1 views (itself excluded), with cosine similarity / temperature.
    """
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)


class BatchAugment:
    """Random views of a uint8 batch (N, C, H, W), returned normalised as the encoder expects."""

    def __init__(self, config: SelfSupConfig, mean, std, generator: torch.Generator):
        self.config = config
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.g = generator

    def _uniform(self, n: int, lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=self.g) * (hi - lo) + lo

    def geometry(self, x: Tensor) -> Tensor:
        """Crop (area share in [min_scale, 1], aspect in [3/4, 4/3]), flip, rotation by k * 90 deg."""
        n = len(x)
        area = self._uniform(n, self.config.min_scale, 1.0)
        log_aspect = self._uniform(n, math.log(3 / 4), math.log(4 / 3))
        sx = (area * torch.exp(log_aspect)).sqrt().clamp(max=1.0)
        sy = (area / torch.exp(log_aspect)).sqrt().clamp(max=1.0)
        tx = self._uniform(n, -1.0, 1.0) * (1 - sx)
        ty = self._uniform(n, -1.0, 1.0) * (1 - sy)
        angle = torch.randint(0, 4, (n,), generator=self.g).float() * (math.pi / 2)
        flip = torch.where(torch.rand(n, generator=self.g) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([sx * cos * flip, -sy * sin, tx], dim=1),
            torch.stack([sx * sin * flip, sy * cos, ty], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def colour(self, x: Tensor) -> Tensor:
        n = len(x)
        j = self.config.jitter
        on = (torch.rand(n, generator=self.g) < self.config.jitter_p).float().view(n, 1, 1, 1)
        brightness = 1 + on * self._uniform(n, -j, j).view(n, 1, 1, 1)
        contrast = 1 + on * self._uniform(n, -j, j).view(n, 1, 1, 1)
        saturation = 1 + on * self._uniform(n, -j / 2, j / 2).view(n, 1, 1, 1)
        x = x * brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        if x.shape[1] == 3:
            grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            x = (x - grey) * saturation + grey
            to_grey = (torch.rand(n, generator=self.g) < self.config.grey_p).view(n, 1, 1, 1)
            x = torch.where(to_grey, grey.expand_as(x), x)
        return x.clamp(0.0, 1.0)

    def __call__(self, batch_u8: Tensor) -> Tensor:
        x = batch_u8.float() / 255.0
        x = self.colour(self.geometry(x))
        return (x - self.mean) / self.std


def projection_head(dim: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out))


def _lr_factor(step: int, config: SelfSupConfig) -> float:
    """Linear warm-up, then cosine decay to 0 (as in the paper)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain(model: Classifier, images: np.ndarray, config: SelfSupConfig,
             ) -> Generator[Progress, None, dict[str, float]]:
    """SimCLR on `images` (uint8, (N, H, W, C) at the model's input size) for `config.steps`.

    Trains `model`'s body (and bottleneck) in place; the head is not touched. Closing
    the generator at a yield stops it; the caller then discards the model.
    """
    from atl_desktop.transfer.train import PrivateRandomStream, resolve_device

    if len(images) < 2:
        raise ValueError("self-supervised training needs at least two images")
    device = resolve_device(config.device)
    data = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    generator = torch.Generator().manual_seed(config.seed)
    augment = BatchAugment(config, model.spec.mean, model.spec.std, generator)
    with torch.random.fork_rng(devices=[]):  # the projector's init, without touching global state
        torch.manual_seed(config.seed)
        projector = projection_head(model.feature_dim, config.projection_dim)
    model.to(device).train()
    projector.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad and p is not model.head.weight
              and p is not model.head.bias] + list(projector.parameters())
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _lr_factor(s, config))
    batch = min(config.batch_size, len(data))
    stream = PrivateRandomStream(config.seed, device)
    started, loss_value = time.perf_counter(), float("nan")
    for step in range(config.steps):
        rows = torch.randperm(len(data), generator=generator)[:batch]
        views = torch.cat([augment(data[rows]), augment(data[rows])]).to(device)
        with stream.active():
            z = projector(model.features(views))
        loss = nt_xent(z[:batch], z[batch:], config.temperature)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        loss_value = float(loss.detach())
        yield Progress(step + 1, config.steps, "self-supervised pre-training (SimCLR)",
                       {"loss": loss_value})
    model.eval()
    return {"loss": loss_value, "steps": config.steps, "images": int(len(data)),
            "seconds": time.perf_counter() - started}


# ---- on a project ----------------------------------------------------------------------


def _as_uint8(x: Tensor, spec) -> np.ndarray:
    """A normalised (C, H, W) tensor back to uint8 (H, W, C), as the inference transform made it."""
    mean = torch.tensor(spec.mean[: spec.channels]).view(-1, 1, 1)
    std = torch.tensor(spec.std[: spec.channels]).view(-1, 1, 1)
    pixels = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()


def read_images(dataset, spec, rows: np.ndarray) -> Generator[Progress, None, np.ndarray]:
    """The dataset's images at `rows`, decoded once with the inference transform, as uint8."""
    out = np.empty((len(rows), spec.size, spec.size, spec.channels), dtype=np.uint8)
    for k, row in enumerate(rows):
        out[k] = _as_uint8(dataset[int(row)][0], spec)
        if (k + 1) % 64 == 0 or k + 1 == len(rows):
            yield Progress(k + 1, len(rows), "reading images")
    return out


def pretrain_project(project, config: SelfSupConfig | None = None) -> Generator[Progress, None, int]:
    """SimCLR on the project's target pool images (labelled or not; never the test split);
    the encoder is recorded as a checkpoint whose config says phase "self-supervised".

    Its head is untrained: the embedding-first loop fits a head on its features,
    and fine-tuning starts from it like from any checkpoint. Returns the checkpoint id.
    """
    from atl_desktop.data.datasets import project_dataset
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.store import ProjectError

    config = config or SelfSupConfig()
    classes = project.class_names()
    if not classes:
        raise ProjectError("Add the classes first (they size the model's head).")
    model = build_model(config.backbone, len(classes), input_size=config.image_size, seed=config.seed)
    dataset = project_dataset(project, domain="target", split="pool", labelled=None,
                              transform=input_transform(model.spec))
    if len(dataset) < 2:
        raise ProjectError("Self-supervised training needs at least two target pool images.")
    rows = np.arange(len(dataset))
    if len(rows) > config.max_images:
        rows = np.sort(np.random.default_rng(config.seed).choice(rows, config.max_images, replace=False))
    images = yield from read_images(dataset, model.spec, rows)
    metrics = yield from pretrain(model, images, config)
    recorded = {"phase": PHASE, "method": METHOD, "backbone": config.backbone,
                "input_size": config.image_size, "selfsup": config.to_dict()}
    with project.transaction():
        return save_checkpoint(project, model, classes=classes, config=recorded, metrics=metrics,
                               seed=config.seed)


def is_encoder_only(record) -> bool:
    """A checkpoint whose head was never trained (self-supervised): use it through a head."""
    return (record.config or {}).get("phase") == PHASE
