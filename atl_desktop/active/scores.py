"""Informativeness scores: pure functions of predicted probabilities.

Convention: **higher score = more informative** (more worth labelling). Every
function takes probabilities, not logits, and returns one float per sample.

- `least_confidence`: 1 - max_c p_c (Settles 2009; CEAL, Wang et al. 2017).
- `margin`: 1 - (p_(1) - p_(2)), the gap between the two most likely classes,
  flipped so that a small gap scores high.
- `entropy`: -sum_c p_c ln p_c, in nats.
- `bald`: mutual information between the prediction and the weights, estimated
  from T MC-dropout samples: H(mean_t p_t) - mean_t H(p_t) (Houlsby et al. 2011;
  Gal et al. 2017).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Probabilities are clipped here before a log so that p = 0 contributes 0 * log(eps) = 0.
EPS = 1e-12


def _check(probs: np.ndarray, ndim: int = 2) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != ndim:
        raise ValueError(f"expected probabilities with {ndim} dimensions, got shape {probs.shape}")
    return probs


def entropy_of(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along `axis` (any shape)."""
    probs = np.asarray(probs, dtype=np.float64)
    return -np.sum(probs * np.log(np.clip(probs, EPS, None)), axis=axis)


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """1 - max probability; (N, C) -> (N,)."""
    probs = _check(probs)
    return 1.0 - probs.max(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """1 - (best - second best probability); (N, C) -> (N,). One class: 0."""
    probs = _check(probs)
    if probs.shape[1] < 2:
        return np.zeros(len(probs))
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy in nats; (N, C) -> (N,)."""
    return entropy_of(_check(probs), axis=1)


def bald(mc_probs: np.ndarray) -> np.ndarray:
    """BALD from MC-dropout samples laid out (N, T, C) -> (N,).

    H(mean over T) - mean over T of H; never negative (Jensen), clipped at 0
    against rounding.
    """
    mc_probs = _check(mc_probs, ndim=3)
    mean_entropy = entropy_of(mc_probs.mean(axis=1), axis=1)
    expected_entropy = entropy_of(mc_probs, axis=2).mean(axis=1)
    return np.maximum(mean_entropy - expected_entropy, 0.0)


# Scores of one (N, C) probability table, by name (BALD needs MC samples, so it is apart).
PROB_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
}
