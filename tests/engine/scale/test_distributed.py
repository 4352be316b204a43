"""torch.distributed in the engine: ranks from the environment, shards, the DDP training
loop against one process (2 gloo ranks on CPU), and merging score shards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Subset, TensorDataset

from atl_desktop import dist as dist_module
from atl_desktop.active.scoring import (
    ScoringConfig,
    load_scores,
    merge_shards,
    score_pool,
    unscored,
)
from atl_desktop.dist import (
    DistContext,
    Ranks,
    leave_process,
    ranks_from_environment,
    start,
    stop,
)
from atl_desktop.jobs import run_job
from atl_desktop.models.classifier import Classifier, InputSpec, Stage
from atl_desktop.scale.launch import (
    LaunchOptions,
    failure_message,
    parse_progress,
    torchrun_command,
)
from atl_desktop.transfer.train import TrainConfig, train

# ---- ranks and shards, by hand ---------------------------------------------------------------


def test_ranks_from_torchrun_and_slurm_variables():
    assert ranks_from_environment({}) is None
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert ranks_from_environment(torchrun) == Ranks(3, 8, 1)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}
    assert ranks_from_environment(slurm) is None  # an interactive shell in an allocation
    assert ranks_from_environment({**slurm, "MASTER_ADDR": "node1"}) == Ranks(5, 16, 1)
    assert ranks_from_environment({**slurm, "SLURM_NTASKS": "1", "MASTER_ADDR": "n"}) is None


def test_contiguous_shards_cover_everything_once():
    blocks = [DistContext(rank=r, world_size=3).shard(10) for r in range(3)]
    assert [(b.start, b.stop) for b in blocks] == [(0, 3), (3, 6), (6, 10)]
    assert DistContext(rank=1, world_size=4).shard(2) == slice(0, 1)  # fewer items than ranks
    assert DistContext(rank=0, world_size=4).shard(2) == slice(0, 0)


def test_the_batch_is_split_over_the_ranks_and_must_divide():
    model = tiny_classifier()
    with pytest.raises(ValueError, match="multiple of that number"):
        next(train(model, pixels(8), replace(CONFIG, batch_size=15),
                   context=DistContext(rank=0, world_size=2)))


def test_torchrun_command_and_rendezvous_options():
    one = torchrun_command(LaunchOptions(nproc_per_node=2), Path("/run"))
    assert one[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert one[-3:] == ["-m", "atl_desktop.scale.worker", "/run"]
    two = torchrun_command(LaunchOptions(nproc_per_node=8, nnodes="2", rdzv_endpoint="n1:29400",
                                         rdzv_id="job7"), Path("/run"))
    assert "--standalone" not in two
    assert two[two.index("--rdzv-endpoint") + 1] == "n1:29400" and two[two.index("--rdzv-id") + 1] == "job7"
    assert LaunchOptions(nproc_per_node=8, nnodes="2", rdzv_endpoint="h").world_size == 16
    assert LaunchOptions(nproc_per_node=8, nnodes="1:4", rdzv_endpoint="h").world_size is None
    with pytest.raises(Exception, match="rdzv-endpoint"):
        LaunchOptions(nproc_per_node=2, nnodes="2")


def test_progress_lines_are_parsed_and_other_lines_ignored():
    p = parse_progress('[rank0]: @atl-progress {"done": 3, "total": 8, "message": "x", "metrics": {"loss": 0.5}}\n')
    assert (p.done, p.total, p.message, dict(p.metrics)) == (3, 8, "x", {"loss": 0.5})
    assert parse_progress("W1130 some torch warning\n") is None
    assert parse_progress("@atl-progress {broken\n") is None


# torchrun's summary when rank 1 was killed (recorded from torch 2.14).
TORCHRUN_SIGKILL = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
atl_desktop.scale.worker FAILED
-------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-30_14:10:14
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 17779)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 17779
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_14:10:14
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 17780)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 17780
======================================================="""


def test_failure_message_names_the_first_failing_rank(tmp_path):
    options = LaunchOptions(nproc_per_node=2)
    killed = failure_message(tmp_path, TORCHRUN_SIGKILL.splitlines(), 1, options)
    assert killed.startswith("Distributed job failed: rank 1 of 2 was killed by SIGKILL.")
    assert killed.endswith("the project is unchanged.")
    (tmp_path / "error-rank1.json").write_text(json.dumps(
        {"rank": 1, "host": "n2", "type": "ImageDecodeError", "message": "x.png: truncated."}))
    os.utime(tmp_path / "error-rank1.json", (1, 1))
    (tmp_path / "error-rank0.json").write_text(json.dumps(
        {"rank": 0, "host": "n1", "type": "RuntimeError", "message": "Connection closed by peer"}))
    raised = failure_message(tmp_path, TORCHRUN_SIGKILL.splitlines(), 1, options)
    assert "rank 1 of 2 (on n2) stopped with ImageDecodeError: x.png: truncated. Nothing" in raised


# ---- merging score shards ------------------------------------------------------------------


