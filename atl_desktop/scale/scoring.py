"""The scoring pass over many processes: each rank scores its block of the pool into a
shard, rank 0 merges the shards into the score cache.

Rank 0 decides which rows still need scores (a pass resumes what a finished pass
cached) and sends that list to the others. Each rank runs the ordinary
`score_pool` on its contiguous block, writing to its own hidden shard folder
`<cache>/.tmp-shards-<run>/rank-<r>/`; after a barrier, rank 0 merges the
shards into one part of the cache, in pool order, and removes them. A crash
before the merge leaves only the hidden folder, which the next pass clears: the
cache never holds a partial distributed pass.

The blocks are contiguous rather than DistributedSampler's strided, padded
split: inference needs no equal batch counts (no gradients are synchronised),
padding would score some images twice, and contiguous blocks make the merge a
sequential copy.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np
from torch import nn
from torch.utils.data import Dataset, Subset

from atl_desktop.active.scoring import (
    ScoreTable,
    ScoringConfig,
    load_scores,
    merge_shards,
    score_pool,
    unscored,
)
from atl_desktop.dist import DistContext
from atl_desktop.jobs import Progress

SHARDS_PREFIX = ".tmp-shards-"  # ".tmp-": an ordinary scoring pass clears leftovers


def shards_dir(cache_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(cache_dir) / f"{SHARDS_PREFIX}{run_id}"


class _WithIds(Subset):
    """A block of a dataset that keeps the image ids of its rows."""

    def __init__(self, dataset: Dataset, positions: np.ndarray, image_ids: np.ndarray):
        super().__init__(dataset, positions.tolist())
        self.image_ids = image_ids


def score_pool_sharded(
    model: nn.Module,
    dataset: Dataset,
    cache_dir: str | os.PathLike,
    context: DistContext,
    *,
    image_ids: Sequence[int] | None = None,
    config: ScoringConfig | None = None,
    run_id: str | None = None,
) -> Generator[Progress, None, ScoreTable]:
    """`score_pool` with the work split over the ranks of `context`; every rank gets the
    whole table back. Progress counts all ranks' rows, estimated from this rank's
    share (the blocks are equal to within one row)."""
    config = config or ScoringConfig()
    ids = np.asarray(dataset.image_ids if image_ids is None else image_ids, dtype=np.int64)
    if len(ids) != len(dataset):
        raise ValueError(f"{len(ids)} image ids for {len(dataset)} dataset rows")
    # Rank 0 reads the cache and tells the others (a bit per row) what is left to do.
    mask = np.packbits(unscored(cache_dir, ids)).tobytes() if context.is_main else None
    todo = np.flatnonzero(np.unpackbits(np.frombuffer(context.broadcast_bytes(mask), dtype=np.uint8),
                                        count=len(ids)))
    staging = shards_dir(cache_dir, context.broadcast_json(run_id or uuid.uuid4().hex))
    mine = todo[context.shard(len(todo))]
    if len(mine):
        job = score_pool(model, _WithIds(dataset, mine, ids[mine]), staging / f"rank-{context.rank}",
                         config=config)
        try:
            for p in job:
                if p.total:
                    yield Progress(round(len(todo) * p.done / p.total), len(todo), "scoring")
        finally:
            job.close()
    context.barrier()  # every shard is complete
    if context.is_main:
        yield Progress(len(todo), len(todo), "merging the ranks' scores")
        merge_shards(cache_dir, ids[todo], sorted(staging.glob("rank-*")))
        shutil.rmtree(staging, ignore_errors=True)
    context.barrier()  # the cache holds every row
    yield Progress(len(todo), len(todo), "scores cached")
    return load_scores(cache_dir, ids)
