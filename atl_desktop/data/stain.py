"""Stain normalisation (Reinhard, Macenko, Vahadane) and HED stain augmentation for H&E images.

All work on 8-bit RGB arrays (H, W, 3). A normaliser is fitted once to a
reference tile the user picks; the fitted numbers are small (a few floats), are
kept as a JSON-able dict with the checkpoint, and map any later image onto the
reference's colours.

- Reinhard et al. 2001, "Color transfer between images": in Ruderman's l-alpha-
  beta space (RGB -> LMS -> log10 -> decorrelating rotation), each channel is
  shifted and scaled to the reference's mean and standard deviation.
- Macenko et al. 2009, "A method for normalizing histology slides": optical
  density OD = -ln(I / 255); pixels with OD below beta in any channel are
  dropped; the plane of the two largest eigenvectors of the OD covariance holds
  the stains; the alpha-th and (100-alpha)-th percentiles of the angle in that
  plane give the two stain vectors (haematoxylin: the one with the larger red
  OD). Concentrations are the least-squares solution OD = S C; each stain's
  concentration is scaled so its 99th percentile matches the reference's, and
  I = 255 exp(-S_ref C).
- Vahadane et al. 2016, "Structure-preserving color normalization": stain
  vectors from sparse non-negative matrix factorisation of OD,
  min ||OD - W H||^2 + lambda |H|_1 with W, H >= 0 and unit stain columns
  (multiplicative updates on a subsample, started from Macenko's estimate);
  concentrations by the same sparse, non-negative fit with W fixed; then the
  same 99th-percentile scaling as Macenko.
- Tellez et al. 2018/2019, HED augmentation: colour deconvolution with
  Ruifrok & Johnston's H&E-DAB matrix (OD / ln(10^6) in scikit-image's scaling),
  each channel c -> alpha_c c + beta_c, alpha ~ U(1 - sigma, 1 + sigma),
  beta ~ U(-sigma, sigma), then back to RGB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

METHODS = ("none", "reinhard", "macenko", "vahadane")
IO = 255.0
CODE_LAMBDA = 0.01  # sparsity of the concentrations (Vahadane; 0.1 for the stain dictionary)
CODE_ITERATIONS = 20
_MIN_INTENSITY = 1.0  # 0 would give infinite optical density

# Reinhard et al. 2001 (Ruderman et al.): RGB -> LMS, and l-alpha-beta from log10 LMS.
_RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LMS_TO_RGB = np.linalg.inv(_RGB_TO_LMS)
_LOG_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64)
_LAB_TO_LOG = np.linalg.inv(_LOG_TO_LAB)

# Ruifrok & Johnston 2001: rows are the OD colours of haematoxylin, eosin and DAB.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_HED_SCALE = np.log(1e6)  # scikit-image divides OD by -log(1e-6)


@dataclass(frozen=True)
class StainConfig:
    """A stain normalisation as recorded with a checkpoint: the method and its fitted reference."""

    method: str = "none"
    reference: Mapping[str, list] = field(default_factory=dict)  # fitted numbers
    reference_image: str | None = None  # what it was fitted on (an image id or a path), for people

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown stain normalisation {self.method!r}; choose one of {METHODS}")

    def to_json(self) -> dict:
        return {**asdict(self), "reference": {k: list(v) for k, v in self.reference.items()}}

    @classmethod
    def from_json(cls, data: Mapping | None) -> StainConfig:
        if not data:
            return cls()
        return cls(data.get("method", "none"), dict(data.get("reference", {})), data.get("reference_image"))


# ---- Reinhard ------------------------------------------------------------------------


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Ruderman's l-alpha-beta of RGB in 0..255 (any shape ending in 3)."""
    lms = (np.maximum(rgb.astype(np.float64), _MIN_INTENSITY) / IO) @ _RGB_TO_LMS.T
    return np.log10(np.maximum(lms, 1e-6)) @ _LOG_TO_LAB.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    lms = 10.0 ** (lab @ _LAB_TO_LOG.T)
    return lms @ _LMS_TO_RGB.T * IO


