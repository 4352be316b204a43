"""`atl audit show|release|set`: the audit sample, an accuracy estimate without a test set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import Project, ProjectError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit", help="the audit sample: accuracy with 95 %% intervals, release, settings",
        description="A share of every queried batch (default 1 in 10) is drawn at random from the unlabelled "
                    "pool and kept out of training: its labels estimate the model's accuracy with 95 % "
                    "intervals. `show` prints the estimate, `release` lets the audit images train the model, "
                    "`set` changes the share and the stopping rule.")
    steps = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    show = steps.add_parser("show", help="accuracy, balanced accuracy and per-class recall on the audit images")
    show.add_argument("project", type=Path)
    show.add_argument("--head", default="auto", choices=("auto", "model", "logreg", "prototype"),
                      help="where predictions come from, as for `atl query` (default: auto)")
    show.add_argument("--json", action="store_true")
    show.add_argument("--quiet", action="store_true", help="no progress bar")
    show.set_defaults(func=cmd_show)

    release = steps.add_parser("release", help="let the held-out audit images train the model from now on")
    release.add_argument("project", type=Path)
    release.set_defaults(func=cmd_release)

    settings = steps.add_parser("set", help="the audit share and the stopping rule's width and target")
    settings.add_argument("project", type=Path)
    settings.add_argument("--share", type=float, help="share of each batch drawn for the audit (0-1; default 0.1)")
    settings.add_argument("--width", type=float, help="stop once the audit interval is at most this wide (default 0.10)")
    settings.add_argument("--target", help="or once its lower bound reaches this balanced accuracy (0-1, or 'none')")
    settings.set_defaults(func=cmd_set)


def cmd_show(args: argparse.Namespace) -> int:
    from atl_desktop.loop.session import audit_job

    with Project.open(args.project, readonly=True) as project:
        result = run_with_tqdm(audit_job(project, head=args.head), desc="audit", quiet=args.quiet)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_estimate(result.estimate))
    return 0


def format_estimate(estimate) -> str:
    lines = [estimate.summary() + "."]
    for c in estimate.per_class:
        recall = "no audit label yet" if c.recall is None else f"{c.recall:.1%} ({c.correct} of {c.count})"
        lines.append(f"  {c.name}: {recall}")
    return "\n".join(lines)


def cmd_release(args: argparse.Namespace) -> int:
    with Project.open(args.project) as project:
        released = project.release_audit()
    if not released:
        print("No audit images are held out; nothing to release.")
    else:
        print(f"Released {len(released)} audit images: they train the model from the next training on, "
              "and no longer count in the audit estimate.")
    return 0


def _fraction(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ProjectError(f"The {what} must be between 0 and 1, not {value}.")
    return value


def cmd_set(args: argparse.Namespace) -> int:
    from atl_desktop.store.keys import (
        AUDIT_SHARE_SETTING,
        DEFAULT_AUDIT_SHARE,
        DEFAULT_STOP_WIDTH,
        STOP_RULE_SETTING,
    )

    with Project.open(args.project) as project:
        if args.share is not None:
            project.set_setting(AUDIT_SHARE_SETTING, _fraction(args.share, "audit share"))
        rule = dict(project.get_setting(STOP_RULE_SETTING, {}) or {})
        if args.width is not None:
            rule["width"] = _fraction(args.width, "width")
        if args.target is not None:
            rule["target"] = None if args.target.lower() == "none" else _fraction(float(args.target), "target")
        project.set_setting(STOP_RULE_SETTING, rule)
        share = project.get_setting(AUDIT_SHARE_SETTING, DEFAULT_AUDIT_SHARE)
        target = rule.get("target")
        print(f"Audit share {share:.0%}; stop once predictions are stable and the audit interval is at most "
              f"{rule.get('width', DEFAULT_STOP_WIDTH):.0%} wide"
              + (f" or its lower bound reaches {target:.0%}." if target is not None else "."))
    return 0
