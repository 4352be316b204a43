"""Source selection for selective joint fine-tuning (Ge & Yu 2017).

Each image is described by histograms of its responses to a bank of low-level
filters (Gabor filters at several orientations and wavelengths, on the grey
image); the bin edges are the quantiles of the target images' responses, so the
histograms resolve what target images look like. For every target image, the
`neighbours` source images with the nearest descriptors (L1 distance between
normalised histograms) are borrowed; training then uses the union of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

FILTER_BANKS = ("gabor",)
DISTANCES = ("kl", "l1")
SMOOTHING = 1e-3  # added to every bin before the KL divergence


def gabor_bank(size: int = 7, orientations: int = 4, wavelengths: Sequence[float] = (3.0, 6.0),
               aspect: float = 0.5) -> Tensor:
    """(K, 1, size, size) zero-mean, unit-L1 real Gabor filters:
    exp(-(x'^2 + aspect^2 y'^2) / (2 sigma^2)) cos(2 pi x' / wavelength), sigma = wavelength / 2,
    x' = x cos theta + y sin theta, y' = -x sin theta + y cos theta."""
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    filters = []
    for wavelength in wavelengths:
        sigma = wavelength / 2
        for k in range(orientations):
            theta = math.pi * k / orientations
            xr = x * math.cos(theta) + y * math.sin(theta)
            yr = -x * math.sin(theta) + y * math.cos(theta)
            g = torch.exp(-(xr**2 + aspect**2 * yr**2) / (2 * sigma**2)) * torch.cos(2 * math.pi * xr / wavelength)
            g = g - g.mean()
            filters.append(g / g.abs().sum())
    return torch.stack(filters)[:, None]


def filter_responses(images: Tensor, bank: Tensor) -> Tensor:
    """(N, K, H*W) absolute responses of the grey images to each filter."""
    grey = images.float().mean(1, keepdim=True)
    return F.conv2d(grey, bank, padding=bank.shape[-1] // 2).abs().flatten(2)


def response_histograms(images: Tensor, bank: Tensor, edges: Tensor) -> Tensor:
    """(N, K * bins) per-filter histograms, each summing to 1; edges: (K, bins - 1) inner edges."""
    responses = filter_responses(images, bank)  # (N, K, P)
    n, k, p = responses.shape
    bins = edges.shape[1] + 1
    values = responses.transpose(0, 1).reshape(k, n * p).contiguous()
    index = torch.searchsorted(edges, values).view(k, n, p).transpose(0, 1)
    counts = torch.zeros(n, k, bins).scatter_add_(2, index, torch.ones_like(responses))
    return (counts / p).flatten(1)


def _images(dataset: Dataset, batch_size: int = 256):
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield batch[0] if isinstance(batch, list | tuple) else batch


def _descriptors(dataset: Dataset, bank: Tensor, edges: Tensor) -> Tensor:
    return torch.cat([response_histograms(x, bank, edges) for x in _images(dataset)])


def quantile_edges(dataset: Dataset, bank: Tensor, bins: int, sample: int = 256) -> Tensor:
    """(K, bins - 1) inner bin edges: quantiles of the responses of the first `sample` images."""
    x = next(_images(Subset(dataset, range(min(sample, len(dataset))))))
    responses = filter_responses(x, bank).transpose(0, 1).flatten(1)  # (K, N * P)
    q = torch.linspace(0, 1, bins + 1)[1:-1]
    return torch.quantile(responses[:, :: max(1, responses.shape[1] // 100_000)], q, dim=1).T.contiguous()


def histogram_distances(target: Tensor, source: Tensor, bins: int, distance: str = "kl") -> Tensor:
    """(T, S) distances between descriptors made of per-filter histograms of `bins` bins.

    kl: sum over filters of KL(target || source) = sum_b p_b log(p_b / q_b), after adding
    SMOOTHING to every bin and renormalising; l1: sum_b |p_b - q_b|.
    """
    if distance == "l1":
        return torch.cdist(target, source, p=1)
    if distance != "kl":
        raise ValueError(f"distance must be one of {DISTANCES}")
    p = (target + SMOOTHING) / (1 + bins * SMOOTHING)
    log_q = ((source + SMOOTHING) / (1 + bins * SMOOTHING)).log()
    return (p * p.log()).sum(1, keepdim=True) - p @ log_q.T


def nearest_source_indices(source: Tensor, target: Tensor, neighbours: int, bins: int,
                           distance: str = "kl", chunk: int = 512) -> Tensor:
    """Sorted unique indices of the `neighbours` nearest source rows of every target row."""
    k = min(neighbours, len(source))
    picked = [histogram_distances(target[i:i + chunk], source, bins, distance)
              .topk(k, largest=False).indices.flatten()
              for i in range(0, len(target), chunk)]
    return torch.unique(torch.cat(picked))


def nearest_source_subset(source: Dataset, targets: Sequence[Dataset], *, neighbours: int = 5,
                          bins: int = 16, filters: str = "gabor", distance: str = "kl") -> Dataset:
    """The source images nearest in filter-bank response to the target images."""
    if filters not in FILTER_BANKS:
        raise ValueError(f"filters must be one of {FILTER_BANKS}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}")
    if neighbours < 1 or bins < 2:
        raise ValueError("neighbours must be at least 1 and bins at least 2")
    targets = [t for t in targets if t is not None and len(t)]
    if not targets:
        return source
    target = targets[0] if len(targets) == 1 else ConcatDataset(targets)
    bank = gabor_bank()
    edges = quantile_edges(target, bank, bins)
    chosen = nearest_source_indices(_descriptors(source, bank, edges), _descriptors(target, bank, edges),
                                    neighbours, bins, distance)
    return Subset(source, chosen.tolist())