def fit_reinhard(rgb: np.ndarray) -> dict[str, list]:
    lab = rgb_to_lab(rgb).reshape(-1, 3)
    return {"mean": lab.mean(axis=0).tolist(), "std": lab.std(axis=0).tolist()}


def reinhard(rgb: np.ndarray, reference: Mapping[str, list]) -> np.ndarray:
    lab = rgb_to_lab(rgb)
    flat = lab.reshape(-1, 3)
    mean, std = flat.mean(axis=0), np.maximum(flat.std(axis=0), 1e-6)
    out = (lab - mean) / std * np.asarray(reference["std"]) + np.asarray(reference["mean"])
    return _to_uint8(lab_to_rgb(out))


# ---- Macenko ---------------------------------------------------------------------------


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """OD = -ln(I / 255) per channel, (n, 3) for n pixels."""
    return -np.log(np.maximum(rgb.reshape(-1, 3).astype(np.float64), _MIN_INTENSITY) / IO)


def macenko_stains(rgb: np.ndarray, beta: float = 0.15, alpha: float = 1.0) -> np.ndarray:
    """(3, 2) unit stain vectors (haematoxylin, eosin) of an H&E image, by Macenko's method."""
    od = optical_density(rgb)
    od = od[(od >= beta).all(axis=1)]
    if len(od) < 10:
        raise ValueError("too little stained tissue to estimate stain vectors (is this tile mostly background?)")
    _values, vectors = np.linalg.eigh(np.cov(od.T))
    plane = vectors[:, [2, 1]]  # the two largest eigenvalues' vectors
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # both pointing into positive OD
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(low), np.sin(low)])
    v2 = plane @ np.array([np.cos(high), np.sin(high)])
    stains = np.stack([v1, v2], axis=1) if v1[0] > v2[0] else np.stack([v2, v1], axis=1)
    return stains / np.linalg.norm(stains, axis=0, keepdims=True)


def concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """(n, 2) least-squares stain concentrations of OD rows (through the 2 x 3 pseudo-inverse:
    one small matrix product instead of a solve per pixel)."""
    return od @ np.linalg.pinv(stains).T


def fit_macenko(rgb: np.ndarray) -> dict[str, list]:
    stains = macenko_stains(rgb)
    return {"stains": stains.tolist(), "max_c": _max_concentrations(concentrations(optical_density(rgb), stains))}


def _max_concentrations(c: np.ndarray) -> list[float]:
    return np.maximum(np.percentile(c, 99, axis=0), 1e-6).tolist()


def _recompose(c: np.ndarray, reference: Mapping[str, list], shape: tuple[int, ...]) -> np.ndarray:
    od = c @ np.asarray(reference["stains"]).T
    return _to_uint8(IO * np.exp(-od)).reshape(shape)


def macenko(rgb: np.ndarray, reference: Mapping[str, list]) -> np.ndarray:
    try:
        stains = macenko_stains(rgb)
    except ValueError:
        return rgb  # background only: nothing to normalise
    c = concentrations(optical_density(rgb), stains)
    c *= np.asarray(reference["max_c"]) / np.asarray(_max_concentrations(c))
    return _recompose(c, reference, rgb.shape)


# ---- Vahadane --------------------------------------------------------------------------


def _sparse_codes(od: np.ndarray, stains: np.ndarray, lam: float, iterations: int,
                  start: np.ndarray | None = None) -> np.ndarray:
    """Non-negative H minimising ||OD^T - W H||^2 + lam |H|_1 with W fixed (multiplicative updates)."""
    h = np.maximum(concentrations(od, stains), 1e-6) if start is None else start
    wt_v = od @ stains  # (n, 2) = (W^T V)^T
    wt_w = stains.T @ stains
    for _ in range(iterations):
        h *= np.maximum(wt_v, 0.0) / (h @ wt_w + lam + 1e-12)
    return h


