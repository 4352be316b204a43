"""`atl round query|train|status`: the active-learning round from the command line.

query chooses the images to label and opens a round; the expert labels them
(`atl label`, or the window); train proposes pseudo-labels (optional), fine-tunes,
evaluates and closes the round. A round stopped anywhere resumes where it was.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atl_desktop.commands.active import add_query_arguments, run_query
from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import Project, ProjectError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "round", help="run an active-learning round: query, train, discard, status",
        description="An active-learning round, step by step: `atl round query` chooses images to label, "
                    "you label them, `atl round train` (or `atl train`) fine-tunes and records the round. "
                    "One round is open at a time: a query refuses until it is trained or discarded.")
    steps = parser.add_subparsers(title="steps", metavar="STEP", required=True)

    query = steps.add_parser("query", help="choose the images to label and open a round (as `atl query`)")
    add_query_arguments(query)
    query.set_defaults(func=cmd_query)

    train = steps.add_parser("train", help="pseudo-label (optional), fine-tune, evaluate, close the round")
    train.add_argument("project", type=Path)
    train.add_argument("--pseudo", action="store_true", help="CEAL: add confident pseudo-labels for this fine-tune")
    train.add_argument("--delta0", type=float, help="CEAL entropy threshold at round 0 (default: the project's)")
    train.add_argument("--decay", type=float, help="CEAL threshold decay per round")
    train.add_argument("--oracle", action="store_true",
                       help="label the round's images with the hidden ground truth first (simulations)")
    train.add_argument("--method", help="transfer method (default: the project's setting)")
    train.add_argument("--epochs", type=int, help="epochs (default: the project's setting)")
    _common(train)
    train.set_defaults(func=cmd_train)

    discard = steps.add_parser("discard", help="close the open round without training (its labels stay)")
    discard.add_argument("project", type=Path)
    discard.set_defaults(func=cmd_discard)

    status = steps.add_parser("status", help="the open round and the finished ones")
    status.add_argument("project", type=Path)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: CUDA if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print JSON")


def cmd_query(args: argparse.Namespace) -> int:
    return run_query(args, "atl round train")


def cmd_train(args: argparse.Namespace) -> int:
    from atl_desktop.active.pseudo import PseudoLabelConfig
    from atl_desktop.loop.rounds import open_round
    from atl_desktop.loop.session import finish_round_job, project_train_config
    from atl_desktop.store.keys import PSEUDO_SETTING

    with Project.open(args.project) as project:
        current = open_round(project)
        if current is None:
            raise ProjectError(f"No open round: start one with `atl round query {args.project}`.")
        pseudo = None
        if args.pseudo:
            saved = dict(project.get_setting(PSEUDO_SETTING, {}))
            saved.update({k: v for k, v in (("delta0", args.delta0), ("decay", args.decay)) if v is not None})
            pseudo = PseudoLabelConfig(**saved)
        overrides = {k: v for k, v in (("method", args.method), ("epochs", args.epochs)) if v is not None}
        try:
            config = project_train_config(project, **overrides)
        except ValueError as error:
            raise ProjectError(str(error)) from None
        job = finish_round_job(project, pseudo=pseudo, config=config, oracle=args.oracle, device=args.device)
        summary = run_with_tqdm(job, desc="round", quiet=args.quiet)
    if args.json:
        print(json.dumps({"round": summary.round_id, "checkpoint": summary.checkpoint_id,
                          "metrics": summary.metrics}, indent=2))
    else:
        print(f"Round {summary.round_id} finished: checkpoint {summary.checkpoint_id}. "
              + round_summary_line(summary.metrics))
    return 0


def round_summary_line(metrics: dict) -> str:
    parts = [f"{metrics.get('labels', 0)} labels"]
    if metrics.get("pseudo_used"):
        parts.append(f"{metrics['pseudo_used']} pseudo-labels")
    if "test" in metrics:
        parts.append(f"test accuracy {metrics['test']['accuracy']:.4f}")
        parts.append(f"ECE {metrics['test']['calibration']['ece']:.4f}")
    stop = metrics.get("stop") or {}
    if stop.get("kappa") is not None:
        parts.append(f"agreement with the last round kappa {stop['kappa']:.4f}")
    if stop.get("stop"):
        parts.append("predictions have stabilised: more labels are unlikely to pay")
    return "; ".join(parts) + "."


def cmd_discard(args: argparse.Namespace) -> int:
    from atl_desktop.loop.rounds import discard_round

    with Project.open(args.project) as project:
        ids = discard_round(project)
    if not ids:
        raise ProjectError("No open round to discard.")
    print(f"Round {', '.join(map(str, ids))} discarded (labels given stay); `atl query` starts the next.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from atl_desktop.loop.rounds import DISCARDED, chosen_images, open_round, round_state

    with Project.open(args.project, readonly=True) as project:
        current = open_round(project)
        status: dict = {"open": None, "finished": []}
        if current is not None:
            chosen = chosen_images(project, current.id)
            state = round_state(project, current.id)
            status["open"] = {
                "round": current.id, "strategy": current.strategy, "step": state.step,
                "chosen": len(chosen), "labelled": sum(project.label_of(i) is not None for i in chosen),
                "pending_pseudo": len([p for p in project.pseudo_labels() if p.round_id == current.id]),
            }
        # Projects from before the one-open-round rule may hold older unfinished rounds.
        status["stale"] = [r.id for r in project.rounds() if r.finished is None
                           and (current is None or r.id != current.id)]
        for r in project.rounds():
            if r.finished is not None:
                discarded = bool(r.metrics.get(DISCARDED))
                status["finished"].append({"round": r.id, "strategy": r.strategy, "checkpoint": r.checkpoint_id,
                                           "discarded": discarded,
                                           "summary": "discarded." if discarded else round_summary_line(r.metrics)})
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for r in status["finished"]:
        print(f"round {r['round']} ({r['strategy']}): {r['summary']}")
    if status["open"] is None:
        print("No open round: start one with `atl round query`.")
    else:
        o = status["open"]
        print(f"round {o['round']} ({o['strategy']}) open, step {o['step']}: {o['labelled']} of {o['chosen']} "
              f"chosen images labelled, {o['pending_pseudo']} pseudo-labels pending; `atl train` (or "
              "`atl round train`) finishes it, `atl round discard` drops it.")
    if status["stale"]:
        print(f"also unfinished, from before one round at a time: round {', '.join(map(str, status['stale']))} "
              "(`atl round discard` closes them all).")
    return 0
