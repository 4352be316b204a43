"""Distributed `atl score` / `atl train` (torchrun options, or an external torchrun/SLURM
launch), and `atl pack` / `atl unpack-results` for running a project's jobs on a cluster."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import Project, ProjectError


def register(subparsers: argparse._SubParsersAction) -> None:
    pack = subparsers.add_parser(
        "pack", help="write a self-contained bundle of the project for a cluster run",
        description="Write a folder with a copy of the project (pool manifest, labels, current "
                    "checkpoint, settings), its images copied in or referenced, and a fingerprint "
                    "of the project's state. Run `atl score`/`atl train` on BUNDLE/project.atl "
                    "anywhere, then bring the results back with `atl unpack-results`.")
    pack.add_argument("project", type=Path)
    pack.add_argument("bundle", type=Path, help="the folder to create")
    pack.add_argument("--images", choices=("copy", "reference"), default="copy",
                      help="copy the images into the bundle (default), or refer to them by "
                           "absolute path (storage the cluster mounts too)")
    pack.add_argument("--map-prefix", action="append", default=[], metavar="LOCAL=REMOTE",
                      help="with --images reference: rewrite paths starting with LOCAL to REMOTE "
                           "(repeatable)")
    pack.add_argument("--quiet", action="store_true")
    pack.set_defaults(func=cmd_pack)

    unpack = subparsers.add_parser(
        "unpack-results", help="merge a cluster run's checkpoints, scores and metrics back",
        description="Bring the checkpoints (with their metrics) and score caches made in a bundle "
                    "back into the project it was packed from, recording where they came from. "
                    "A bundle packed from another state of the project is refused.")
    unpack.add_argument("project", type=Path)
    unpack.add_argument("bundle", type=Path)
    unpack.add_argument("--json", action="store_true")
    unpack.set_defaults(func=cmd_unpack)


# ---- distributed score and train -------------------------------------------------------------


def add_launch_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "distributed (torch.distributed)",
        "Start the job over several processes with torchrun: one per GPU (NCCL), or gloo on "
        "CPUs. Under an external torchrun or SLURM launch leave these out: the ranks are read "
        "from the environment.")
    group.add_argument("--nproc-per-node", type=int, metavar="N", help="processes on this node")
    group.add_argument("--nnodes", default=None, metavar="N|MIN:MAX", help="nodes taking part (default 1)")
    group.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous of several nodes")
    group.add_argument("--rdzv-id", default="atl", help="job id shared by the nodes (default atl)")
    group.add_argument("--rdzv-backend", default="c10d", help="torchrun rendezvous backend (default c10d)")


def distributed(args: argparse.Namespace) -> bool:
    """Is this command to run distributed: asked to launch, or already launched?"""
    from atl_desktop.dist import ranks_from_environment

    return args.nproc_per_node is not None or args.nnodes is not None or ranks_from_environment() is not None


def _launch_options(args: argparse.Namespace):
    from atl_desktop.scale.launch import LaunchOptions

    return LaunchOptions(nproc_per_node=args.nproc_per_node or 1, nnodes=args.nnodes or "1",
                         rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id,
                         rdzv_backend=args.rdzv_backend)


def _in_place(args: argparse.Namespace, spec: dict, desc: str) -> dict:
    """This process is one rank of an external launch: run its part; rank 0 records."""
    from atl_desktop.dist import ranks_from_environment, start, stop
    from atl_desktop.scale.worker import run_spec, spec_device

    if args.nproc_per_node is not None or args.nnodes is not None:
        ranks = ranks_from_environment()
        raise ProjectError(f"This process is already rank {ranks.rank} of {ranks.world_size} of a "
                           "torchrun/SLURM launch: leave out --nproc-per-node and --nnodes.")
    context = start(spec_device(spec))
    try:
        outcome = run_with_tqdm(run_spec(context, spec), desc=desc,
                                quiet=args.quiet or not context.is_main)
    finally:
        stop(context)
    return outcome if context.is_main else {}


def run_score(args: argparse.Namespace, choice, config) -> dict:
    """`atl score` over several processes; returns rank 0's outcome ({} on other ranks)."""
    from atl_desktop.dist import ranks_from_environment
    from atl_desktop.scale.launch import launch
    from atl_desktop.scale.worker import score_spec

    external = ranks_from_environment() is not None
    spec = score_spec(args.project, model=asdict(choice), scoring=config.to_json(), source=True,
                      run_id=None if external else uuid.uuid4().hex, handback=False)
    if external:
        return _in_place(args, spec, "scoring")
    options = _launch_options(args)
    if not options.single_node:
        return run_with_tqdm(launch(spec, options), desc="scoring", quiet=args.quiet)
    with Project.open(args.project) as project:  # nobody else changes the project meanwhile
        return run_with_tqdm(launch(spec, options, project), desc="scoring", quiet=args.quiet)


def run_train(args: argparse.Namespace, make_config: Callable) -> dict:
    """`atl train` over several processes; `make_config(project)` gives the TrainConfig."""
    from atl_desktop.dist import ranks_from_environment
    from atl_desktop.scale.launch import launch
    from atl_desktop.scale.worker import train_spec

    def spec_for(project, handback: bool) -> dict:
        return train_spec(args.project, config=make_config(project).to_dict(),
                          from_scratch=args.from_scratch, run_id=uuid.uuid4().hex, handback=handback)

    if ranks_from_environment() is not None:
        with Project.open(args.project, readonly=True) as project:
            spec = spec_for(project, handback=False)
        return _in_place(args, spec, "train")
    options = _launch_options(args)
    if not options.single_node:
        with Project.open(args.project, readonly=True) as project:
            spec = spec_for(project, handback=False)
        return run_with_tqdm(launch(spec, options), desc="train", quiet=args.quiet)
    with Project.open(args.project) as project:
        return run_with_tqdm(launch(spec_for(project, handback=True), options, project),
                             desc="train", quiet=args.quiet)


# ---- pack and unpack ---------------------------------------------------------------------------


def _prefix_map(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        local, sep, remote = item.partition("=")
        if not sep or not local:
            raise ProjectError(f"--map-prefix wants LOCAL=REMOTE, got {item!r}")
        pairs.append((local, remote))
    return pairs


def cmd_pack(args: argparse.Namespace) -> int:
    from atl_desktop.scale.bundle import pack

    with Project.open(args.project, readonly=True) as project:
        job = pack(project, args.bundle, images=args.images, prefixes=_prefix_map(args.map_prefix))
        info = run_with_tqdm(job, desc="pack", quiet=args.quiet)
    print(f"Wrote {args.bundle}: {info['images']} images ({args.images}), "
          f"checkpoint {info['checkpoint'] or 'none'}, state {info['fingerprint'][:12]}. "
          f"On the cluster: atl train {args.bundle}/project.atl --nproc-per-node N, then "
          f"atl unpack-results {args.project} {args.bundle}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from atl_desktop.scale.bundle import unpack_results

    with Project.open(args.project) as project:
        merged = unpack_results(project, args.bundle)
    if args.json:
        print(json.dumps(merged, indent=2))
    else:
        print(f"Merged from {args.bundle}: checkpoints {merged['checkpoints'] or 'none'}, "
              f"{len(merged['score_caches'])} score caches.")
    return 0
