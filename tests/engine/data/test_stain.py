"""Stain normalisation and HED augmentation, against values worked out by hand.

Synthetic H&E tiles follow Beer-Lambert: I = 255 exp(-S c) for a known stain
matrix S (unit columns) and concentrations c, so the right answer is known.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atl_desktop.data.stain import (
    RandomHEDJitter,
    StainConfig,
    StainNormalise,
    fit_stain,
    hed_jitter,
    macenko_stains,
    normalise_stain,
    rgb_to_lab,
    vahadane_stains,
)

H = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
E = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])


def beer_lambert(stains: np.ndarray, c: np.ndarray, side: int) -> np.ndarray:
    return np.clip(np.rint(255 * np.exp(-(c @ stains.T))), 0, 255).astype(np.uint8).reshape(side, side, 3)


def concentrations(seed: int, side: int = 64, scale: float = 1.0) -> np.ndarray:
    """Mixed pixels, plus 10% pure haematoxylin and 10% pure eosin (dense enough that every
    channel's OD passes Macenko's beta = 0.15: eosin's red OD is 2.5 * 0.07 = 0.18)."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.3, 1.0, (side * side, 2))
    n = side * side // 10
    c[:n] = (2.5, 0.0)
    c[n: 2 * n] = (0.0, 2.5)
    return c * scale


def test_reinhard_lab_of_white_by_hand():
    # LMS of RGB (1, 1, 1) are the matrix's row sums: 0.9996, 0.9993, 0.9973.
    # l = (L + M + S) / sqrt(3), alpha = (L + M - 2S) / sqrt(6), beta = (L - M) / sqrt(2) of log10.
    lms = np.log10([0.9996, 0.9993, 0.9973])
    expected = [lms.sum() / np.sqrt(3), (lms[0] + lms[1] - 2 * lms[2]) / np.sqrt(6),
                (lms[0] - lms[1]) / np.sqrt(2)]
    assert rgb_to_lab(np.array([255, 255, 255])) == pytest.approx(expected, abs=1e-9)


def test_reinhard_moves_mean_and_spread_to_the_reference():
    rng = np.random.default_rng(0)
    source = rng.integers(60, 200, (32, 32, 3)).astype(np.uint8)
    reference = np.clip(rng.normal((200, 120, 180), 15, (32, 32, 3)), 0, 255).astype(np.uint8)
    config = fit_stain("reinhard", reference)
    out = rgb_to_lab(normalise_stain(source, config)).reshape(-1, 3)
    assert out.mean(axis=0) == pytest.approx(config.reference["mean"], abs=0.01)
    assert out.std(axis=0) == pytest.approx(config.reference["std"], rel=0.05)
    assert np.abs(normalise_stain(reference, config).astype(int) - reference).max() <= 2  # itself: unchanged


def test_macenko_recovers_the_stain_vectors():
    img = beer_lambert(np.stack([H, E], 1), concentrations(1), 64)
    assert macenko_stains(img) == pytest.approx(np.stack([H, E], 1), abs=0.005)


def test_macenko_maps_onto_the_reference_stains_and_scale():
    # Source: stains S, concentrations c. Reference: other stains S', concentrations 2c',
    # so its 99th-percentile concentrations are twice the source's. Normalised source:
    # 255 exp(-S' (2c)) by Beer-Lambert, up to 8-bit rounding.
    other = np.stack([H + [0.1, -0.1, 0.1], E + [0.1, 0.0, -0.05]], 1)
    other /= np.linalg.norm(other, axis=0, keepdims=True)
    c = concentrations(2)
    source = beer_lambert(np.stack([H, E], 1), c, 64)
    reference = beer_lambert(other, concentrations(3, scale=2.0), 64)
    config = fit_stain("macenko", reference)
    assert np.asarray(config.reference["stains"]) == pytest.approx(other, abs=0.005)
    expected = beer_lambert(other, 2 * c, 64).astype(int)
    assert np.abs(normalise_stain(source, config).astype(int) - expected).max() <= 3


def test_vahadane_recovers_the_stain_vectors_and_normalises():
    img = beer_lambert(np.stack([H, E], 1), concentrations(4), 64)
    assert vahadane_stains(img) == pytest.approx(np.stack([H, E], 1), abs=0.02)
    config = fit_stain("vahadane", img)
    assert np.abs(normalise_stain(img, config).astype(int) - img).max() <= 6  # itself: nearly unchanged


def test_background_only_tiles_pass_unchanged():
    white = np.full((16, 16, 3), 245, np.uint8)
    config = fit_stain("macenko", beer_lambert(np.stack([H, E], 1), concentrations(5), 64))
    assert np.array_equal(normalise_stain(white, config), white)
    with pytest.raises(ValueError, match="too little stained tissue"):
        fit_stain("macenko", white)


def test_hed_jitter_by_hand():
    ruifrok_h = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
    od = 0.5 * ruifrok_h  # a pixel of pure haematoxylin
    pixel = np.rint(255 * np.exp(-od)).astype(np.uint8).reshape(1, 1, 3)
    assert np.array_equal(hed_jitter(pixel, np.ones(3), np.zeros(3)), pixel)
    # Doubling H doubles the OD: 255 exp(-1.0 * h). (Rounding of the input moves it by <= 1.)
    doubled = np.rint(255 * np.exp(-2 * od)).reshape(1, 1, 3)
    assert np.abs(hed_jitter(pixel, np.array([2.0, 1.0, 1.0]), np.zeros(3)) - doubled).max() <= 1


def test_random_hed_jitter_uses_the_torch_generator():
    img = Image.fromarray(beer_lambert(np.stack([H, E], 1), concentrations(6, side=16), 16))
    torch.manual_seed(0)
    a = np.asarray(RandomHEDJitter(0.1)(img))
    torch.manual_seed(0)
    b = np.asarray(RandomHEDJitter(0.1)(img))
    assert np.array_equal(a, b) and not np.array_equal(a, np.asarray(img))


def test_config_round_trips_and_transform_step():
    img = beer_lambert(np.stack([H, E], 1), concentrations(7), 64)
    config = fit_stain("macenko", img, name="image 3")
    again = StainConfig.from_json(config.to_json())
    assert again == StainConfig("macenko", {k: list(v) for k, v in config.reference.items()}, "image 3")
    step = StainNormalise(again)
    assert np.abs(np.asarray(step(Image.fromarray(img))).astype(int) - img).max() <= 2
    assert StainConfig.from_json(None).method == "none"
    with pytest.raises(ValueError, match="unknown stain"):
        StainConfig("magic")
