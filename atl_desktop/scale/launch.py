"""Start a distributed job with torchrun, as a job (a generator of Progress).

`launch` writes the job's spec to a fresh run folder, starts
`python -m torch.distributed.run ... -m atl_desktop.scale.worker RUN_DIR` in a
process group of its own, turns rank 0's `@atl-progress` lines into Progress,
and at the end reads rank 0's outcome. Given the open project (whose writer
lock this process holds), it records the checkpoints rank 0 handed back; the
ranks themselves only read the project. Closing the generator stops torchrun
and every rank. When any rank fails, torchrun stops the others and `launch`
raises `DistributedJobError` naming the rank and its error; nothing has been
recorded and the ranks' half-made score shards are removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import deque
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path

from atl_desktop.jobs import Progress
from atl_desktop.scale.worker import (
    JOB_FILE,
    OUTCOME_FILE,
    PROGRESS_MARK,
    record_handback,
    train_spec,
)
from atl_desktop.store import ProjectError

STOP_GRACE_S = 30.0  # after SIGTERM, how long torchrun and the ranks get before SIGKILL
TAIL_LINES = 60  # lines of torchrun's other output kept for the failure message


class DistributedJobError(ProjectError):
    """A rank failed (or torchrun could not start them): the job recorded nothing."""


@dataclass(frozen=True)
class LaunchOptions:
    """torchrun's own options: processes per node and the rendezvous of several nodes."""

    nproc_per_node: int = 1
    nnodes: str = "1"  # "N", or "MIN:MAX" for an elastic range
    rdzv_endpoint: str | None = None  # HOST[:PORT] of the rendezvous, needed with several nodes
    rdzv_id: str = "atl"
    rdzv_backend: str = "c10d"

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise ProjectError("--nproc-per-node must be at least 1.")
        if not re.fullmatch(r"\d+(:\d+)?", self.nnodes):
            raise ProjectError(f"--nnodes {self.nnodes!r}: give a number of nodes, or MIN:MAX.")
        if not self.single_node and not self.rdzv_endpoint:
            raise ProjectError("Several nodes need a rendezvous: --rdzv-endpoint HOST:PORT "
                               "(a host every node can reach, e.g. the first node).")

    @property
    def single_node(self) -> bool:
        return self.nnodes.split(":")[-1] == "1"

    @property
    def world_size(self) -> int | None:
        """Total processes when fixed (None for an elastic number of nodes)."""
        low, _, high = self.nnodes.partition(":")
        return None if high and high != low else int(low) * self.nproc_per_node


def torchrun_command(options: LaunchOptions, run_dir: Path) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run"]
    if options.single_node and not options.rdzv_endpoint:
        command.append("--standalone")  # a free local port, no endpoint to agree on
    else:
        command += ["--nnodes", options.nnodes, "--rdzv-backend", options.rdzv_backend,
                    "--rdzv-endpoint", str(options.rdzv_endpoint), "--rdzv-id", options.rdzv_id]
    command += ["--nproc-per-node", str(options.nproc_per_node), "--max-restarts", "0",
                "-m", "atl_desktop.scale.worker", str(run_dir)]
    return command


