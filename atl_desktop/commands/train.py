"""`atl train` and `atl evaluate`: fine-tune and measure models, in a project or on loose data."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from atl_desktop.commands.lazy import LazyChoices
from atl_desktop.commands.scale import add_launch_options, distributed, run_train
from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import AUGMENTATIONS, SCHEDULES

SMALL_IMAGE_SIDE = 32  # images this small default to the small CNN
# Read from the registries (which import torch) only when an argument is checked.
METHOD_NAMES = LazyChoices("atl_desktop.transfer.methods", "METHODS")
BACKBONE_NAMES = LazyChoices("atl_desktop.models.registry", "available_backbones")
OPTIMIZER_NAMES = LazyChoices("atl_desktop.transfer.train", "OPTIMIZERS")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train or fine-tune the project's model",
        description="Train on a project's labels: source pre-training on labelled source images, "
        "then fine-tuning on labelled target images, continuing from the latest checkpoint unless "
        "--from-scratch. With --data, train on an .npz file or a class-per-folder tree instead "
        "and write the model to --out.")
    train.add_argument("project", type=Path, nargs="?", help="the .atl project")
    train.add_argument("--data", type=Path, help=".npz file or ImageFolder tree (instead of a project)")
    train.add_argument("--out", type=Path, help="model file to write with --data (.safetensors)")
    train.add_argument("--method", choices=METHOD_NAMES, metavar="METHOD",
                       help="transfer method (finetune unless the project says otherwise); `atl methods` lists them")
    train.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                       help="a hyper-parameter of the method (repeatable; VALUE as JSON, else text), "
                       "e.g. --method-option trade_off=0.5")
    train.add_argument("--backbone", choices=BACKBONE_NAMES, metavar="BACKBONE",
                       help="default: the latest checkpoint's, else smallcnn for tiny images, else resnet18; "
                       "`atl methods` lists them")
    train.add_argument("--weights", help="'imagenet' (from the local torch cache), 'none', or a weights "
                       "file; default: imagenet for torchvision backbones")
    # Unset options take the project's training settings (those the window's Training settings
    # edit; a new project has store.keys.NEW_PROJECT_TRAINING), else TrainConfig's defaults.
    train.add_argument("--epochs", type=int, help="(default 10)")
    train.add_argument("--min-steps", type=int, help="at least this many optimiser steps, however few the labels")
    train.add_argument("--batch-size", type=int, help="(default 32; a new project's: 64)")
    train.add_argument("--lr", type=float, help="(peak) learning rate (default 1e-3)")
    train.add_argument("--schedule", choices=SCHEDULES,
                       help="learning-rate schedule (default constant; a new project's: onecycle)")
    train.add_argument("--optimizer", choices=OPTIMIZER_NAMES, metavar="NAME", help="adamw (default) or sgd")
    train.add_argument("--freeze", type=int, metavar="K", help="keep the first K stages fixed (default 0)")
    train.add_argument("--lr-decay", type=float,
                       help="layer-wise learning-rate decay per stage towards the input (0 < d <= 1; default 1)")
    train.add_argument("--balanced", nargs="?", const="on", choices=("auto", "on", "off"),
                       help="class-balanced sampling of labelled images: auto (the default) turns it on "
                            "when the largest class has more than 1.5 times the images of the smallest")
    train.add_argument("--augment", choices=AUGMENTATIONS, metavar="NAME",
                       help="none (default), natural, histology (a new project's) or hed")
    train.add_argument("--patience", type=int, help="early-stopping patience in epochs (0: off; default 3)")
    train.add_argument("--input-size", type=int, help="override the backbone's input size")
    train.add_argument("--seed", type=int)
    train.add_argument("--from-scratch", action="store_true", help="ignore existing checkpoints")
    train.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, mps")
    train.add_argument("--num-workers", type=int)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    add_launch_options(train)
    train.set_defaults(func=cmd_train)

    methods = subparsers.add_parser("methods", help="list the transfer methods and backbones")
    methods.set_defaults(func=cmd_methods)

    evaluate = subparsers.add_parser(
        "evaluate", help="accuracy, per-class recall and confusion matrix",
        description="Evaluate a checkpoint on a split of the project's target images (labels, or "
        "the hidden ground truth on the test split), or a model file on --data.")
    evaluate.add_argument("project", type=Path, nargs="?")
    evaluate.add_argument("--split", default="test", help="project split, or .npz split (default test)")
    evaluate.add_argument("--checkpoint", type=int, metavar="ID", help="default: the latest")
    evaluate.add_argument("--data", type=Path, help=".npz file or ImageFolder tree")
    evaluate.add_argument("--model", type=Path, help="model file written by `atl train --out`")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.set_defaults(func=cmd_evaluate)


# ---- train -----------------------------------------------------------------------


def cmd_methods(args: argparse.Namespace) -> int:
    from atl_desktop.models.registry import BACKBONES
    from atl_desktop.transfer.methods import METHODS

    print("transfer methods (--method):")
    for name, method in METHODS.items():
        print(f"  {name:12} {method.description}")
    print("backbones (--backbone):")
    print("  " + ", ".join(BACKBONES))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if (args.project is None) == (args.data is None):
        raise ProjectError("Give either a project or --data (with --out).")
    if args.data is not None:
        return _train_on_data(args)
    from atl_desktop.commands.round import round_summary_line
    from atl_desktop.loop.rounds import open_round
    from atl_desktop.loop.session import finish_round_job
    from atl_desktop.transfer.train import train_project

    if distributed(args):
        outcome = run_train(args, lambda project: _project_config(args, project))
        if outcome.get("kind") == "train":
            _print(args, outcome, f"{', '.join(outcome['phases'])} done; checkpoint "
                   f"{outcome['checkpoints'][-1]}. " + _metric_line(outcome["metrics"]))
        return 0
    with Project.open(args.project) as project:
        config = _project_config(args, project)
        current = open_round(project)
        if current is not None:  # the round a query opened ends here, as `atl round train` ends it
            summary = run_with_tqdm(finish_round_job(project, round_id=current.id, config=config,
                                                     from_scratch=args.from_scratch),
                                    desc="train", quiet=args.quiet)
            _print(args, {"round": summary.round_id, "checkpoint": summary.checkpoint_id,
                          "metrics": summary.metrics},
                   f"Round {summary.round_id} finished: checkpoint {summary.checkpoint_id}. "
                   + round_summary_line(summary.metrics))
            return 0
        result = run_with_tqdm(train_project(project, config, from_scratch=args.from_scratch),
                               desc="train", quiet=args.quiet)
        _print(args, {"checkpoints": list(result.checkpoint_ids), "phases": list(result.phases),
                      "metrics": result.metrics},
               f"{', '.join(result.phases)} done; checkpoint {result.checkpoint_id}. "
               + _metric_line(result.metrics))
    return 0


def _project_config(args: argparse.Namespace, project: Project):
    """The project's training settings with the options given applied; the backbone defaults
    to the settings', else the latest checkpoint's, else one suited to the target images' size."""
    from atl_desktop.store.keys import TRAIN_SETTING

    saved = dict(project.get_setting(TRAIN_SETTING, {}))
    latest = None if args.from_scratch else project.latest_checkpoint()
    backbone = args.backbone or saved.get("backbone") or (latest.backbone if latest else None)
    if backbone is None:
        backbone = _default_backbone([max(r.width or 0, r.height or 0) for r in project.images(domain="target")])
    if latest is not None and backbone == latest.backbone and latest.config.get("input_size"):
        saved.setdefault("input_size", latest.config["input_size"])  # e.g. a self-supervised encoder's
    return _config(args, backbone, saved)