def vahadane_stains(rgb: np.ndarray, lam: float = 0.1, iterations: int = 100, sample: int = 4000,
                    beta: float = 0.15) -> np.ndarray:
    """(3, 2) unit stain vectors by sparse NMF of the OD of stained pixels (a fixed, even subsample)."""
    od = optical_density(rgb)
    od = od[(od >= beta).all(axis=1)]
    if len(od) < 10:
        raise ValueError("too little stained tissue to estimate stain vectors (is this tile mostly background?)")
    od = od[:: max(1, len(od) // sample)]
    w = np.abs(macenko_stains(rgb, beta=beta))
    h = np.maximum(concentrations(od, w), 1e-6)
    for _ in range(iterations):
        h = _sparse_codes(od, w, lam, 1, h)
        w *= (od.T @ h) / (w @ (h.T @ h) + 1e-12)
        norms = np.linalg.norm(w, axis=0, keepdims=True)
        w /= norms
        h *= norms  # W H unchanged by the renormalisation
    return w if w[0, 0] > w[0, 1] else w[:, ::-1]


def fit_vahadane(rgb: np.ndarray) -> dict[str, list]:
    stains = vahadane_stains(rgb)
    c = _sparse_codes(optical_density(rgb), stains, CODE_LAMBDA, CODE_ITERATIONS)
    return {"stains": stains.tolist(), "max_c": _max_concentrations(c)}


def vahadane(rgb: np.ndarray, reference: Mapping[str, list]) -> np.ndarray:
    try:
        stains = vahadane_stains(rgb)
    except ValueError:
        return rgb
    c = _sparse_codes(optical_density(rgb), stains, CODE_LAMBDA, CODE_ITERATIONS)
    c *= np.asarray(reference["max_c"]) / np.asarray(_max_concentrations(c))
    return _recompose(c, reference, rgb.shape)


# ---- the public face -----------------------------------------------------------------------

_FIT = {"reinhard": fit_reinhard, "macenko": fit_macenko, "vahadane": fit_vahadane}
_APPLY = {"reinhard": reinhard, "macenko": macenko, "vahadane": vahadane}


def fit_stain(method: str, reference: Image.Image | np.ndarray, name: str | None = None) -> StainConfig:
    """Fit `method` to a reference tile; the result normalises other images to it."""
    if method == "none":
        return StainConfig()
    if method not in _FIT:
        raise ValueError(f"unknown stain normalisation {method!r}; choose one of {METHODS}")
    return StainConfig(method, _FIT[method](_rgb_array(reference)), name)


def normalise_stain(image: Image.Image | np.ndarray, config: StainConfig) -> np.ndarray:
    rgb = _rgb_array(image)
    return rgb if config.method == "none" else _APPLY[config.method](rgb, config.reference)


class StainNormalise:
    """A transform step: PIL image -> PIL image with the reference's stain colours."""

    def __init__(self, config: StainConfig):
        self.config = config

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.config.method == "none" or img.mode != "RGB":
            return img
        return Image.fromarray(normalise_stain(img, self.config))


def hed_jitter(rgb: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale and shift the H, E and DAB channels: hed_c -> alpha_c hed_c + beta_c."""
    od = optical_density(rgb) / _HED_SCALE
    hed = od @ _HED_FROM_RGB
    hed = hed * np.asarray(alpha) + np.asarray(beta)
    return _to_uint8(IO * np.exp(-(hed @ _RGB_FROM_HED) * _HED_SCALE)).reshape(rgb.shape)


class RandomHEDJitter:
    """HED augmentation (Tellez et al.): alpha ~ U(1 - sigma, 1 + sigma), beta ~ U(-sigma, sigma)
    per channel, from torch's generator of the calling thread (like torchvision's transforms)."""

    def __init__(self, sigma: float = 0.05):
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode != "RGB":
            return img
        r = torch.rand(2, 3).double().numpy() * 2 - 1
        return Image.fromarray(hed_jitter(np.asarray(img), 1 + self.sigma * r[0], self.sigma * r[1]))


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.uint8)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
