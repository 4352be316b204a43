"""`atl report`: a self-contained HTML report of a project."""

from __future__ import annotations

import argparse
from pathlib import Path

from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import Project


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write one self-contained HTML report of a project",
        description="Write one HTML file (figures inline) for a lab notebook or an ethics board: classes "
                    "and labels by annotator, the learning curve with the random baseline where known, "
                    "calibration, confusion matrix, methods and strategies with citations, seeds, package "
                    "versions, and the sha256 of every image and checkpoint. Read-only: works while the "
                    "project is open elsewhere.")
    parser.add_argument("project", type=Path)
    parser.add_argument("--out", type=Path, help="the HTML file (default: NAME-report.html beside the project)")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="only what is recorded: do not evaluate a checkpoint never assessed on the test split")
    parser.add_argument("--device", default="auto", help="cpu, cuda ... for the evaluation (default: CUDA if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_report)


def default_report_path(project: Path) -> Path:
    return project.with_name(f"{project.stem}-report.html")


def cmd_report(args: argparse.Namespace) -> int:
    from atl_desktop.report import report_job

    out = args.out or default_report_path(args.project)
    with Project.open(args.project, readonly=True) as project:
        job = report_job(project, out, evaluate=not args.no_evaluate, device=args.device)
        path = run_with_tqdm(job, desc="report", quiet=args.quiet)
    print(f"Wrote {path}")
    return 0
