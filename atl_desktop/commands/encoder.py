"""`atl pretrain`, `atl encoder`, `atl similar`: the encoder of the embedding-first loop and its space."""

from __future__ import annotations

import argparse
from pathlib import Path

from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import Project


def register(subparsers: argparse._SubParsersAction) -> None:
    pretrain = subparsers.add_parser(
        "pretrain", help="learn an encoder from the project's own images (self-supervised)",
        description="SimCLR (Chen et al. 2020) on the target pool's images, labelled or not (never the "
                    "test split): no pretrained weights and no labels needed. The encoder becomes the "
                    "current checkpoint; queries then fit a light head on its embeddings after every "
                    "label, and `atl train` fine-tunes from it.")
    pretrain.add_argument("project", type=Path)
    pretrain.add_argument("--backbone", default="resnet18", help="architecture of the encoder")
    pretrain.add_argument("--image-size", type=int, default=64, help="images are resized to this (pixels)")
    pretrain.add_argument("--steps", type=int, default=300, help="optimiser steps")
    pretrain.add_argument("--batch-size", type=int, default=128, help="images per step (two views each)")
    pretrain.add_argument("--lr", type=float, default=1e-3)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    pretrain.add_argument("--quiet", action="store_true", help="no progress bar")
    pretrain.set_defaults(func=cmd_pretrain)

    encoder = subparsers.add_parser(
        "encoder", help="show or set the encoder used before any checkpoint exists",
        description="Before the project has a checkpoint, queries embed images with this encoder: a "
                    "torchvision backbone with local weights, a foundation model from a file or folder "
                    "you have (dinov2_vits14, dinov2_vitb14, uni_vitl16, phikon_vitb16), or "
                    "untrained:resnet18 (no weights; the default). Nothing is downloaded.")
    encoder.add_argument("project", type=Path)
    encoder.add_argument("name", nargs="?", help="encoder name; omit to show the current one")
    encoder.add_argument("--weights", help="imagenet, or the weights file or folder")
    encoder.add_argument("--input-size", type=int, help="torchvision backbones: image size in pixels")
    encoder.set_defaults(func=cmd_encoder)

    similar = subparsers.add_parser(
        "similar", help="more like this: unlabelled images nearest to one image",
        description="The unlabelled target pool images nearest to image ID in the embedding space of the "
                    "model a query would use (cosine; exact up to 100,000 images, LSH above). Handy to "
                    "find more of a rare class from one example.")
    similar.add_argument("project", type=Path)
    similar.add_argument("image", type=int, metavar="ID", help="the example image's id")
    similar.add_argument("--k", type=int, default=20, help="how many images")
    similar.add_argument("--json", action="store_true", help="print JSON")
    similar.add_argument("--quiet", action="store_true", help="no progress bar")
    similar.set_defaults(func=cmd_similar)

    check = subparsers.add_parser(
        "check-labels", help="possible label errors among the labels given",
        description="Confident learning (Northcutt et al., JAIR 2021) on out-of-fold predictions of a "
                    "head cross-validated on the cached embeddings: labelled images whose confident "
                    "class differs from their label, most suspicious first.")
    check.add_argument("project", type=Path)
    check.add_argument("--folds", type=int, default=5)
    check.add_argument("--top", type=int, default=50, help="show at most this many")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_check_labels)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from atl_desktop.transfer.selfsup import SelfSupConfig, pretrain_project

    config = SelfSupConfig(backbone=args.backbone, image_size=args.image_size, steps=args.steps,
                           batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device)
    with Project.open(args.project) as project:
        checkpoint_id = run_with_tqdm(pretrain_project(project, config), desc="pretrain", quiet=args.quiet)
        loss = project.checkpoint(checkpoint_id).metrics.get("loss")
    print(f"Encoder trained ({args.steps} steps, final loss {loss:.3f}): checkpoint {checkpoint_id}, now current.")
    return 0


def cmd_encoder(args: argparse.Namespace) -> int:
    from atl_desktop.loop.session import cold_start_encoder, set_encoder_job
    from atl_desktop.models.encoders import EncoderChoice

    if args.name is None:
        with Project.open(args.project, readonly=True) as project:
            print(f"Cold-start encoder: {cold_start_encoder(project).describe()}")
        return 0
    choice = EncoderChoice(args.name, args.weights, input_size=args.input_size)
    with Project.open(args.project) as project:  # fails in one line when the weights are missing or do not fit
        run_with_tqdm(set_encoder_job(project, choice), desc="encoder", quiet=True)
    print(f"Cold-start encoder set to {choice.describe()}.")
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    import json

    from atl_desktop.loop.session import similar_job

    with Project.open(args.project) as project:
        found = run_with_tqdm(similar_job(project, args.image, k=args.k), desc="similar", quiet=args.quiet)
        paths = [str(project.image_path(project.image(f.image_id))) for f in found]
    if args.json:
        print(json.dumps([{"id": f.image_id, "path": p, "similarity": f.similarity}
                          for f, p in zip(found, paths, strict=True)], indent=2))
    else:
        print(f"{len(found)} unlabelled images like image {args.image}, most similar first:")
        for f, p in zip(found, paths, strict=True):
            print(f"  {f.image_id}\t{p}\tcosine {f.similarity:.3f}")
    return 0


def cmd_check_labels(args: argparse.Namespace) -> int:
    import json

    from atl_desktop.loop.session import check_labels_job

    with Project.open(args.project) as project:
        suspects = run_with_tqdm(check_labels_job(project, folds=args.folds), desc="check-labels",
                                 quiet=args.quiet)
        names = {c.id: c.name for c in project.classes()}
        rows = [{"id": s.image_id, "path": str(project.image_path(project.image(s.image_id))),
                 "label": names[s.given], "likely": names[s.likely], "margin": s.margin}
                for s in suspects[: args.top]]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{len(suspects)} labels look wrong (showing {len(rows)}), most suspicious first:")
    for r in rows:
        print(f"  {r['id']}\t{r['path']}\tlabelled {r['label']}, looks like {r['likely']} "
              f"(by {r['margin']:.2f})")
    return 0