def _train_on_data(args: argparse.Namespace) -> int:
    from atl_desktop.models.checkpoints import save_model_file
    from atl_desktop.models.registry import build_model
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.transfer.train import train

    if args.out is None:
        raise ProjectError("--data needs --out, the model file to write.")
    images, labels, classes, sides = _loose_data(args.data, "train")
    config = _config(args, args.backbone or _default_backbone(sides))
    model = build_model(config.backbone, len(classes), weights=config.weights,
                        input_size=config.input_size, seed=config.seed)
    train_set = images(input_transform(model.spec, train=True, augment=config.augment), labels)
    val_set = None
    if args.data.suffix == ".npz":
        val_set = _npz_split(args.data, "val", input_transform(model.spec))
    result = run_with_tqdm(train(model, train_set, config, val_set=val_set), desc="train",
                           quiet=args.quiet)
    save_model_file(args.out, model, classes=classes, config=config.to_dict(),
                    metrics=result.metrics, seed=config.seed)
    _print(args, {"model": str(args.out), "metrics": result.metrics},
           f"Wrote {args.out}. " + _metric_line(result.metrics))
    return 0


# TrainConfig fields set by options of the same name (dashes for underscores).
OPTION_FIELDS = ("method", "epochs", "min_steps", "batch_size", "lr", "schedule", "optimizer", "freeze",
                 "lr_decay", "augment", "patience", "seed", "input_size", "device", "num_workers")


