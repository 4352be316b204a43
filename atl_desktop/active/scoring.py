"""The scoring pass: one batched pass over the pool -> probabilities and features,
cached on disk as memory-mapped arrays.

Layout, per cache key (a checkpoint's sha256) and pass variant:

    NAME.atl.d/scores/<key>/<variant>/part-<uuid>/
        ids.npy              int64 (n,)       image ids, row order
        probs.npy            float32 (n, C)   softmax
        features.npy         float32 (n, D)   bottleneck features
        augmented_probs.npy  float32 (n, m, C)   only with augment_copies = m (AIFT)
        mc_probs.npy         float32 (n, T, C)   only with mc_samples = T (BALD)
        done.npy             bool (n,)        row i is complete

A part is built under a temporary name and renamed once its files exist, so a
half-made part is never seen. Rows are written straight into the memmaps
(memory stays flat in pool size); every few seconds, and when the pass stops
for any reason, the arrays are flushed first and only then the rows are marked
in `done`, so a cancelled or killed pass leaves valid rows and resumes where
it stopped. A new checkpoint has a new sha256, hence a new folder: stale scores
are never read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from atl_desktop.jobs import Progress
from atl_desktop.models.classifier import model_fingerprint  # noqa: F401  (part of this API)

ARRAYS = ("probs", "features", "augmented_probs", "mc_probs")
MAX_PENDING_ROWS = 8192  # rows written but not yet marked done, at most (bounds that list)


@dataclass(frozen=True)
class ScoringConfig:
    batch_size: int = 64
    num_workers: int = 0
    augment_copies: int = 0  # m augmented patches per image (AIFT); 0 = none
    augment_min_scale: float = 0.6  # patch side as a fraction of the image side, drawn in [min, 1]
    mc_samples: int = 0  # T MC-dropout samples (BALD); 0 = none
    mc_dropout_p: float = 0.5
    seed: int = 0  # augmentation and dropout masks
    amp: bool = True  # float16 autocast, CUDA only
    device: str | None = None  # None: CUDA when available
    flush_seconds: float = 2.0

    def variant(self) -> str:
        """Folder name: passes that compute different things never share a cache."""
        name = "base"
        if self.augment_copies:
            name += f"-aug{self.augment_copies}x{self.augment_min_scale:g}-seed{self.seed}"
        if self.mc_samples:
            name += f"-mc{self.mc_samples}p{self.mc_dropout_p:g}-seed{self.seed}"
        return name

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ScoreTable:
    """Scores of `image_ids`, row-aligned; arrays may be read-only memmaps."""

    image_ids: np.ndarray
    probs: np.ndarray
    features: np.ndarray
    augmented_probs: np.ndarray | None = None
    mc_probs: np.ndarray | None = None

    def rows(self, image_ids: Sequence[int]) -> np.ndarray:
        """Row of each image id (KeyError if one is absent)."""
        order = np.argsort(self.image_ids, kind="stable")
        wanted = np.asarray(image_ids, dtype=np.int64)
        pos = np.searchsorted(self.image_ids, wanted, sorter=order)
        pos = np.minimum(pos, len(order) - 1)
        found = order[pos] if len(order) else pos
        if len(wanted) and (len(order) == 0 or np.any(self.image_ids[found] != wanted)):
            raise KeyError("some image ids have no scores")
        return found


class MissingScores(KeyError):
    """Raised by `load_scores` when some images were never scored (or not finished)."""


# ---- on-disk parts ----------------------------------------------------------------


def _fsync(path: Path) -> None:
    if os.name == "nt" and path.is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Part:
    def __init__(self, folder: Path, writable: bool):
        self.folder = folder
        mode = "r+" if writable else "r"
        self.ids = np.load(folder / "ids.npy", mmap_mode="r")
        self.done = np.load(folder / "done.npy", mmap_mode=mode)
        self.arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode=mode)
            for name in ARRAYS
            if (folder / f"{name}.npy").exists()
        }
        self.order = np.argsort(self.ids, kind="stable")

    def locate(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in this part, -1 where absent."""
        if not len(self.ids):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids, sorter=self.order), len(self.ids) - 1)
        rows = self.order[pos]
        return np.where(self.ids[rows] == ids, rows, -1)

    def flush(self) -> None:
        for array in self.arrays.values():
            array.flush()

    def mark_done(self, rows: np.ndarray) -> None:
        """Flush the data first, then the rows' done flags: done never runs ahead of data."""
        if len(rows):
            self.flush()
            self.done[rows] = True
            self.done.flush()


