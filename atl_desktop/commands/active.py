"""`atl score`, `atl query`, `atl strategies`: the scoring pass and the choice of images to label."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atl_desktop.active.coldstart import fit_prototypes, prototype_probs
from atl_desktop.active.scoring import (
    ScoreTable,
    ScoringConfig,
    model_fingerprint,
    score_pool,
    scores_dir,
    write_meta,
)
from atl_desktop.active.strategies import STRATEGIES, SelectionInput, select
from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import Project, ProjectError


def register(subparsers: argparse._SubParsersAction) -> None:
    score = subparsers.add_parser(
        "score", help="score the pool with a checkpoint (cached)",
        description="One pass over the target pool (and source images): softmax probabilities and "
                    "bottleneck features, cached in NAME.atl.d/scores/<checkpoint sha256>/.")
    score.add_argument("project", type=Path)
    _model_options(score)
    score.set_defaults(func=cmd_score)

    query = subparsers.add_parser(
        "query", help="choose the next images to label",
        description="Choose the next batch of unlabelled target images with a strategy, print them "
                    "and record them as a round.")
    query.add_argument("project", type=Path)
    query.add_argument("--strategy", required=True, choices=sorted(STRATEGIES), help="see `atl strategies`")
    query.add_argument("--batch", type=int, required=True, help="how many images to choose")
    query.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="strategy parameter, VALUE in JSON (e.g. k=10, diversity='\"mmd\"', balance=true)")
    query.add_argument("--prototypes", action="store_true",
                       help="few-shot: predict with class means of labelled features instead of the head")
    query.add_argument("--json", action="store_true", help="print JSON")
    _model_options(query)
    query.set_defaults(func=cmd_query)

    strategies = subparsers.add_parser("strategies", help="list the selection strategies")
    strategies.set_defaults(func=cmd_strategies)


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=int, default=None, help="checkpoint id (default: the current one)")
    parser.add_argument("--pretrained", metavar="BACKBONE", default=None,
                        help="cold start without a checkpoint: features of this backbone")
    parser.add_argument("--weights", default="imagenet", help="weights for --pretrained (imagenet or a file)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    parser.add_argument("--augment-copies", type=int, default=0, help="augmented patches per image (AIFT)")
    parser.add_argument("--mc-samples", type=int, default=0, help="MC-dropout samples (BALD)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class ScoredPool:
    target: ScoreTable
    source: ScoreTable | None
    cache_dir: Path
    checkpoint_id: int | None


def _load_model(project: Project, args: argparse.Namespace):
    """(model, cache key, checkpoint id): the chosen checkpoint, or a pretrained backbone."""
    if args.pretrained and args.checkpoint is None:
        from atl_desktop.models import build_model

        model = build_model(args.pretrained, max(1, len(project.class_names())), weights=args.weights)
        return model, model_fingerprint(model), None
    from atl_desktop.models.checkpoints import load_checkpoint

    model, record = load_checkpoint(project, args.checkpoint)
    return model, record.sha256, record.id


def _score(project: Project, args: argparse.Namespace, config: ScoringConfig, source: bool) -> ScoredPool:
    from atl_desktop.data.datasets import project_dataset
    from atl_desktop.models.transforms import input_transform

    model, key, checkpoint_id = _load_model(project, args)
    cache = scores_dir(project.data_dir, key, config)
    transform = input_transform(model.spec)
    tables = {}
    for domain in ("target", "source") if source else ("target",):
        if not project.image_ids(domain=domain, split="pool"):
            tables[domain] = None
            continue
        dataset = project_dataset(project, domain=domain, split="pool", labelled=None, transform=transform)
        job = score_pool(model, dataset, cache, image_ids=dataset.image_ids, config=config)
        tables[domain] = run_with_tqdm(job, desc=f"scoring {domain}", quiet=args.quiet)
    write_meta(cache, {"checkpoint_id": checkpoint_id, "key": key, "config": config.to_json()})
    if tables["target"] is None:
        raise ProjectError(f"{project.path.name} has no target images in the pool.")
    return ScoredPool(tables["target"], tables.get("source"), cache, checkpoint_id)


def _config(args: argparse.Namespace, augment_copies: int, mc_samples: int) -> ScoringConfig:
    return ScoringConfig(batch_size=args.batch_size, device=args.device, seed=args.seed,
                         augment_copies=augment_copies, mc_samples=mc_samples)


def cmd_score(args: argparse.Namespace) -> int:
    with Project.open(args.project) as project:
        scored = _score(project, args, _config(args, args.augment_copies, args.mc_samples), source=True)
        n_source = 0 if scored.source is None else len(scored.source.image_ids)
        print(f"Scores of {len(scored.target.image_ids)} target and {n_source} source images "
              f"in {scored.cache_dir.relative_to(project.data_dir.parent)}")
    return 0


def parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProjectError(f"--param wants KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value  # a bare word such as diversity=mmd
    return params


def selection_input(project: Project, scored: ScoredPool | None, unlabelled: np.ndarray,
                    labelled: dict[int, int], prototypes: bool) -> SelectionInput:
    if scored is None:
        return SelectionInput(probs=np.zeros((len(unlabelled), 1)))
    target = scored.target
    rows = target.rows(unlabelled)
    lab_ids = np.asarray(sorted(labelled), dtype=np.int64)
    lab_rows = target.rows(lab_ids)
    probs = np.asarray(target.probs[rows])
    features = np.asarray(target.features[rows])
    lab_features = np.asarray(target.features[lab_rows])
    if prototypes:
        position = project.class_index()
        labels = np.asarray([position[labelled[i]] for i in lab_ids], dtype=np.int64)
        protos = fit_prototypes(lab_features, labels, len(position))
        probs = prototype_probs(features, protos)
    return SelectionInput(
        probs=probs, features=features, labelled_features=lab_features,
        source_features=None if scored.source is None else np.asarray(scored.source.features),
        augmented_probs=None if target.augmented_probs is None else np.asarray(target.augmented_probs[rows]),
        mc_probs=None if target.mc_probs is None else np.asarray(target.mc_probs[rows]),
    )


def cmd_query(args: argparse.Namespace) -> int:
    strategy = STRATEGIES[args.strategy]
    params = parse_params(args.param)
    with Project.open(args.project) as project:
        labelled = project.current_labels(domain="target", split="pool")
        pool_ids = np.asarray(project.image_ids(domain="target", split="pool"), dtype=np.int64)
        unlabelled = pool_ids[~np.isin(pool_ids, list(labelled))]
        if not len(unlabelled):
            raise ProjectError("Every target pool image is labelled; nothing to choose from.")
        scored = None
        if strategy.needs or args.prototypes:
            m = int(params.get("m", 8)) if "augmented_probs" in strategy.needs else 0
            t = (args.mc_samples or 10) if "mc_probs" in strategy.needs else 0
            config = _config(args, m, t)
            scored = _score(project, args, config, source="source_features" in strategy.needs)
        data = selection_input(project, scored, unlabelled, labelled, args.prototypes)
        rng = np.random.default_rng(args.seed)
        picks = select(args.strategy, data, args.batch, rng, **params)
        chosen = [int(i) for i in unlabelled[picks]]
        record = {
            "batch": args.batch, "chosen": chosen, "params": params, "seed": args.seed,
            "prototypes": args.prototypes, "pool_size": int(len(unlabelled)),
        }
        round_id = project.start_round(args.strategy, record,
                                       checkpoint_id=None if scored is None else scored.checkpoint_id)
        paths = [str(project.image_path(project.image(i))) for i in chosen]
    if args.json:
        print(json.dumps({"round": round_id, "strategy": args.strategy,
                          "images": [{"id": i, "path": p} for i, p in zip(chosen, paths, strict=True)]}, indent=2))
    else:
        print(f"Round {round_id}: {args.strategy} chose {len(chosen)} of {len(unlabelled)} unlabelled images:")
        for i, p in zip(chosen, paths, strict=True):
            print(f"  {i}\t{p}")
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    for name, strategy in STRATEGIES.items():
        needs = ", ".join(sorted(strategy.needs)) or "nothing"
        print(f"{name:18} {strategy.help} (needs {needs})")
    return 0
