"""`atl slide add|list|relocate|export`: whole slides as pools of patch references."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import DOMAINS, SPLITS, Project, ProjectError


def register(subparsers: argparse._SubParsersAction) -> None:
    slide = subparsers.add_parser(
        "slide", help="whole-slide images: add as patches, list, relocate, stain normalisation, export",
        description="Whole slides (SVS, pyramidal TIFF, NDPI/MRXS with OpenSlide, large PNG/JPEG) "
        "become pools of patches that are read from the slide when needed, never copied.",
    )
    verbs = slide.add_subparsers(title="actions", metavar="ACTION")

    add = verbs.add_parser("add", help="cut slides into tissue patches and add them to the pool",
                           description="Tile slides on a grid, keep patches that hold enough tissue "
                           "(Otsu threshold of saturation on a low-resolution image) and add them as "
                           "references.")
    add.add_argument("project", type=Path)
    add.add_argument("slides", type=Path, nargs="+")
    add.add_argument("--tile", type=int, default=224, help="patch side in pixels (default %(default)s)")
    res = add.add_mutually_exclusive_group()
    res.add_argument("--mpp", type=float, help="microns per patch pixel (the slide must state its own)")
    res.add_argument("--magnification", type=float, help="e.g. 20 for 20x (the slide must state its objective)")
    res.add_argument("--downsample", type=float, help="level-0 pixels per patch pixel")
    res.add_argument("--level", type=int, help="read a pyramid level as it is")
    add.add_argument("--overlap", type=int, default=0, help="pixels shared by neighbouring patches")
    add.add_argument("--min-tissue", type=float, default=0.5,
                     help="fraction of a patch that must be tissue, 0 keeps all (default %(default)s)")
    add.add_argument("--domain", choices=DOMAINS, default="target")
    add.add_argument("--split", choices=SPLITS, default="pool")
    add.add_argument("--quiet", action="store_true", help="no progress bar")
    add.set_defaults(func=cmd_add)

    listing = verbs.add_parser("list", help="slides, patch counts and missing files")
    listing.add_argument("project", type=Path)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    relocate = verbs.add_parser("relocate", help="point the project at a slide file's new place")
    relocate.add_argument("project", type=Path)
    relocate.add_argument("slide_id", type=int)
    relocate.add_argument("path", type=Path)
    relocate.set_defaults(func=cmd_relocate)

    export = verbs.add_parser("export", help="per-slide predictions and labels as CSV or QuPath GeoJSON",
                              description="One file per slide: every patch with its label, the current "
                              "model's prediction (from the latest scoring) and probabilities. GeoJSON "
                              "imports into QuPath (File > Import objects).")
    export.add_argument("project", type=Path)
    export.add_argument("out", type=Path, help="a folder")
    export.add_argument("--format", choices=("csv", "geojson"), required=True)
    export.add_argument("--slide", type=int, action="append", help="slide id (default: all)")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=cmd_export)
    stain = verbs.add_parser("stain", help="choose stain normalisation for training and scoring",
                             description="Fit a stain normalisation to a reference tile (an image id, "
                             "or an image file) and keep it in the project: the next training uses "
                             "it and records it in the checkpoint, and scoring with that checkpoint "
                             "normalises the same way. --method none turns it off.")
    stain.add_argument("project", type=Path)
    stain.add_argument("--method", choices=("none", "reinhard", "macenko", "vahadane"), required=True)
    stain.add_argument("--reference", help="image id or image file of a well-stained tile")
    stain.add_argument("--preview", type=Path, help="write a PNG: sample patches before (top) and after")
    stain.add_argument("--samples", type=int, default=6, help="patches in the preview")
    stain.set_defaults(func=cmd_stain)
    slide.set_defaults(func=lambda args: slide.print_help() or 2)


def cmd_add(args: argparse.Namespace) -> int:
    from atl_desktop.data.tiling import TilingParams, add_slide

    params = TilingParams(patch=args.tile, mpp=args.mpp, magnification=args.magnification,
                          downsample=args.downsample, level=args.level, overlap=args.overlap,
                          min_tissue=args.min_tissue)
    with Project.open(args.project) as project:
        for path in args.slides:
            job = add_slide(project, path, params, domain=args.domain, split=args.split)
            report = run_with_tqdm(job, desc=path.name, quiet=args.quiet)
            print(report.summary())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with Project.open(args.project, readonly=True) as project:
        counts = project.patch_counts()
        status = project.check_slides()
        rows = []
        for s in project.slides():
            state = ("missing" if s.id in status["missing"]
                     else "changed" if s.id in status["changed"] else "ok")
            rows.append({"id": s.id, "name": s.name, "path": str(project.slide_path(s)),
                         "width": s.width, "height": s.height, "levels": len(s.levels), "mpp": s.mpp,
                         "objective": s.objective, "backend": s.backend,
                         "patches": counts.get(s.id, 0), "file": state, "tiling": s.tiling})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("No slides; add some with `atl slide add`.")
    for r in rows:
        mpp = f", {r['mpp']:.3g} µm/px" if r["mpp"] else ""
        note = "" if r["file"] == "ok" else f"  [{r['file'].upper()}: {r['path']}]"
        print(f"{r['id']:>4}  {r['name']}  {r['width']} x {r['height']}{mpp}, "
              f"{r['patches']} patches{note}")
    return 0


def cmd_relocate(args: argparse.Namespace) -> int:
    with Project.open(args.project) as project:
        project.slide(args.slide_id)
        project.relocate_slide(args.slide_id, args.path)
        print(f"Slide {args.slide_id} now reads from {args.path}.")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from atl_desktop.active.predictions import latest_predictions
    from atl_desktop.data.slide_export import export_slides

    with Project.open(args.project, readonly=True) as project:
        ids = args.slide or [s.id for s in project.slides()]
        if not ids:
            raise ProjectError(f"{project.path.name} has no slides.")
        patch_ids = [p.image_id for i in ids for p in project.patches(i)]
        predictions = latest_predictions(project, patch_ids)
        written = export_slides(project, ids, args.out, args.format, predictions, args.overwrite)
    scored = int(predictions.scored.sum())
    print(f"Wrote {len(written)} {args.format} file(s) to {args.out} "
          f"({len(patch_ids)} patches, {scored} with predictions).")
    return 0


def cmd_stain(args: argparse.Namespace) -> int:
    from atl_desktop.data.decode import load_image
    from atl_desktop.data.stain import StainConfig, fit_stain
    from atl_desktop.store.keys import STAIN_SETTING

    with Project.open(args.project) as project:
        if args.method == "none":
            project.set_setting(STAIN_SETTING, None)
            print("Stain normalisation is off for the next training.")
            return 0
        if not args.reference:
            raise ProjectError("Give --reference: the image id or file of a well-stained tile.")
        if args.reference.isdigit():
            reference = load_image(project.image_path(project.image(int(args.reference))))
            name = f"image {args.reference}"
        else:
            reference, name = load_image(args.reference), str(Path(args.reference).absolute())
        try:
            config = fit_stain(args.method, reference, name=name)
        except ValueError as error:
            raise ProjectError(f"Cannot fit {args.method} to {name}: {error}") from None
        project.set_setting(STAIN_SETTING, config.to_json())
        if args.preview:
            write_preview(project, StainConfig.from_json(config.to_json()), args.preview, args.samples)
    print(f"{args.method} normalisation fitted to {name}; the next training uses it"
          + (f"; preview in {args.preview}." if args.preview else "."))
    return 0


def write_preview(project: Project, config, out: Path, samples: int) -> None:
    """Evenly spaced target pool images, as they are (top row) and normalised (bottom row)."""
    import numpy as np
    from PIL import Image

    from atl_desktop.data.decode import load_image
    from atl_desktop.data.stain import normalise_stain

    ids = project.image_ids(domain="target", split="pool")
    chosen = [ids[int(k)] for k in np.linspace(0, len(ids) - 1, min(samples, len(ids)))] if ids else []
    side = 128
    sheet = Image.new("RGB", (max(1, len(chosen)) * side, 2 * side), "white")
    for k, image_id in enumerate(chosen):
        img = load_image(project.image_path(project.image(image_id))).convert("RGB").resize((side, side))
        sheet.paste(img, (k * side, 0))
        sheet.paste(Image.fromarray(normalise_stain(img, config)), (k * side, side))
    sheet.save(out)
