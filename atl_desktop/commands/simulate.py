"""`atl simulate`: replay active learning with known labels and compare strategies with random."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import ProjectError
from atl_desktop.store.keys import SCHEDULES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate", help="compare strategies with random sampling on labelled data",
        description="Replay the active-learning loop on a labelled dataset, the known labels playing the "
                    "expert, and write learning curves (JSON, CSV, PNG): test accuracy against labels per "
                    "strategy, mean and spread over seeds, random sampling always included. TARGET and "
                    "SOURCE are .npz files (x_train, y_train, x_test, y_test, classes; or x, y split 70/30) "
                    "or class-per-folder trees (with train/ and test/ subfolders, or split 70/30).")
    parser.add_argument("target", type=Path)
    parser.add_argument("--source", type=Path, help="labelled source data: the starting model is trained on it")
    parser.add_argument("--strategies", default="random,entropy", help="comma-separated (see `atl strategies`)")
    parser.add_argument("--budget", type=int, default=500, help="labels in all, the initial ones included")
    parser.add_argument("--rounds", type=int, help="this many query rounds instead of a label budget")
    parser.add_argument("--batch", type=int, default=20, help="labels per round")
    parser.add_argument("--initial", type=int, default=20, help="random initial labels (0: cold start)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--pseudo", action="store_true", help="add arms with CEAL pseudo-labels")
    parser.add_argument("--method", default="finetune", help="transfer method of each fine-tune")
    parser.add_argument("--adapt-steps", type=int, default=0, metavar="N",
                        help="steps of the first fine-tune, before any query: with a domain-adaptation "
                             "--method, the model adapts to the unlabelled pool first (default: as every round)")
    parser.add_argument("--backbone", default="smallcnn")
    parser.add_argument("--image-size", type=int, default=28, help="folder images are resized to this")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per round's fine-tune")
    parser.add_argument("--source-epochs", type=int, default=5)
    parser.add_argument("--pool-size", type=int, help="random subsample of the pool, for speed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gan-steps", type=int, default=2000, help="gaal/asal: GAN training steps")
    parser.add_argument("--gan-space", default="pca", choices=("pca", "discriminator", "autoencoder"),
                        help="asal: the feature space in which pool images are matched")
    parser.add_argument("--synthetic-oracle", default="classifier", choices=("classifier", "nearest"),
                        help="gaal: who labels synthetic images in a simulation (see README)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of each fine-tune")
    parser.add_argument("--max-steps", type=int, help="cap on each round's optimiser steps")
    parser.add_argument("--batch-size", type=int, help="images per optimiser step (default 32)")
    parser.add_argument("--min-steps", type=int, help="at least this many optimiser steps a round")
    parser.add_argument("--schedule", choices=SCHEDULES,
                        help="learning-rate schedule of each fine-tune (default constant)")
    parser.add_argument("--augment", choices=("none", "dihedral"),
                        help="dihedral: random flips and 90-degree rotations of the labelled images (default none)")
    parser.add_argument("--input-size", type=int, help="the model's input size (default: the backbone's)")
    parser.add_argument("--project-recipe", action="store_true",
                        help="train each round as a new project does: --min-steps 400 --batch-size 64 "
                             "--schedule onecycle --augment dihedral (flags given as well win)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="strategy parameter for every arm, VALUE in JSON (see `atl query --param`)")
    parser.add_argument("--pseudo-max-per-class", type=int, help="CEAL: at most this many per class and round")
    parser.add_argument("--head", choices=("logreg", "prototype"),
                        help="the embedding-first loop: refit this head on frozen embeddings after every "
                             "batch instead of fine-tuning")
    parser.add_argument("--head-option", action="append", default=[], metavar="KEY=VALUE",
                        help="head option, e.g. l2=0.01 (logreg) or temperature=0.1 (prototype)")
    parser.add_argument("--encoder", default="selfsup",
                        help="with --head: selfsup (SimCLR on the pool's images, no labels) or an encoder "
                             "name (a torchvision backbone, a foundation model, untrained:resnet18)")
    parser.add_argument("--encoder-weights", help="weights of --encoder: imagenet, or a file or folder")
    parser.add_argument("--selfsup-backbone", default="resnet18")
    parser.add_argument("--selfsup-steps", type=int, default=300)
    parser.add_argument("--selfsup-batch", type=int, default=128)
    parser.add_argument("--metric", default="auto", choices=("auto", "accuracy", "balanced_accuracy"),
                        help="the curves' metric; auto: balanced_accuracy when the test split's classes "
                             "are imbalanced, else accuracy")
    parser.add_argument("--out", type=Path, required=True, help="folder for simulation.json/.csv/.png")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    from atl_desktop.commands.active import parse_params
    from atl_desktop.simulate import (
        BASELINE,
        SimulationConfig,
        check_source,
        default_arms,
        load_simulation_data,
        simulate_job,
        write_outputs,
    )
    from atl_desktop.simulate_gan import GanSimConfig
    from atl_desktop.transfer.methods import METHODS

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.method not in METHODS:
        raise ProjectError(f"Unknown method {args.method!r}; choose one of {', '.join(METHODS)}.")
    if args.seeds < 1:
        raise ProjectError("--seeds must be at least 1.")
    params, head_options = parse_params(args.param), parse_params(args.head_option)
    arms = default_arms(strategies, method=args.method, adapt_steps=args.adapt_steps, params=params,
                        head=args.head, head_options=head_options)
    if args.pseudo:
        arms += default_arms(strategies, pseudo=True, method=args.method, adapt_steps=args.adapt_steps,
                             params=params)
    check_source(arms, args.source is not None)  # before the data is even read
    config = SimulationConfig(
        budget=args.budget, batch=args.batch, initial=args.initial, rounds=args.rounds,
        seeds=tuple(range(args.seeds)), backbone=args.backbone, epochs=args.epochs,
        source_epochs=args.source_epochs, pool_size=args.pool_size, device=args.device, lr=args.lr,
        max_steps=args.max_steps, pseudo_max_per_class=args.pseudo_max_per_class,
        input_size=args.input_size, **_recipe(args), encoder=args.encoder, encoder_weights=args.encoder_weights,
        selfsup={"backbone": args.selfsup_backbone, "steps": args.selfsup_steps,
                 "batch_size": args.selfsup_batch})
    data = load_simulation_data(args.target, args.source, image_size=args.image_size)
    config = dataclasses.replace(config, metric=_metric(args.metric, data.y_test))
    gan = GanSimConfig(steps=args.gan_steps, space=args.gan_space, oracle=args.synthetic_oracle)
    summary = run_with_tqdm(simulate_job(data, arms, config, args.out, gan=gan), desc="simulate", quiet=args.quiet)
    metric = config.metric.replace("_", " ")
    paths = write_outputs(summary, args.out, title=f"{args.target.name}: test {metric} against labels")
    print(f"Random reaches {metric} {summary['random_final_accuracy']:.4f} with {summary['random_final_labels']} labels.")
    for name, arm in summary["arms"].items():
        need = arm["labels_to_match_random"]
        words = "never" if need is None else f"{need} labels"
        extra = "" if name == BASELINE else f", matches random with {words}"
        print(f"  {name:24} final {arm['final_accuracy']:.4f}, area {arm['aulc']:.4f}{extra}")
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _metric(choice: str, y_test) -> str:
    """The curves' metric: balanced accuracy for an imbalanced test split when asked for "auto"
    (plain accuracy then mostly counts the largest class)."""
    import numpy as np

    from atl_desktop.transfer.train import is_imbalanced

    if choice != "auto":
        return choice
    return "balanced_accuracy" if is_imbalanced(np.bincount(np.asarray(y_test, dtype=np.int64))) else "accuracy"


def _recipe(args: argparse.Namespace) -> dict:
    """The fine-tune's steps, batch size, schedule and augmentation: the flags, over a new
    project's defaults with --project-recipe, else over the per-epoch defaults."""
    from atl_desktop.store.keys import NEW_PROJECT_TRAINING

    given = {"min_steps": args.min_steps, "batch_size": args.batch_size, "schedule": args.schedule,
             "augment": args.augment}
    base = {"min_steps": None, "batch_size": 32, "schedule": "constant", "augment": "none"}
    if args.project_recipe:  # simulate has the augmentation's geometric part
        base = {**{k: NEW_PROJECT_TRAINING[k] for k in base}, "augment": "dihedral"}
    return {k: base[k] if value is None else value for k, value in given.items()}