def _create_part(root: Path, ids: np.ndarray, shapes: dict[str, tuple[int, ...]],
                 fill: Callable[[_Part], None] | None = None) -> _Part:
    """A new part of `root`, appearing at once under its final name; `fill`, when given,
    writes its rows while it is still hidden."""
    root.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    tmp = root / f".tmp-{name}"
    tmp.mkdir()
    np.save(tmp / "ids.npy", ids)
    np.save(tmp / "done.npy", np.zeros(len(ids), dtype=bool))
    for array, tail in shapes.items():
        mm = np.lib.format.open_memmap(tmp / f"{array}.npy", mode="w+", dtype=np.float32,
                                       shape=(len(ids), *tail))
        mm.flush()
        del mm
    if fill is not None:
        hidden = _Part(tmp, writable=True)
        fill(hidden)
        hidden.flush()
        hidden.done.flush()
        del hidden
    for f in tmp.iterdir():
        _fsync(f)
    final = root / f"part-{name}"
    os.replace(tmp, final)
    _fsync(root)
    return _Part(final, writable=True)


def _parts(root: Path, writable: bool) -> list[_Part]:
    if not root.is_dir():
        return []
    return [_Part(p, writable) for p in sorted(root.glob("part-*")) if p.is_dir()]


def _locate(parts: list[_Part], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(part index or -1, row, done) for every id; a done row wins over an unfinished one."""
    where = np.full(len(ids), -1, dtype=np.int64)
    rows = np.full(len(ids), -1, dtype=np.int64)
    done = np.zeros(len(ids), dtype=bool)
    for k, part in enumerate(parts):
        r = part.locate(ids)
        hit = r >= 0
        better = hit & ~done
        where[better], rows[better] = k, r[better]
        done[better] = part.done[r[better]]
    return where, rows, done


def load_scores(cache_dir: str | os.PathLike, image_ids: Sequence[int]) -> ScoreTable:
    """Cached scores of `image_ids` in that order; MissingScores if any row is not done.

    Zero-copy memmaps when one part holds exactly these ids in this order.
    """
    ids = np.asarray(image_ids, dtype=np.int64)
    parts = _parts(Path(cache_dir), writable=False)
    where, rows, done = _locate(parts, ids)
    if not done.all():
        raise MissingScores(f"{int((~done).sum())} of {len(ids)} images have no cached scores")
    if not len(ids):
        return ScoreTable(ids, np.empty((0, 0), np.float32), np.empty((0, 0), np.float32))
    first = parts[where[0]]
    if (where == where[0]).all() and len(first.ids) == len(ids) and np.array_equal(rows, np.arange(len(ids))):
        return ScoreTable(ids, **{k: first.arrays.get(k) for k in ARRAYS})
    gathered = {}
    for name in ARRAYS:
        if name not in first.arrays:
            continue
        out = np.empty((len(ids), *first.arrays[name].shape[1:]), dtype=np.float32)
        for k in np.unique(where):
            sel = where == k
            out[sel] = parts[k].arrays[name][rows[sel]]
        gathered[name] = out
    return ScoreTable(ids, **{k: gathered.get(k) for k in ARRAYS})


def unscored(cache_dir: str | os.PathLike, image_ids: Sequence[int]) -> np.ndarray:
    """Mask of the `image_ids` whose rows are not finished in the cache."""
    ids = np.asarray(image_ids, dtype=np.int64)
    return ~_locate(_parts(Path(cache_dir), writable=False), ids)[2]


MERGE_CHUNK_ROWS = 65536  # rows copied at a time when merging shards (bounds memory)


def merge_shards(cache_dir: str | os.PathLike, image_ids: Sequence[int],
                 shard_dirs: Sequence[str | os.PathLike]) -> None:
    """Gather the rows of `image_ids`, finished in the caches `shard_dirs` (one per
    rank of a distributed pass), into one new part of `cache_dir`, in that order, so
    that loading them later is zero-copy. The part appears complete or not at all."""
    ids = np.asarray(image_ids, dtype=np.int64)
    if not len(ids):
        return
    root = Path(cache_dir)
    parts = [part for folder in shard_dirs for part in _parts(Path(folder), writable=False)]
    where, rows, done = _locate(parts, ids)
    if not done.all():
        raise MissingScores(f"{int((~done).sum())} of {len(ids)} images are missing from the shards")
    first = parts[where[0]]
    if (where == where[0]).all() and np.array_equal(first.ids, ids) and first.done.all():
        os.replace(first.folder, root / first.folder.name)  # one shard holds it all: adopt it
        _fsync(root)
        return

    def fill(part: _Part) -> None:
        for k in np.unique(where):
            positions = np.flatnonzero(where == k)
            for start in range(0, len(positions), MERGE_CHUNK_ROWS):
                chunk = positions[start:start + MERGE_CHUNK_ROWS]
                for name, array in part.arrays.items():
                    array[chunk] = parts[k].arrays[name][rows[chunk]]
        part.mark_done(np.arange(len(ids)))

    _create_part(root, ids, {name: tuple(a.shape[1:]) for name, a in first.arrays.items()}, fill)


def remove_stale_scores(scores_root: str | os.PathLike, keep_keys: Sequence[str]) -> list[Path]:
    """Delete cache folders whose key (checkpoint sha256) is not in keep_keys."""
    root = Path(scores_root)
    removed = []
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir() and folder.name not in set(keep_keys):
                shutil.rmtree(folder)
                removed.append(folder)
    return removed


def scores_dir(data_dir: str | os.PathLike, key: str, config: ScoringConfig) -> Path:
    return Path(data_dir) / "scores" / key / config.variant()


# ---- the forward pass ---------------------------------------------------------------


class _Rows(Dataset):
    """Selected rows of a dataset; each item is (image, position in the selection)."""

    def __init__(self, dataset: Dataset, positions: np.ndarray):
        self.dataset = dataset
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int):
        item = self.dataset[int(self.positions[k])]
        return (item[0] if isinstance(item, (tuple, list)) else item), k


def random_patches(x: torch.Tensor, generator: torch.Generator, min_scale: float = 0.6) -> torch.Tensor:
    """A random square patch of every image (side in [min_scale, 1] of the image, anywhere
    inside it, mirrored with probability 1/2), resampled to the input size."""
    n = x.shape[0]
    r = torch.rand(n, 4, generator=generator).to(x.device)
    side = min_scale + (1.0 - min_scale) * r[:, 0]
    tx = (2.0 * r[:, 1] - 1.0) * (1.0 - side)
    ty = (2.0 * r[:, 2] - 1.0) * (1.0 - side)
    flip = torch.where(r[:, 3] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = side * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = side
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _mc_probs(model: nn.Module, x: torch.Tensor, feats: torch.Tensor, config: ScoringConfig,
              generator: torch.Generator) -> torch.Tensor:
    """(n, T, C) softmax over T dropout samples.

    With a `head` module (features -> logits) the backbone runs once and dropout
    masks, drawn from `generator`, hit the features; otherwise the model's own
    Dropout layers are switched on (torch's global RNG; not reproducible).
    """
    keep = 1.0 - config.mc_dropout_p
    head = getattr(model, "head", None)
    samples = []
    if isinstance(head, nn.Module):
        for _ in range(config.mc_samples):
            mask = (torch.rand(feats.shape, generator=generator) < keep).to(feats.device, feats.dtype)
            samples.append(F.softmax(head(feats * mask / keep).float(), dim=1))
        return torch.stack(samples, dim=1)
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not dropouts:
        raise ValueError("MC-dropout needs a model with a `head` module or Dropout layers")
    try:
        for m in dropouts:
            m.train()
        for _ in range(config.mc_samples):
            samples.append(F.softmax(model.features_and_logits(x)[1].float(), dim=1))
    finally:
        for m in dropouts:
            m.eval()
    return torch.stack(samples, dim=1)


def _forward(model: nn.Module, x: torch.Tensor, config: ScoringConfig,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
    copies = None
    if x.dim() == 5:  # (n, 1 + m, C, H, W): the dataset made the copies (AIFT on slides)
        x, copies = x[:, 0], x[:, 1:]
    feats, logits = model.features_and_logits(x)
    out = {"probs": F.softmax(logits.float(), dim=1), "features": feats.float()}
    if config.augment_copies:
        views = ([copies[:, k] for k in range(copies.shape[1])] if copies is not None else
                 (random_patches(x, generator, config.augment_min_scale).to(x.dtype)
                  for _ in range(config.augment_copies)))
        out["augmented_probs"] = torch.stack(
            [F.softmax(model.features_and_logits(v)[1].float(), dim=1) for v in views], dim=1)
    if config.mc_samples:
        out["mc_probs"] = _mc_probs(model, x, feats, config, generator)
    return out


def _device(config: ScoringConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def score_pool(
    model: nn.Module,
    dataset: Dataset,
    cache_dir: str | os.PathLike,
    *,
    image_ids: Sequence[int] | None = None,
    config: ScoringConfig | None = None,
) -> Generator[Progress, None, ScoreTable]:
    """Score every image of `dataset` not yet cached in `cache_dir`; return all their scores.

    `dataset[i]` is (image tensor, label) or an image tensor; `image_ids[i]` (default
    `dataset.image_ids`) names row i. The model needs `features_and_logits(x)`; it is
    moved to the device and put in eval mode for the pass (its mode is restored).
    A generator job: every yield is a cancel point and leaves the cache valid.
    """
    config = config or ScoringConfig()
    ids = np.asarray(dataset.image_ids if image_ids is None else image_ids, dtype=np.int64)
    if len(ids) != len(dataset):
        raise ValueError(f"{len(ids)} image ids for {len(dataset)} dataset rows")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    root = Path(cache_dir)
    for leftover in root.glob(".tmp-*") if root.is_dir() else ():
        shutil.rmtree(leftover, ignore_errors=True)  # an interrupted part creation
    parts = _parts(root, writable=True)
    where, rows, done = _locate(parts, ids)
    total = int((~done).sum())
    work = [(parts[k], np.flatnonzero(~done & (where == k))) for k in np.unique(where[~done]) if k >= 0]
    fresh = np.flatnonzero(~done & (where < 0))
    if len(fresh):
        work.append((None, fresh))

    device = _device(config)
    was_training = model.training
    model.to(device).eval()
    generator = torch.Generator().manual_seed(config.seed)
    finished = 0
    try:
        for part, positions in work:
            part_rows = rows[positions] if part is not None else np.arange(len(positions))
            for written in _score_part(model, dataset, ids, positions, part_rows, part, root,
                                       config, device, generator):
                finished += written
                yield Progress(finished, total, "scoring")
    finally:
        model.train(was_training)
    yield Progress(total, total, "scores cached")
    return load_scores(root, ids)


def _score_part(model, dataset, ids, positions, part_rows, part, root, config, device, generator):
    """Fill one part's rows; yields the number of rows written per batch."""
    cuda = device.type == "cuda"
    loader = DataLoader(_Rows(dataset, positions), batch_size=config.batch_size, shuffle=False,
                        num_workers=config.num_workers, pin_memory=cuda)
    autocast = (torch.autocast("cuda", dtype=torch.float16) if cuda and config.amp
                else contextlib.nullcontext())
    pending: list[np.ndarray] = []
    last_flush = time.monotonic()
    try:
        for x, k in loader:
            x = x.to(device, non_blocking=cuda)
            with torch.inference_mode(), autocast:
                out = _forward(model, x, config, generator)
            if part is None:  # shapes are known only now
                part = _create_part(root, ids[positions],
                                    {name: tuple(t.shape[1:]) for name, t in out.items()})
            batch_rows = part_rows[k.numpy()]
            for name, tensor in out.items():
                part.arrays[name][batch_rows] = tensor.cpu().numpy()
            del out
            pending.append(batch_rows)
            pending_rows = sum(len(r) for r in pending)
            if pending_rows >= MAX_PENDING_ROWS or time.monotonic() - last_flush >= config.flush_seconds:
                part.mark_done(np.concatenate(pending))
                pending.clear()
                last_flush = time.monotonic()
            yield len(batch_rows)
    finally:
        if part is not None and pending:
            part.mark_done(np.concatenate(pending))


def write_meta(cache_dir: str | os.PathLike, meta: dict) -> None:
    """Optional human-readable note beside a cache (checkpoint id, config)."""
    from atl_desktop.store.files import atomic_write_text

    atomic_write_text(Path(cache_dir) / "meta.json", json.dumps(meta, indent=2, sort_keys=True))
