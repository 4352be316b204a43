"""What every rank of a distributed scoring or training job runs.

A job is described by a plain JSON `spec` (see `score_spec`, `train_spec`). Two ways in:

- `python -m atl_desktop.scale.worker RUN_DIR`, started by torchrun from
  `launch.py`: the spec is RUN_DIR/job.json; rank 0 prints its progress as
  `@atl-progress {...}` lines, writes its result to RUN_DIR/outcome.json and,
  with `handback`, the trained models to RUN_DIR, for the launching process
  (which holds the project open) to record. A failing rank writes
  RUN_DIR/error-rank<r>.json and exits with status 1.
- `atl score` / `atl train` under an external torchrun or SLURM launch call
  `run_spec` themselves; rank 0 then records the checkpoints itself.

Only rank 0 ever opens the project for writing (the other ranks read it), and
only once every rank has finished: a job that fails anywhere records nothing.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from atl_desktop.dist import SINGLE, DistContext, leave_process, start, stop
from atl_desktop.jobs import Progress, relabel, run_job
from atl_desktop.store import Project, ProjectError

PROGRESS_MARK = "@atl-progress "
JOB_FILE = "job.json"
OUTCOME_FILE = "outcome.json"


def error_file(run_dir: Path, rank: int) -> Path:
    return run_dir / f"error-rank{rank}.json"


# ---- specs -------------------------------------------------------------------------------


def score_spec(project: str | os.PathLike, *, model: Mapping, scoring: Mapping, source: bool,
               run_id: str, handback: bool) -> dict[str, Any]:
    """model: ModelChoice fields; scoring: ScoringConfig fields."""
    return {"kind": "score", "project": str(Path(project).absolute()), "model": dict(model),
            "scoring": dict(scoring), "source": source, "run_id": run_id, "handback": handback}


def train_spec(project: str | os.PathLike, *, config: Mapping, from_scratch: bool, run_id: str,
               handback: bool, round_id: int | None = None,
               pseudo: Mapping[int, int] | None = None) -> dict[str, Any]:
    """config: TrainConfig fields; with `round_id`, `pseudo` (image id -> class id) are the
    round's pending pseudo-labels, trained on as in `rounds.fine_tune_job`."""
    return {"kind": "train", "project": str(Path(project).absolute()), "config": dict(config),
            "from_scratch": from_scratch, "run_id": run_id, "handback": handback,
            "round": round_id, "pseudo": {str(k): v for k, v in (pseudo or {}).items()}}


def spec_device(spec: Mapping) -> str | None:
    if spec["kind"] == "score":
        return spec["scoring"].get("device")
    return spec["config"].get("device", "auto")


# ---- scoring -----------------------------------------------------------------------------


def score_ranks(context: DistContext, spec: Mapping) -> Generator[Progress, None, dict]:
    """Score the target (and source) pool over the ranks into the project's score cache."""
    from atl_desktop.active.scoring import ScoringConfig, model_fingerprint, scores_dir, write_meta
    from atl_desktop.data.datasets import project_dataset
    from atl_desktop.loop.session import ModelChoice, load_model
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.scale.scoring import score_pool_sharded

    config = replace(ScoringConfig(**spec["scoring"]), device=str(context.device))
    with Project.open(spec["project"], readonly=True) as project:  # scoring writes no records
        net, key, checkpoint_id = load_model(project, ModelChoice(**spec["model"]))
        if checkpoint_id is None:  # a freshly built backbone: rank 0's weights for everyone
            context.broadcast_state(net)
            key = model_fingerprint(net)
        cache = scores_dir(project.data_dir, key, config)
        run = context.broadcast_json(spec.get("run_id") or uuid.uuid4().hex)
        transform = input_transform(net.spec)
        counts: dict[str, int | None] = {}
        for domain in ("target", "source") if spec["source"] else ("target",):
            if not project.image_ids(domain=domain, split="pool"):
                counts[domain] = None
                continue
            dataset = project_dataset(project, domain=domain, split="pool", labelled=None,
                                      transform=transform)
            job = score_pool_sharded(net, dataset, cache, context, config=config,
                                     run_id=f"{run}-{domain}")
            table = yield from relabel(job, f"scoring {domain} images")
            counts[domain] = len(table.image_ids)
        if counts["target"] is None:
            raise ProjectError(f"{project.path.name} has no target images in the pool.")
        if context.is_main:
            write_meta(cache, {"checkpoint_id": checkpoint_id, "key": key, "config": config.to_json(),
                               "processes": context.world_size})
    return {"kind": "score", "target": counts["target"], "source": counts.get("source"),
            "checkpoint_id": checkpoint_id, "key": key, "variant": config.variant(),
            "processes": context.world_size}


# ---- training ----------------------------------------------------------------------------