def _config(args: argparse.Namespace, backbone: str, saved: dict | None = None):
    """TrainConfig from `saved` settings (a project's), overridden by the options given."""
    from atl_desktop.models.registry import backbone_info
    from atl_desktop.transfer.train import TrainConfig

    fields = {"balanced": "auto", **(saved or {}), "backbone": backbone}
    fields.update({name: getattr(args, name) for name in OPTION_FIELDS if getattr(args, name) is not None})
    if args.balanced is not None:
        fields["balanced"] = {"on": True, "off": False}.get(args.balanced, "auto")
    if args.weights is not None:
        fields["weights"] = None if args.weights.lower() == "none" else args.weights
    elif "weights" not in fields:
        fields["weights"] = "imagenet" if backbone_info(backbone).torchvision else None
    method = fields.get("method", "finetune")
    try:
        if args.method_option or args.method is not None:  # new options for the method asked for
            fields["method_options"] = _method_options(method, args.method_option)
        return TrainConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise ProjectError(str(error)) from None


def _method_options(method: str, pairs: list[str]) -> dict:
    """KEY=VALUE pairs into options, checked against the method's own."""
    from atl_desktop.transfer.methods import make_method

    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ProjectError(f"--method-option {pair!r}: expected KEY=VALUE.")
        try:
            options[key.strip().replace("-", "_")] = json.loads(text)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = text
    make_method(method, options)  # refuses unknown keys with the method's list
    return options


def _default_backbone(sides: list[int]) -> str:
    if sides and statistics.median(sides) <= SMALL_IMAGE_SIDE:
        return "smallcnn"
    return "resnet18"


# ---- evaluate ----------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    if (args.project is None) == (args.data is None):
        raise ProjectError("Give either a project or --data (with --model).")
    if args.data is not None:
        result = _evaluate_on_data(args)
    else:
        from atl_desktop.loop.rounds import calibration_job, calibration_words
        from atl_desktop.transfer.train import evaluate_project

        with Project.open(args.project, readonly=True) as project:
            job = evaluate_project(project, checkpoint_id=args.checkpoint, split=args.split,
                                   batch_size=args.batch_size, device=args.device)
            result = run_with_tqdm(job, desc="evaluate", quiet=args.quiet)
            calibration = run_with_tqdm(calibration_job(project, args.checkpoint, args.split, device=args.device),
                                        desc="calibration", quiet=args.quiet)
        if args.json:
            print(json.dumps({**result.to_dict(), "calibration": calibration}, indent=2))
        else:
            print(result.report())
            print(calibration_words(calibration))
        return 0
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.report())
    return 0


def _evaluate_on_data(args: argparse.Namespace):
    from atl_desktop.models.checkpoints import load_model_file
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.transfer.train import evaluate

    if args.model is None:
        raise ProjectError("--data needs --model, a file written by `atl train --out`.")
    images, labels, classes, _ = _loose_data(args.data, args.split)
    model, _meta = load_model_file(args.model, classes=classes)
    dataset = images(input_transform(model.spec), labels)
    job = evaluate(model, dataset, batch_size=args.batch_size, device=args.device, classes=classes)
    return run_with_tqdm(job, desc="evaluate", quiet=args.quiet)


# ---- loose data ----------------------------------------------------------------------


def _loose_data(path: Path, split: str):
    """(make_dataset(transform, labels), labels, classes, image sides) for an .npz or a folder tree."""
    from atl_desktop.data.datasets import ArrayDataset, ImageDataset, load_imagefolder, load_npz

    if path.is_dir():
        paths, labels, classes = load_imagefolder(path)
        if not paths:
            raise ProjectError(f"{path}: no class folders with images.")
        return (lambda tf, y: ImageDataset(paths, y, tf)), labels, classes, _sides(paths[:20])
    x, y, classes = _load_npz_split(load_npz, path, split)
    if y is None:
        raise ProjectError(f"{path}: the {split} images have no labels.")
    return (lambda tf, labels: ArrayDataset(x, labels, tf)), y, classes, [max(x.shape[1:3])]


def _sides(paths: list[Path]) -> list[int]:
    from PIL import Image

    sides = []
    for path in paths:
        with Image.open(path) as img:  # reads the header only
            sides.append(max(img.size))
    return sides


def _load_npz_split(load_npz, path: Path, split: str):
    try:
        return load_npz(path, split)
    except ProjectError:
        if split == "train":
            raise
        return load_npz(path, "train")  # a file with plain x / y: use it whole


def _npz_split(path: Path, split: str, transform):
    from atl_desktop.data.datasets import ArrayDataset, load_npz

    try:
        x, y, _ = load_npz(path, split)
    except ProjectError:
        return None
    return None if y is None else ArrayDataset(x, y, transform)


# ---- output ------------------------------------------------------------------------------


def _metric_line(metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if k in ("train_loss", "val_accuracy", "val_loss", "steps")}
    return "  ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in shown.items())


def _print(args: argparse.Namespace, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)
