"""Who this process is in a distributed job, and the few collectives the jobs need.

A job started by torchrun (or by `srun` with one task per process) finds its
rank in the environment; `start` joins the process group: NCCL when the ranks
use GPUs, gloo on CPUs. A single process gets `SINGLE`, whose collectives do
nothing, so the engine code runs the same either way.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from atl_desktop.store import ProjectError

# How long a rank waits in a collective for the others (e.g. while rank 0 merges a
# large score cache) before giving up; torchrun stops the others at once when one dies.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
_joined_a_group = False  # see leave_process


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int


def ranks_from_environment(env: Mapping[str, str] | None = None) -> Ranks | None:
    """This process's place in a job started by torchrun or SLURM; None when not in one.

    torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. `srun` with one task per process
    sets SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID; those count only when
    MASTER_ADDR is set too (the rendezvous the job script chose), since an
    interactive shell inside an allocation carries SLURM variables as well.
    """
    env = os.environ if env is None else env
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            return Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
        if "SLURM_PROCID" in env and "MASTER_ADDR" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
            return Ranks(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                         int(env.get("SLURM_LOCALID", "0")))
    except ValueError:
        raise ProjectError("RANK, WORLD_SIZE or LOCAL_RANK (or their SLURM twins) is not a number.") from None
    return None


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def grouped(self) -> bool:
        return self.backend is not None

    def shard(self, n: int) -> slice:
        """This rank's contiguous block of n items; block sizes differ by at most one."""
        start = self.rank * n // self.world_size
        stop = (self.rank + 1) * n // self.world_size
        return slice(start, stop)

    def barrier(self) -> None:
        if self.grouped:
            dist.barrier()

    def sum(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks (float64)."""
        array = np.asarray(values, dtype=np.float64)
        if not self.grouped:
            return array
        tensor = torch.from_numpy(array.copy()).to(self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's `data` on every rank (the others pass None)."""
        if not self.grouped:
            return data or b""
        device = self._collective_device()
        size = torch.tensor([len(data) if self.is_main else 0], dtype=torch.int64, device=device)
        dist.broadcast(size, src=0)
        if not int(size.item()):
            return b""
        buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if self.is_main
                  else torch.empty(int(size.item()), dtype=torch.uint8, device=device))
        dist.broadcast(buffer, src=0)
        return buffer.cpu().numpy().tobytes()

    def broadcast_json(self, obj):
        """Rank 0's plain data (JSON: dicts, lists, strings, numbers) on every rank; no pickle."""
        text = json.dumps(obj).encode() if self.is_main else None
        return json.loads(self.broadcast_bytes(text).decode())

    def broadcast_state(self, module: nn.Module, *, buffers_only: bool = False) -> None:
        """Copy rank 0's parameters and buffers (or only its buffers) into every rank's `module`."""
        if not self.grouped:
            return
        tensors = [*([] if buffers_only else module.parameters()), *module.buffers()]
        with torch.no_grad():
            for tensor in tensors:
                staged = tensor.detach().to(self._collective_device())
                dist.broadcast(staged, src=0)
                if staged.data_ptr() != tensor.data_ptr():
                    tensor.copy_(staged)

    def _collective_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


SINGLE = DistContext()


def start(device: str | None = None, env: Mapping[str, str] | None = None) -> DistContext:
    """Join the job's process group (SINGLE when not launched as a distributed job).

    `device` is the user's choice: "cpu" keeps every rank on the CPU (gloo);
    otherwise ranks with a GPU take the one numbered by their local rank (NCCL).
    """
    ranks = ranks_from_environment(env)
    if ranks is None:
        return SINGLE
    use_cuda = torch.cuda.is_available() and (device in (None, "auto") or str(device).startswith("cuda"))
    if use_cuda:
        if ranks.local_rank >= torch.cuda.device_count():
            raise ProjectError(f"Local rank {ranks.local_rank} has no GPU: this node has "
                               f"{torch.cuda.device_count()}; start fewer processes per node.")
        target = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(target)
    else:
        target = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if "RANK" not in (os.environ if env is None else env):  # SLURM: give torch's env:// its names
            os.environ.update(RANK=str(ranks.rank), WORLD_SIZE=str(ranks.world_size),
                              LOCAL_RANK=str(ranks.local_rank))
            os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        global _joined_a_group
        _joined_a_group = True
    return DistContext(ranks.rank, ranks.world_size, ranks.local_rank, target, backend)


def stop(context: DistContext) -> None:
    if context.grouped and dist.is_initialized():
        dist.destroy_process_group()


def joined_a_group() -> bool:
    """Has this process joined a process group (with `start`)?"""
    return _joined_a_group


def leave_process(code: int) -> NoReturn:
    """End a rank's process now, without the interpreter's teardown.

    After a finished job, gloo's threads sometimes abort the process during that teardown
    ("terminate called without an active exception": 1 run in 7 of two CPU ranks here),
    which turns a rank that did all its work into a failed one. Everything the job wrote
    is closed by then; only the output streams need flushing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
