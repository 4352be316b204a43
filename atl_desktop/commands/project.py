"""`atl new`, `atl info`, `atl label`, `atl upgrade`: the project file itself."""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path

from atl_desktop.store import Project, ProjectError


def register(subparsers: argparse._SubParsersAction) -> None:
    new = subparsers.add_parser("new", help="create an empty project", description="Create an empty project file NAME.atl and its folder NAME.atl.d/.")
    new.add_argument("project", type=Path)
    new.add_argument("--classes", default="", help="comma-separated class names, in model order")
    new.set_defaults(func=cmd_new)

    info = subparsers.add_parser("info", help="counts, classes, rounds and missing files", description="Show what a project holds. Read-only: works while the project is open elsewhere.")
    info.add_argument("project", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument("--no-check", action="store_true", help="skip checking that image files still exist")
    info.set_defaults(func=cmd_info)

    label = subparsers.add_parser("label", help="set or clear labels (for scripting)", description="Set or clear the label of images given by id or path.")
    label.add_argument("project", type=Path)
    label.add_argument("images", nargs="+", help="image ids or paths")
    group = label.add_mutually_exclusive_group(required=True)
    group.add_argument("--set", dest="class_name", metavar="CLASS", help="class name to assign")
    group.add_argument("--clear", action="store_true", help="remove the label")
    label.add_argument("--new-class", action="store_true", help="create CLASS if the project has no such class")
    label.add_argument("--annotator", default=None,
                       help="who gives the label (recorded; default: the name the window uses)")
    label.set_defaults(func=cmd_label)

    upgrade = subparsers.add_parser("upgrade", help="upgrade an older project file", description="Apply the project-format migrations to an older project file.")
    upgrade.add_argument("project", type=Path)
    upgrade.set_defaults(func=cmd_upgrade)
    register_demo(subparsers)


def cmd_new(args: argparse.Namespace) -> int:
    from atl_desktop.store.keys import init_training_defaults

    with Project.create(args.project) as project:
        init_training_defaults(project)
        for name in filter(None, (n.strip() for n in args.classes.split(","))):
            project.add_class(name)
        print(f"Created {project.path} (large files go to {project.data_dir.name}/).")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    with Project.open(args.project) as project:
        print(f"{project.path.name} is up to date.")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from atl_desktop.active.audit import recorded_audit

    with Project.open(args.project, readonly=True) as project:
        counts = project.counts()
        files = {"missing": [], "changed": []} if args.no_check else project.check_files()
        latest = project.latest_checkpoint()
        summary = {
            "project": str(project.path),
            **counts,
            "classes": [
                {"name": c.name, "key": c.key, "colour": c.colour} for c in project.classes()
            ],
            "latest_checkpoint": None if latest is None else {
                "id": latest.id, "backbone": latest.backbone, "metrics": latest.metrics,
            },
            "missing_files": files["missing"],
            "changed_files": files["changed"],
            "audit_estimate": recorded_audit(project),  # as the newest round recorded it: no model loaded
        }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_info(summary))
    return 0


def format_info(s: dict) -> str:
    lines = [f"Project {s['project']}"]
    lines.append(f"  images: {s['total']} ({s['labelled']} labelled, {s['unlabelled']} unlabelled)")
    for key, n in sorted(s["images"].items()):
        lines.append(f"    {key}: {n}")
    lines.append(f"  classes: {len(s['classes'])}")
    for name, n in s["by_class"].items():
        lines.append(f"    {name}: {n}")
    if s["by_who"]:
        lines.append("  labelled by:")
        for who, n in sorted(s["by_who"].items()):
            lines.append(f"    {who}: {n}")
    if s["truth"]:
        lines.append(f"  hidden ground truth: {s['truth']} images")
    lines.append(f"  pending pseudo-labels: {s['pending_pseudo']}")
    lines.append(f"  rounds: {s['rounds']}, checkpoints: {s['checkpoints']}")
    if s["latest_checkpoint"]:
        ck = s["latest_checkpoint"]
        lines.append(f"  current checkpoint: #{ck['id']} ({ck['backbone']})")
    lines += format_audit(s["audit"], s.get("audit_estimate"))
    for kind in ("missing", "changed"):
        ids = s[f"{kind}_files"]
        if ids:
            shown = ", ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else "")
            lines.append(f"  WARNING: {len(ids)} image file(s) {kind}: ids {shown}")
    return "\n".join(lines)


def format_audit(counts: dict, recorded: dict | None) -> list[str]:
    lines = [f"  audit images: {counts['held_out']} held out of training ({counts['labelled']} labelled), "
             f"{counts['drawn'] - counts['held_out']} released"]
    if recorded is None:
        return lines
    estimate = recorded["estimate"]
    if estimate is not None:
        a, b = estimate["accuracy"], estimate["balanced_accuracy"]
        lines.append(f"    round {recorded['round']}'s model on {estimate['n']} audit labels: accuracy "
                     f"{a['estimate']:.1%} (95 % CI {a['lower']:.1%}–{a['upper']:.1%}), balanced accuracy "
                     f"{b['estimate']:.1%} ({b['lower']:.1%}–{b['upper']:.1%})")
    if recorded["rule"]:
        lines.append(f"    {recorded['rule']['reason']}")
    return lines


def _image_id(project: Project, ref: str) -> int:
    if ref.isdigit():
        project.image(int(ref))  # raises a clear error when absent
        return int(ref)
    image_id = project.image_id_for_path(ref)
    if image_id is None:
        raise ProjectError(f"No image {ref!r} in {project.path.name}.")
    return image_id


def _class_id(project: Project, name: str, create: bool) -> int:
    """The class called `name`; a new one only when asked, since a typo would make a class."""
    names = project.class_names()
    if name in names or create:
        return project.ensure_class(name)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ProjectError(f"No class {name!r} in {project.path.name}; {hint}"
                       "add --new-class to create it.")


def cmd_label(args: argparse.Namespace) -> int:
    from atl_desktop.loop.rounds import label_provenance
    from atl_desktop.userconfig import configured_annotator

    annotator = configured_annotator() if args.annotator is None else args.annotator
    with Project.open(args.project) as project:
        ids = [_image_id(project, ref) for ref in args.images]
        class_id = None if args.clear else _class_id(project, args.class_name, args.new_class)
        with project.transaction():
            for image_id in ids:
                # As the window records it: who, the open round, and what its query showed.
                project.set_label(image_id, class_id, annotator=annotator,
                                  **label_provenance(project, image_id))
        what = "cleared" if args.clear else f"set to {args.class_name!r}"
        print(f"Label {what} for {len(ids)} image(s).")
    return 0


def register_demo(subparsers: argparse._SubParsersAction) -> None:
    from atl_desktop.demo import DEFAULT_DEMO, DEMOS

    demo = subparsers.add_parser(
        "demo", help="copy a bundled demo project to your data folder",
        description="Copy a bundled demo project into your data folder (first use only) and print "
                    "its path. The bundled files are never changed.")
    demo.add_argument("name", nargs="?", default=DEFAULT_DEMO, choices=sorted(DEMOS))
    demo.add_argument("--reset", action="store_true", help="replace your copy with a fresh one")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from atl_desktop.demo import install_demo

    path = install_demo(args.name, reset=args.reset)
    print(path)
    return 0
