"""A DCGAN (Radford et al., ICLR 2016) trained on the unlabelled pool, for GAN sampling.

Architecture, as the DCGAN guidelines give it: the generator maps a latent code
z ~ N(0, I) through a transposed convolution to a `base` x `base` map and then
doubles the resolution with strided transposed convolutions (batch norm and
ReLU between them, tanh at the end); the discriminator mirrors it with strided
convolutions and leaky ReLUs (no batch norm on its first layer) down to
`base` x `base`, then one convolution to a logit. Image sizes are base * 2^k
with base in 4..7 (28 = 7 * 4, 32 = 4 * 8, 64 = 4 * 16). Weights start from
N(0, 0.02); Adam with lr 2e-4 and beta1 0.5; the non-saturating generator loss.
Images are in [-1, 1], with 1 (grey) or 3 (RGB) channels.

Training is a job (generator of Progress): every step is a cancel point, and
nothing is written by the loop itself. A trained GAN is one safetensors file
(generator.* and discriminator.* tensors) whose header holds the configuration.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atl_desktop.jobs import Progress

FORMAT = "atl-gan/1"
ARCHITECTURE = "dcgan"
METADATA_KEY = "atl"


@dataclass(frozen=True)
class GanConfig:
    image_size: int = 28
    channels: int = 1
    latent_dim: int = 100
    width: int = 32  # channels of the widest-resolution layer; doubled at each halving
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    seed: int = 0
    amp: bool = True  # float16 autocast with loss scaling, CUDA only
    device: str | None = None  # None: CUDA when available
    preview_every: int = 250  # steps between sample previews (0: only at the end)
    preview_count: int = 36

    def __post_init__(self) -> None:
        layout(self.image_size)  # raises for an unsupported size
        if self.channels not in (1, 3):
            raise ValueError("a GAN makes 1-channel (grey) or 3-channel (RGB) images")
        if min(self.latent_dim, self.width, self.steps, self.batch_size) < 1 or not self.lr > 0:
            raise ValueError("latent size, width, steps, batch size and learning rate must be positive")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> GanConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def layout(size: int) -> tuple[int, int]:
    """(base, k) with size = base * 2**k, base in 4..7, k >= 1."""
    for k in range(1, 8):
        base, rest = divmod(size, 2**k)
        if rest == 0 and 4 <= base <= 7:
            return base, k
    raise ValueError(f"GAN image size {size} is not 4..7 times a power of two (e.g. 16, 28, 32, 48, 64)")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DcganGenerator(nn.Module):
    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int):
        super().__init__()
        base, k = layout(image_size)
        self.latent_dim = latent_dim
        c = width * 2 ** (k - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, c, base, 1, 0, bias=False),
                                   nn.BatchNorm2d(c), nn.ReLU(True)]
        for _ in range(k - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.reshape(len(z), -1, 1, 1))


class DcganDiscriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, width: int):
        super().__init__()
        base, k = layout(image_size)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = width
        for _ in range(k - 1):
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c * 2), nn.LeakyReLU(0.2, True)]
            c *= 2
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, 1, base, 1, 0)
        self.feature_dim = c * base * base

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer, flattened (N, feature_dim): ASAL's discriminator features."""
        return self.body(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x)).flatten()


class Dcgan(nn.Module):
    def __init__(self, config: GanConfig):
        super().__init__()
        self.config = config
        self.generator = DcganGenerator(config.latent_dim, config.image_size, config.channels, config.width)
        self.discriminator = DcganDiscriminator(config.image_size, config.channels, config.width)


def build_gan(config: GanConfig) -> Dcgan:
    """A freshly initialised DCGAN; the global random state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(config.seed)
        gan = Dcgan(config)
        gan.apply(_init_weights)
    return gan


def resolve_device(name: str | None) -> torch.device:
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---- images in and out --------------------------------------------------------------


def images_to_tensor(x: np.ndarray, config: GanConfig) -> Tensor:
    """uint8 images (N, H, W) or (N, H, W, 3) -> float (N, channels, size, size) in [-1, 1].

    Colour is converted as PIL does (ITU-R 601 luma for grey); the size is changed
    with antialiased bilinear resampling.
    """
    x = np.asarray(x)
    t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    t = t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)
    t = match_channels(t, config.channels)
    if t.shape[-1] != config.image_size or t.shape[-2] != config.image_size:
        t = F.interpolate(t, size=(config.image_size, config.image_size), mode="bilinear",
                          align_corners=False, antialias=True)
    return t.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)


LUMA = (0.299, 0.587, 0.114)


def match_channels(x: Tensor, channels: int) -> Tensor:
    """Grey -> RGB by repetition, RGB -> grey by luma (differentiable)."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot turn {x.shape[1]} channels into {channels}")