def worker_environment(options: LaunchOptions) -> dict[str, str]:
    env = dict(os.environ)
    # Share the cores among the local ranks rather than oversubscribing them
    # (torchrun would set 1 thread per process, and say so on every start).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // options.nproc_per_node)))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch(spec: Mapping, options: LaunchOptions, project=None) -> Generator[Progress, None, dict]:
    """Run the job `spec` (see `worker.score_spec`, `worker.train_spec`) under torchrun.

    With `project` (open for writing here; the spec then asks for `handback`) the
    trained models are recorded into it once every rank has finished.
    """
    if spec.get("handback") and project is None:
        raise ValueError("a hand-back job needs the open project to record into")
    run_dir = Path(tempfile.mkdtemp(prefix="atl-run-"))
    (run_dir / JOB_FILE).write_text(json.dumps(spec))
    process = subprocess.Popen(
        torchrun_command(options, run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, bufsize=1, env=worker_environment(options),
        start_new_session=os.name != "nt",
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    succeeded = False
    try:
        yield Progress(0, None, f"starting {options.nproc_per_node} processes per node")
        assert process.stdout is not None
        for line in process.stdout:
            progress = parse_progress(line)
            if progress is not None:
                yield progress
            elif line.strip():
                tail.append(line.rstrip())
        code = process.wait()
        if code != 0:
            raise DistributedJobError(failure_message(run_dir, list(tail), code, options))
        outcome = _read_outcome(run_dir, options)
        if outcome.get("handback") is not None:
            outcome = record_handback(project, outcome, run_dir)
        succeeded = True
        return outcome
    finally:
        _stop(process)
        if process.stdout is not None:
            process.stdout.close()
        if not succeeded:
            remove_shards(spec)
        shutil.rmtree(run_dir, ignore_errors=True)


def parse_progress(line: str) -> Progress | None:
    at = line.find(PROGRESS_MARK)
    if at < 0:
        return None
    try:
        data = json.loads(line[at + len(PROGRESS_MARK):])
        return Progress(int(data["done"]), data["total"], data.get("message", ""),
                        data.get("metrics", {}))
    except (ValueError, KeyError, TypeError):
        return None


def _read_outcome(run_dir: Path, options: LaunchOptions) -> dict:
    path = run_dir / OUTCOME_FILE
    if not path.exists():
        if options.single_node:
            raise DistributedJobError("The distributed job ended without a result from rank 0.")
        return {"kind": "elsewhere"}  # rank 0 ran on another node and recorded the results there
    return json.loads(path.read_text())


def _stop(process: subprocess.Popen) -> None:
    """Stop torchrun and its ranks (a process group of their own) if they still run."""
    if process.poll() is not None:
        return
    try:
        if os.name == "nt":
            process.terminate()
        else:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        if os.name == "nt":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def remove_shards(spec: Mapping) -> None:
    """Remove the hidden score shards a failed or cancelled scoring job left behind."""
    from atl_desktop.scale.scoring import SHARDS_PREFIX
    from atl_desktop.store.project import data_dir_for

    if spec.get("kind") != "score" or not spec.get("run_id"):
        return
    scores = data_dir_for(Path(spec["project"])) / "scores"
    for folder in scores.glob(f"*/*/{SHARDS_PREFIX}{spec['run_id']}-*"):
        shutil.rmtree(folder, ignore_errors=True)
        for parent in (folder.parent, folder.parent.parent):  # made for the shards alone
            try:
                parent.rmdir()
            except OSError:
                break  # not empty: it holds earlier scores


# ---- failure messages ----------------------------------------------------------------------


def failure_message(run_dir: Path, tail: list[str], code: int, options: LaunchOptions) -> str:
    """Which rank failed first and why, in one paragraph."""
    world = options.world_size
    of = f" of {world}" if world else ""
    errors = []
    for path in run_dir.glob("error-rank*.json"):
        try:
            detail = json.loads(path.read_text())
            errors.append((detail.get("time", path.stat().st_mtime), detail))
        except (OSError, ValueError):
            continue
    unchanged = " Nothing was recorded: the project is unchanged."
    if errors:
        first = min(errors, key=lambda e: e[0])[1]
        return (f"Distributed job failed: rank {first['rank']}{of} (on {first['host']}) stopped with "
                f"{first['type']}: {str(first['message']).rstrip('.')}.{unchanged}")
    rank, exit_code = _root_cause(tail)
    if rank is not None and exit_code is not None:
        how = (f"was killed by {_signal_name(-exit_code)}" if exit_code < 0
               else f"exited with status {exit_code}")
        return f"Distributed job failed: rank {rank}{of} {how}.{unchanged}"
    last = tail[-1] if tail else f"torchrun exited with status {code}"
    return f"Distributed job failed: {last}.{unchanged}"


def _root_cause(tail: list[str]) -> tuple[int | None, int | None]:
    """(rank, exit code) from torchrun's failure summary ("Root Cause" section)."""
    text = "\n".join(tail)
    cause = text[text.find("Root Cause"):] if "Root Cause" in text else text
    rank = re.search(r"rank\s*:\s*(\d+)", cause)
    exit_code = re.search(r"exitcode\s*:\s*(-?\d+)", cause)
    return (int(rank.group(1)) if rank else None, int(exit_code.group(1)) if exit_code else None)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ---- the window's training job ------------------------------------------------------------


def local_train_job(project, *, processes: int, config=None,
                    from_scratch: bool = False) -> Generator[Progress, None, int]:
    """`session.train_job` over `processes` local processes (one per GPU, or gloo on
    CPUs): trains the open round's labels and pending pseudo-labels, records the
    checkpoints here, then finishes the round as `session.train_job` does."""
    from atl_desktop.loop.rounds import open_round, round_state, training_labels
    from atl_desktop.loop.session import finish_round_job, project_train_config

    config = config or project_train_config(project)
    current = open_round(project)
    round_id = None if current is None else current.id
    if round_id is None or not round_state(project, round_id).reached("trained"):
        pseudo = training_labels(project, round_id)[1] if round_id is not None else {}
        spec = train_spec(project.path, config=config.to_dict(), from_scratch=from_scratch,
                          run_id=uuid.uuid4().hex, handback=True, round_id=round_id, pseudo=pseudo)
        outcome = yield from launch(spec, LaunchOptions(nproc_per_node=processes), project)
        if round_id is None:
            return outcome["checkpoints"][-1]
    summary = yield from finish_round_job(project, round_id=round_id, config=config)
    return summary.checkpoint_id