def train_ranks(context: DistContext, spec: Mapping,
                handback_dir: Path | None = None) -> Generator[Progress, None, dict]:
    """Train as `train_project` does (with a round's pseudo-labels when given), each phase
    over all ranks; after the last phase rank 0 records the checkpoints, or with
    `handback_dir` writes them there for the launching process to record."""
    from torch.utils.data import ConcatDataset

    from atl_desktop.transfer.train import (
        TrainConfig,
        _prefixed,
        phase_record,
        plan_project_training,
        train,
    )

    config = replace(TrainConfig.from_dict(spec["config"]), device=str(context.device))
    pseudo = {int(k): int(v) for k, v in spec.get("pseudo", {}).items()}
    records = context.is_main and handback_dir is None
    with Project.open(spec["project"], readonly=not records) as project:
        plan = plan_project_training(project, config, from_scratch=spec["from_scratch"])
        if pseudo:
            _add_pseudo(project, plan, pseudo, ConcatDataset)
        finished = []
        for name, method_name, sets in plan.phases:
            method = plan.method(method_name)
            job = train(plan.model, sets["train"], config, val_set=sets["val"],
                        source_set=sets["source"], target_set=sets["target"], method=method,
                        context=context)
            result = yield from _prefixed(job, name)
            recorded, metrics = phase_record(config, name, method, result, sets)
            if spec.get("round") is not None:
                metrics["n_pseudo"] = len(pseudo)
            recorded["processes"] = context.world_size
            finished.append((copy.deepcopy(plan.model).cpu() if context.is_main else None,
                             recorded, metrics))
        context.barrier()  # every rank has finished: only now is anything written
        if not context.is_main:
            return {}
        parent = plan.start.id if plan.start else None
        if handback_dir is not None:
            return hand_back(handback_dir, finished, plan.classes, parent, spec.get("round"),
                             config.seed)
        ids = record_phases(project, finished, plan.classes, parent, spec.get("round"), config.seed)
        return {"kind": "train", "checkpoints": ids, "phases": [r["phase"] for _, r, _ in finished],
                "metrics": finished[-1][2]}


def _add_pseudo(project, plan, pseudo: Mapping[int, int], concat) -> None:
    """CEAL: the round's pending pseudo-labels join each phase's labelled target images."""
    from atl_desktop.loop.rounds import pseudo_dataset
    from atl_desktop.models.transforms import input_transform

    extra = pseudo_dataset(project, pseudo,
                           input_transform(plan.model.spec, train=True, augment=plan.config.augment))
    if len(extra):
        for _, _, sets in plan.phases:
            if sets["train"] is not None:
                sets["train"] = concat([sets["train"], extra])


def record_phases(project, phases, classes, parent: int | None, round_id: int | None,
                  seed: int) -> list[int]:
    """Record the phases' models as a chain of checkpoints, and the round's "trained"
    step with the last, in one transaction."""
    from atl_desktop.loop.rounds import record_step
    from atl_desktop.models.checkpoints import save_checkpoint

    ids = []
    with project.transaction():
        for model, recorded, metrics in phases:
            parent = save_checkpoint(project, model, classes=classes, parent_id=parent,
                                     round=round_id, config=recorded, metrics=metrics, seed=seed)
            ids.append(parent)
        if round_id is not None:
            record_step(project, round_id, "trained", checkpoint=parent, train=phases[-1][2])
    return ids


def hand_back(folder: Path, phases, classes, parent: int | None, round_id: int | None,
              seed: int) -> dict:
    """Write the phases' models as model files for the launching process to record."""
    from atl_desktop.models.checkpoints import save_model_file

    entries = []
    for k, (model, recorded, metrics) in enumerate(phases):
        path = save_model_file(folder / f"phase-{k}.safetensors", model, classes=classes,
                               config=recorded, metrics=metrics, seed=seed)
        entries.append({"file": path.name, "config": recorded, "metrics": metrics})
    return {"kind": "train", "handback": entries, "classes": list(classes), "parent": parent,
            "round": round_id, "seed": seed}


def record_handback(project, outcome: Mapping, folder: Path) -> dict:
    """The launcher's half of `hand_back`: record the models rank 0 left in `folder`."""
    from atl_desktop.models.checkpoints import load_model_file

    phases = []
    for entry in outcome["handback"]:
        model, _meta = load_model_file(folder / entry["file"], classes=outcome["classes"])
        phases.append((model, entry["config"], entry["metrics"]))
    ids = record_phases(project, phases, outcome["classes"], outcome["parent"], outcome["round"],
                        outcome["seed"])
    return {"kind": "train", "checkpoints": ids, "phases": [r["phase"] for _, r, _ in phases],
            "metrics": phases[-1][2]}


# ---- entry points ------------------------------------------------------------------------


def run_spec(context: DistContext, spec: Mapping,
             handback_dir: Path | None = None) -> Generator[Progress, None, dict]:
    if spec["kind"] == "score":
        return (yield from score_ranks(context, spec))
    if spec["kind"] == "train":
        return (yield from train_ranks(context, spec, handback_dir))
    raise ProjectError(f"Unknown distributed job {spec['kind']!r}.")


def _printer(context: DistContext) -> Callable[[Progress], None]:
    def show(p: Progress) -> None:
        if context.is_main:
            line = {"done": p.done, "total": p.total, "message": p.message, "metrics": dict(p.metrics)}
            print(PROGRESS_MARK + json.dumps(line), flush=True)
    return show


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m atl_desktop.scale.worker RUN_DIR (started by torchrun)", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    context = SINGLE
    try:
        spec = json.loads((run_dir / JOB_FILE).read_text())
        context = start(spec_device(spec))
        handback = run_dir if spec.get("handback") else None
        outcome = run_job(run_spec(context, spec, handback), _printer(context))
        if context.is_main:
            from atl_desktop.store.files import atomic_write_text

            atomic_write_text(run_dir / OUTCOME_FILE, json.dumps(outcome))
    except BaseException as error:  # noqa: BLE001 - every failure is reported, then the rank exits
        _report_failure(run_dir, context, error)
        leave_process(1)  # at once: a clean shutdown could wait forever on ranks that are gone
    stop(context)
    return 0


def _report_failure(run_dir: Path, context: DistContext, error: BaseException) -> None:
    rank = int(os.environ.get("RANK", context.rank))
    message = str(error) or type(error).__name__
    detail = {"rank": rank, "host": socket.gethostname(), "time": time.time(), "type": type(error).__name__,
              "message": message, "traceback": traceback.format_exc()}
    try:
        error_file(run_dir, rank).write_text(json.dumps(detail))
    except OSError:
        pass  # the message below still says it
    print(f"atl: rank {rank} failed: {type(error).__name__}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    leave_process(main())  # not the interpreter's teardown: see leave_process
