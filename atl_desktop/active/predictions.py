"""The latest scoring's predictions for any images, read from the score cache without rescoring.

Slide maps and exports show what the current checkpoint predicted for each patch
it has scored; patches not scored yet have NaN rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atl_desktop.active.scores import entropy_of
from atl_desktop.active.scoring import _locate, _parts, load_scores
from atl_desktop.store import Project


@dataclass(frozen=True)
class Predictions:
    image_ids: np.ndarray
    probs: np.ndarray  # (n, C) softmax; NaN rows where not scored
    checkpoint_id: int | None

    @property
    def scored(self) -> np.ndarray:
        return ~np.isnan(self.probs).any(axis=1) if self.probs.size else np.zeros(len(self.image_ids), bool)

    @property
    def predicted(self) -> np.ndarray:
        """Class position of the highest probability; -1 where not scored."""
        out = np.full(len(self.image_ids), -1, dtype=np.int64)
        ok = self.scored
        if ok.any():
            out[ok] = self.probs[ok].argmax(axis=1)
        return out

    @property
    def confidence(self) -> np.ndarray:
        return np.where(self.scored, np.nan_to_num(self.probs).max(axis=1, initial=0.0), np.nan)

    @property
    def uncertainty(self) -> np.ndarray:
        """Entropy of the prediction divided by log C, in [0, 1]; NaN where not scored."""
        out = np.full(len(self.image_ids), np.nan)
        ok = self.scored
        if ok.any():
            c = self.probs.shape[1]
            out[ok] = entropy_of(self.probs[ok].astype(np.float64)) / max(np.log(c), 1e-12)
        return out


def _finished(folder: Path, ids: np.ndarray) -> np.ndarray:
    """Mask of the ids whose rows are complete in the cache `folder`."""
    return _locate(_parts(folder, writable=False), ids)[2]


def latest_predictions(project: Project, image_ids: Sequence[int]) -> Predictions:
    """Predictions of the active checkpoint for `image_ids`, from whichever of its score
    caches (plain, AIFT or BALD pass) holds the most of them."""
    ids = np.asarray(image_ids, dtype=np.int64)
    checkpoint = project.latest_checkpoint()
    n_classes = len(checkpoint.classes) if checkpoint is not None else 0
    probs = np.full((len(ids), n_classes), np.nan, dtype=np.float32)
    if checkpoint is None or not len(ids):
        return Predictions(ids, probs, None)
    root = Path(project.data_dir) / "scores" / checkpoint.sha256
    best, best_mask = None, None
    for folder in sorted(root.glob("*")) if root.is_dir() else ():
        if folder.is_dir():
            mask = _finished(folder, ids)
            if best_mask is None or mask.sum() > best_mask.sum():
                best, best_mask = folder, mask
    if best is not None and best_mask.any():
        table = load_scores(best, ids[best_mask])
        if table.probs.shape[1] == n_classes:
            probs[best_mask] = table.probs
    return Predictions(ids, probs, checkpoint.id)
