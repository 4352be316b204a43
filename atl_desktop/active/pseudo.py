"""CEAL pseudo-labels (Wang et al. 2017), as pure functions.

Unlabelled samples whose predictive entropy is below a threshold delta get the
predicted class as a pseudo-label. The threshold decays each round,
delta_t = delta0 - dr * t, so fewer (only the surest) samples qualify as the
model gets better. As in CEAL, pseudo-labels are used for the next fine-tune
only and then returned to the pool; the store keeps the user's verdicts
(accept -> a label of kind "accepted-pseudo"; reject -> remembered, so the same
(image, class) pair is never proposed again).

Defaults: the paper's delta0 = 0.005, dr = 0.00033 suit its 200- and 256-class
sets. With a few classes the entropy of a confident prediction is larger
(2 classes, p = 0.99: 0.056 nats), so the defaults here are delta0 = 0.05
(about p >= 0.99 for 2 classes, p >= 0.995 for 10) and dr = 0.0033, the same
decay per round relative to delta0 as the paper (reaching 0 after ~15 rounds).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from atl_desktop.active.calibration import apply_temperature
from atl_desktop.active.scores import entropy


@dataclass(frozen=True)
class PseudoLabelConfig:
    delta0: float = 0.05
    decay: float = 0.0033
    max_per_class: int | None = None

    def threshold(self, round_index: int) -> float:
        return entropy_threshold(self.delta0, self.decay, round_index)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PseudoLabel:
    """One proposal; `class_id` is the store's class id (see `select_pseudo_labels`)."""

    image_id: int
    class_id: int
    confidence: float
    entropy: float

    def as_tuple(self) -> tuple[int, int, float, float]:
        """The shape `Project.add_pseudo_labels` takes."""
        return (self.image_id, self.class_id, self.confidence, self.entropy)


def entropy_threshold(delta0: float, decay: float, round_index: int) -> float:
    """delta_t = delta0 - dr * t, never below 0 (t counts rounds from 0)."""
    return max(0.0, delta0 - decay * round_index)


def select_pseudo_labels(
    probs: np.ndarray,
    image_ids: Sequence[int],
    threshold: float,
    *,
    class_ids: Sequence[int] | None = None,
    max_per_class: int | None = None,
    exclude: Iterable[tuple[int, int]] | None = None,
    temperature: float = 1.0,
) -> list[PseudoLabel]:
    """Pseudo-labels for the rows of `probs` (N, C) with entropy < threshold.

    The probabilities are first temperature-scaled (active.calibration; T = 1 leaves them
    as they are), so the threshold applies to calibrated confidence: an over-confident
    model (T > 1) proposes fewer pseudo-labels, and their recorded confidence is the
    calibrated one.

    class_ids maps a class position (column of probs) to the store's class id
    (default: the position itself); `exclude` holds (image_id, class_id) pairs
    never to propose again (rejected before). With `max_per_class`, each class
    keeps its lowest-entropy samples. Result sorted by entropy, lowest first.
    """
    probs = apply_temperature(np.asarray(probs, dtype=np.float64), temperature)
    if len(probs) != len(image_ids):
        raise ValueError(f"{len(probs)} probability rows for {len(image_ids)} images")
    ids = np.asarray(image_ids, dtype=np.int64)
    mapping = np.arange(probs.shape[1]) if class_ids is None else np.asarray(class_ids, np.int64)
    h = entropy(probs)
    predicted = probs.argmax(axis=1)
    rejected = set(exclude or ())
    taken: dict[int, int] = {}
    chosen = []
    for row in np.lexsort((ids, h)):  # lowest entropy first, then image id
        if not h[row] < threshold:
            break
        image_id, class_id = int(ids[row]), int(mapping[predicted[row]])
        if (image_id, class_id) in rejected:
            continue
        if max_per_class is not None and taken.get(class_id, 0) >= max_per_class:
            continue
        taken[class_id] = taken.get(class_id, 0) + 1
        chosen.append(PseudoLabel(image_id, class_id, float(probs[row, predicted[row]]), float(h[row])))
    return chosen


def pseudo_labels_for_round(
    probs: np.ndarray,
    image_ids: Sequence[int],
    round_index: int,
    config: PseudoLabelConfig,
    *,
    class_ids: Sequence[int] | None = None,
    exclude: Iterable[tuple[int, int]] | None = None,
    temperature: float = 1.0,
) -> list[PseudoLabel]:
    """`select_pseudo_labels` at this round's threshold delta_t, on probabilities scaled by T."""
    return select_pseudo_labels(
        probs, image_ids, config.threshold(round_index), class_ids=class_ids,
        max_per_class=config.max_per_class, exclude=exclude, temperature=temperature,
    )