class TinyScorer(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
        self.head = nn.Linear(5, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def features_and_logits(self, x):
        f = self.body(x)
        return f, self.head(f)


def test_merged_shards_equal_one_pass_and_load_zero_copy(tmp_path):
    x = torch.rand(23, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    pool = TensorDataset(x, torch.zeros(23))
    ids = np.arange(100, 123)
    config = ScoringConfig(batch_size=4, device="cpu")
    model = TinyScorer()
    whole = run_job(score_pool(model, pool, tmp_path / "one", image_ids=ids, config=config))
    shards = []
    for rank, block in enumerate((slice(0, 11), slice(11, 23))):  # as two ranks would
        part = Subset(pool, range(23)[block])
        folder = tmp_path / "cache" / ".tmp-shards-r" / f"rank-{rank}"
        run_job(score_pool(model, part, folder, image_ids=ids[block], config=config))
        shards.append(folder)
    assert unscored(tmp_path / "cache", ids).all()
    merge_shards(tmp_path / "cache", ids, shards)
    assert not unscored(tmp_path / "cache", ids).any()
    parts = list((tmp_path / "cache").glob("part-*"))
    assert len(parts) == 1
    merged = load_scores(tmp_path / "cache", ids)
    assert isinstance(merged.probs, np.memmap)  # one part in pool order: no copy
    np.testing.assert_allclose(merged.probs, whole.probs, atol=1e-6)
    np.testing.assert_allclose(merged.features, whole.features, atol=1e-6)


def test_a_single_complete_shard_is_adopted_as_it_is(tmp_path):
    pool = TensorDataset(torch.rand(6, 1, 4, 4), torch.zeros(6))
    ids = np.arange(6)
    shard = tmp_path / "cache" / ".tmp-shards-r" / "rank-0"
    run_job(score_pool(TinyScorer(), pool, shard, image_ids=ids, config=ScoringConfig(device="cpu")))
    name = next(shard.glob("part-*")).name
    merge_shards(tmp_path / "cache", ids, [shard])
    assert (tmp_path / "cache" / name).is_dir() and not list(shard.glob("part-*"))


# ---- DDP training: two gloo ranks against one process ----------------------------------------

CONFIG = TrainConfig(backbone="tiny", epochs=3, batch_size=16, lr=0.05, optimizer="sgd",
                     momentum=0.0, weight_decay=0.0, device="cpu", patience=0, seed=3)


def tiny_classifier() -> Classifier:
    """No batch norm and no dropout: every image's gradient is independent of the others',
    so averaging two ranks' halves of a batch is exactly one process's whole batch."""
    body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 12), nn.Tanh())
    model = Classifier("tiny", body, 12, 3, InputSpec(6, 3, (0.5,) * 3, (0.5,) * 3),
                       [Stage("hidden", ("1",), "2")])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def pixels(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _train_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    context = start("cpu")
    try:
        model = tiny_classifier()
        result = run_job(train(model, pixels(16), CONFIG, val_set=pixels(9, seed=1), context=context))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
        Path(f"{out}/rank{rank}.json").write_text(json.dumps(result.metrics))
    finally:
        stop(context)
    leave_process(0)  # as the worker does: gloo sometimes aborts in the interpreter's teardown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_train_exactly_as_one_process_on_the_same_batches(tmp_path):
    single = tiny_classifier()
    alone = run_job(train(single, pixels(16), CONFIG, val_set=pixels(9, seed=1)))
    mp.spawn(_train_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    metrics = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name, value in single.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # DDP kept them in step
        # One step per epoch (batch = the whole set): the same gradient, whatever the order.
        torch.testing.assert_close(ranks[0][name], value, atol=2e-5, rtol=1e-4)
    assert not torch.equal(ranks[0]["head.weight"], tiny_classifier().state_dict()["head.weight"])
    assert metrics[0]["samples_seen"] == metrics[1]["samples_seen"] == alone.metrics["samples_seen"] == 48
    assert metrics[0]["steps"] == alone.metrics["steps"] == 3
    # Validation is shared out (5 + 4 images) and summed back.
    assert metrics[0]["val_accuracy"] == pytest.approx(alone.metrics["val_accuracy"])
    assert metrics[0]["val_loss"] == pytest.approx(alone.metrics["val_loss"], rel=1e-4)


def test_leave_process_flushes_its_output_and_keeps_the_exit_code():
    script = ("import sys; from atl_desktop.dist import leave_process; "
              "print('done', end=''); print('note', end='', file=sys.stderr); leave_process(3)")
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (ended.returncode, ended.stdout, ended.stderr) == (3, "done", "note")


def test_a_cli_rank_leaves_without_teardown_with_its_command_s_code(monkeypatch, tmp_path, capsys):
    from atl_desktop.cli import main

    left = []
    monkeypatch.setattr(dist_module, "leave_process", left.append)
    assert main(["info", str(tmp_path / "missing.atl")]) == 1 and left == []  # no group joined
    monkeypatch.setattr(dist_module, "_joined_a_group", True)
    assert main(["info", str(tmp_path / "missing.atl")]) == 1 and left == [1]