def tensor_to_images(x: Tensor) -> np.ndarray:
    """[-1, 1] (N, C, H, W) -> uint8 (N, H, W) for one channel, (N, H, W, 3) for three."""
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def preview_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 images (N, H, W[, 3]) tiled into one near-square grid image."""
    n = len(images)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    h, w = images.shape[1:3]
    shape = (rows * (h + pad) + pad, cols * (w + pad) + pad, *images.shape[3:])
    grid = np.zeros(shape, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = image
    return grid


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, "L" if image.ndim == 2 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# ---- training -------------------------------------------------------------------------


@dataclass(frozen=True)
class GanTrainResult:
    gan: Dcgan
    steps: int
    metrics: dict[str, float]
    previews: tuple[tuple[int, np.ndarray], ...]  # (step, uint8 grid)


def train_gan(
    images: Tensor,
    config: GanConfig,
    *,
    on_preview: Callable[[int, np.ndarray], None] | None = None,
) -> Generator[Progress, None, GanTrainResult]:
    """Train a DCGAN on `images` (N, channels, size, size) in [-1, 1]; one Progress per step.

    Real batches are drawn uniformly (with replacement across steps) and latent
    codes from N(0, I), both from generators seeded by `config.seed`. A fixed set
    of latent codes gives the previews, which `on_preview(step, grid)` receives.
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != (config.channels, config.image_size, config.image_size):
        raise ValueError(f"expected images (N, {config.channels}, {config.image_size}, {config.image_size}), "
                         f"got {tuple(images.shape)}")
    if len(images) < 2:
        raise ValueError("a GAN needs at least two images to learn from")
    device = resolve_device(config.device)
    gan = build_gan(config).to(device)
    g, d = gan.generator, gan.discriminator
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    cuda = device.type == "cuda"
    use_amp = cuda and config.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if use_amp else contextlib.nullcontext
    data_rng = torch.Generator().manual_seed(config.seed * 2 + 1)
    noise_rng = torch.Generator().manual_seed(config.seed * 2 + 2)
    fixed_z = torch.randn(config.preview_count, config.latent_dim, generator=torch.Generator().manual_seed(config.seed))
    batch = min(config.batch_size, len(images))
    ones, zeros = torch.ones(batch, device=device), torch.zeros(batch, device=device)
    previews: list[tuple[int, np.ndarray]] = []
    metrics: dict[str, float] = {}
    gan.train()
    for step in range(1, config.steps + 1):
        real = images[torch.randint(len(images), (batch,), generator=data_rng)].to(device, non_blocking=cuda)
        z = torch.randn(batch, config.latent_dim, generator=noise_rng).to(device)
        with autocast():
            fake = g(z)
            out_real, out_fake = d(real), d(fake.detach())
            loss_d = (F.binary_cross_entropy_with_logits(out_real.float(), ones)
                      + F.binary_cross_entropy_with_logits(out_fake.float(), zeros))
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        with autocast():
            loss_g = F.binary_cross_entropy_with_logits(d(fake).float(), ones)  # non-saturating
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        scaler.update()
        metrics = {"loss_d": loss_d.detach().item(), "loss_g": loss_g.detach().item(),
                   "d_real": torch.sigmoid(out_real.detach().float()).mean().item(),
                   "d_fake": torch.sigmoid(out_fake.detach().float()).mean().item()}
        if step == config.steps or (config.preview_every and step % config.preview_every == 0):
            grid = preview_grid(sample_images(gan, fixed_z))
            previews.append((step, grid))
            if on_preview is not None:
                on_preview(step, grid)
            gan.train()
        yield Progress(step, config.steps, "training the GAN", metrics)
    gan.eval()
    return GanTrainResult(gan.cpu(), config.steps, metrics, tuple(previews))


@torch.no_grad()
def sample_images(gan: Dcgan, z: Tensor) -> np.ndarray:
    """uint8 images from latent codes, the generator in eval mode (running batch-norm statistics)."""
    gan.eval()
    device = next(gan.parameters()).device
    return tensor_to_images(gan.generator(z.to(device)))


# ---- the file -----------------------------------------------------------------------------


def gan_bytes(gan: Dcgan, metrics: dict[str, Any] | None = None) -> bytes:
    from safetensors.torch import save

    from atl_desktop.models.checkpoints import library_versions

    meta = {"format": FORMAT, "architecture": ARCHITECTURE, "config": gan.config.to_json(),
            "metrics": metrics or {}, "versions": library_versions()}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in gan.state_dict().items()}
    return save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


class GanFileError(ValueError):
    """A file that is not a usable GAN, with the reason."""


def gan_from_bytes(data: bytes, name: str = "GAN file") -> tuple[Dcgan, dict]:
    """(gan in eval mode, metadata) from `gan_bytes` output; never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        (n,) = np.frombuffer(data[:8], dtype="<u8")
        meta = json.loads(json.loads(data[8 : 8 + int(n)])["__metadata__"][METADATA_KEY])
        state = load(data)
    except (ValueError, KeyError, TypeError, SafetensorError):
        raise GanFileError(f"{name} is not an ATL Desktop GAN file.") from None
    if meta.get("format") != FORMAT or meta.get("architecture") != ARCHITECTURE:
        raise GanFileError(f"{name} has an unknown GAN format {meta.get('format')!r}.")
    gan = Dcgan(GanConfig.from_json(meta["config"]))
    try:
        gan.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise GanFileError(f"{name} does not fit its own configuration: {str(error).splitlines()[0]}") from None
    return gan.eval(), meta
