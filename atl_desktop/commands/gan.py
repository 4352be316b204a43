"""`atl gan train|list`: the GAN that GAAL and ASAL sample from."""

from __future__ import annotations

import argparse
from pathlib import Path

from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import Project, ProjectError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gan", help="train the GAN for GAAL and ASAL; list trained ones",
        description="A DCGAN trained on the unlabelled target pool, for the gaal and asal strategies "
                    "(a query trains one first when the project has none).")
    steps = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    train = steps.add_parser("train", help="train a GAN on the unlabelled pool and keep it in the project")
    train.add_argument("project", type=Path)
    train.add_argument("--steps", type=int, help="optimiser steps (default: the project's setting, else 2000)")
    train.add_argument("--image-size", type=int, help="16, 24, 28, 32, 48 or 64 (default: from the pool)")
    train.add_argument("--channels", type=int, choices=(1, 3), help="default: 1 when every pool image is grey")
    train.add_argument("--width", type=int, help="channels of the finest layer (default 32)")
    train.add_argument("--latent-dim", type=int, help="size of the latent code (default 100)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", default=None, help="cpu, cuda ... (default: CUDA if present)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
    listing = steps.add_parser("list", help="the project's GANs")
    listing.add_argument("project", type=Path)
    listing.set_defaults(func=cmd_list)


def cmd_train(args: argparse.Namespace) -> int:
    from atl_desktop.loop.generative import default_gan_config, gan_train_job

    overrides = {k: v for k, v in (("steps", args.steps), ("image_size", args.image_size),
                                   ("channels", args.channels), ("width", args.width),
                                   ("latent_dim", args.latent_dim), ("batch_size", args.batch_size),
                                   ("seed", args.seed), ("device", args.device)) if v is not None}
    with Project.open(args.project) as project:
        try:
            config = default_gan_config(project, **overrides)
        except ValueError as error:
            raise ProjectError(str(error)) from None
        generator_id = run_with_tqdm(gan_train_job(project, config), desc="GAN", quiet=args.quiet)
        record = project.generator(generator_id)
        previews = record.metrics.get("previews", [])
        print(f"GAN {generator_id} trained on {record.metrics['images']} images ({config.steps} steps, "
              f"{config.image_size} px, {config.channels} channel(s)); last samples: "
              f"{project.data_dir / previews[-1] if previews else 'none'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with Project.open(args.project, readonly=True) as project:
        records = project.generators()
        if not records:
            print("No GAN yet: `atl gan train` makes one (a gaal or asal query does too).")
        for r in records:
            c, m = r.config, r.metrics
            print(f"{r.id}\t{r.architecture}\t{c.get('image_size')} px, latent {c.get('latent_dim')}, "
                  f"{m.get('steps')} steps on {m.get('images')} images\t{r.file}")
    return 0
