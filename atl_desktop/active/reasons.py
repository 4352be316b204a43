"""Why an image was chosen, in words: the reason shown on its tile and printed by `atl query`.

Each strategy in `strategies.STRATEGIES` has an `explain(data, picks, params)` built from the
pieces here: it returns one value per chosen row (the score that ranked it, or 0) and one
sentence per row, e.g. "entropy 1.73 nats, top 2 % of 4,183 unlabelled".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from atl_desktop.active.scores import PROB_SCORES

Explanation = tuple[np.ndarray, list[str]]
Explain = Callable[..., Explanation]  # (data: SelectionInput, picks, params) -> Explanation

SCORE_WORDS: dict[str, Callable[[float], str]] = {
    "entropy": lambda v: f"entropy {v:.2f} nats",
    "margin": lambda v: f"top two classes {1 - v:.0%} apart",
    "least_confidence": lambda v: f"best class only {1 - v:.0%} sure",
}


def top_share(scores: np.ndarray, value: float) -> str:
    """'top 3 % of 120 unlabelled' for a value among `scores` (higher is more wanted)."""
    rank = int((scores > value).sum()) + 1
    share = max(1, math.ceil(100 * rank / len(scores)))
    return f"top {share} % of {len(scores)} unlabelled"


def fixed(sentence: str) -> Explain:
    """The same sentence for every pick (strategies without a per-image score)."""
    def explain(data, picks: np.ndarray, params: Mapping) -> Explanation:
        return np.zeros(len(picks)), [sentence] * len(picks)
    return explain


def ranked(scores: np.ndarray, picks: np.ndarray, words: Callable[[float], str]) -> Explanation:
    """Each pick's score, in words and as its rank among the pool."""
    return scores[picks], [f"{words(scores[r])}, {top_share(scores, scores[r])}" for r in picks]


def uncertainty(default: str = "entropy", diverse: bool = False) -> Explain:
    """A probability score (entropy, margin, least confidence): `params["score"]` or `default`."""
    def explain(data, picks: np.ndarray, params: Mapping) -> Explanation:
        name = params.get("score", default)
        if data.probs is None or data.probs.shape[1] < 2 or name not in PROB_SCORES:
            return RANDOM(data, picks, params)
        values, text = ranked(PROB_SCORES[name](np.asarray(data.probs)), picks,
                              SCORE_WORDS.get(name, lambda v: f"{name} {v:.3g}"))
        return values, [t + "; unlike the other chosen images" for t in text] if diverse else text
    return explain


def far_from_labelled(kind: str) -> Explain:
    """Distance to the nearest labelled image, against the labelled set's spread (core-set, k-means)."""
    def explain(data, picks: np.ndarray, params: Mapping) -> Explanation:
        if data.features is None:
            return RANDOM(data, picks, params)
        labelled = data.labelled_features
        if labelled is None or not len(labelled):
            what = "one image per cluster of the pool" if kind == "kmeans" else "spread over the pool"
            return np.zeros(len(picks)), [f"{what} (nothing labelled yet)"] * len(picks)
        lab = np.asarray(labelled, dtype=np.float64)
        chosen = np.asarray(data.features, dtype=np.float64)[picks]
        d2 = (chosen**2).sum(1)[:, None] + (lab**2).sum(1)[None, :] - 2 * chosen @ lab.T
        nearest = np.sqrt(np.maximum(d2.min(axis=1), 0))
        typical = np.median(np.sqrt(np.maximum(((lab - lab.mean(0)) ** 2).sum(1), 0))) or 1.0
        return nearest, [f"far from every labelled image (distance {d:.2f}, {d / typical:.1f}× the "
                         "labelled set's spread)" for d in nearest]
    return explain


RANDOM = fixed("chosen at random (the baseline)")
