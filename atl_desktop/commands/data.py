"""`atl import` and `atl export`: images and labels in and out of a project."""

from __future__ import annotations

import argparse
from pathlib import Path

from atl_desktop.data.decode import DEFAULT_MAX_SIDE
from atl_desktop.data.export import (
    EXPORT_FORMATS,
    export_csv,
    export_imagefolder,
    export_json,
    infer_format,
)
from atl_desktop.data.importers import FORMATS, LABEL_MODES, ImportOptions, import_source
from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import DOMAINS, SPLITS, Project, ProjectError

# Vendor whole-slide formats: never one image, always `atl slide add`.
WHOLE_SLIDE_SUFFIXES = frozenset({".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide"})


def register(subparsers: argparse._SubParsersAction) -> None:
    imp = subparsers.add_parser(
        "import", help="add images (folder, class folders, CSV, .npz)",
        description="Add images to a project. Files are referenced where they are unless --copy; "
        "bad files are skipped and listed; images already in the project are merged.",
    )
    imp.add_argument("project", type=Path)
    imp.add_argument("source", type=Path, help="a folder, a class-per-subfolder tree, a CSV of path,label, or an .npz; DICOM files are images too")
    imp.add_argument("--domain", choices=DOMAINS, default="target", help="source: labelled data of another domain; target: your images (default)")
    imp.add_argument("--split", choices=SPLITS, default=None, help="default: pool (for .npz: train->pool, val->val, test->test)")
    imp.add_argument("--format", choices=FORMATS, default=None, help="default: detected from the source")
    imp.add_argument("--labels", choices=LABEL_MODES, default="labels", help="labels: record them; truth: hidden ground truth for simulations; none: ignore them")
    imp.add_argument("--copy", action="store_true", help="copy the files into the project folder")
    imp.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="refuse images larger than this on a side (default %(default)s)")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=cmd_import)

    exp = subparsers.add_parser(
        "export", help="write labels as CSV, JSON or class folders, or the model as ONNX",
        description="Export the labelled images, or (OUT ending in .onnx) the current checkpoint as "
        "ONNX with a model card beside it (OUT.card.json, OUT.card.md). Read-only: works while "
        "the project is open elsewhere.",
    )
    exp.add_argument("project", type=Path)
    exp.add_argument("out", type=Path, help="a file (csv, json, onnx) or a folder (imagefolder)")
    exp.add_argument("--format", choices=(*EXPORT_FORMATS, "onnx"), default=None,
                     help="default: from OUT (.csv, .json, .onnx, or a folder for imagefolder)")
    exp.add_argument("--checkpoint", type=int, default=None, help="onnx: this checkpoint id (default: the latest)")
    exp.add_argument("--symlink", action="store_true", help="imagefolder: link to the images instead of copying them")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing file, or write into a non-empty folder")
    exp.add_argument("--quiet", action="store_true", help="no progress bar")
    exp.set_defaults(func=cmd_export)


def cmd_import(args: argparse.Namespace) -> int:
    options = ImportOptions(
        format=args.format, domain=args.domain, split=args.split, labels=args.labels,
        copy=args.copy, max_side=args.max_side,
    )
    if args.source.suffix.lower() in WHOLE_SLIDE_SUFFIXES:
        raise ProjectError(f"{args.source.name} is a whole slide: add it as patches with "
                           f"`atl slide add {args.project} {args.source} --tile 224`.")
    with Project.open(args.project) as project:
        report = run_with_tqdm(import_source(project, args.source, options), desc="import", quiet=args.quiet)
    print(report.summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    fmt = args.format or infer_format(args.out)
    with Project.open(args.project, readonly=True) as project:
        if fmt == "csv":
            report = export_csv(project, args.out, overwrite=args.overwrite)
        elif fmt == "json":
            report = export_json(project, args.out, overwrite=args.overwrite)
        elif fmt == "onnx":
            from atl_desktop.models.onnx_export import export_onnx  # torch: only when asked

            job = export_onnx(project, args.out, checkpoint_id=args.checkpoint, overwrite=args.overwrite)
            report = run_with_tqdm(job, desc="export", quiet=args.quiet)
        else:
            job = export_imagefolder(project, args.out, symlink=args.symlink, overwrite=args.overwrite)
            report = run_with_tqdm(job, desc="export", quiet=args.quiet)
    print(report.summary())
    return 0
