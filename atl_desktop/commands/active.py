"""`atl score`, `atl query`, `atl strategies`: the scoring pass and the choice of images to label."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atl_desktop.commands.lazy import STRATEGY_NAMES
from atl_desktop.commands.scale import add_launch_options, distributed, run_score
from atl_desktop.jobs import run_with_tqdm
from atl_desktop.store import Project, ProjectError


def register(subparsers: argparse._SubParsersAction) -> None:
    score = subparsers.add_parser(
        "score", help="score the pool with a checkpoint (cached)",
        description="One pass over the target pool (and source images): softmax probabilities and "
                    "bottleneck features, cached in NAME.atl.d/scores/<checkpoint sha256>/.")
    score.add_argument("project", type=Path)
    _model_options(score)
    add_launch_options(score)
    score.set_defaults(func=cmd_score)

    query = subparsers.add_parser(
        "query", help="choose the next images to label",
        description="Choose the next batch of unlabelled target images with a strategy, print them "
                    "and record them as a round.")
    add_query_arguments(query)
    query.set_defaults(func=cmd_query)

    strategies = subparsers.add_parser("strategies", help="list the selection strategies")
    strategies.set_defaults(func=cmd_strategies)


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a query: `atl query` and `atl round query` are one command."""
    parser.add_argument("project", type=Path)
    parser.add_argument("--strategy", required=True, choices=STRATEGY_NAMES, metavar="STRATEGY",
                        help="see `atl strategies`")
    parser.add_argument("--batch", type=int, required=True, help="how many images to choose")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="strategy parameter, VALUE in JSON (e.g. k=10, diversity='\"mmd\"', balance=true)")
    parser.add_argument("--prototypes", action="store_true",
                        help="few-shot: predict with class means of labelled features instead of the head")
    parser.add_argument("--head", default="auto", choices=("auto", "model", "logreg", "prototype"),
                        help="where predictions come from: the model's own head, or a head fitted on the "
                             "labelled images' embeddings (auto: the model's head once it was trained on "
                             "labels, else logreg)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    _model_options(parser)


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
    parser.add_argument("--num-workers", type=int, default=0,
                        help="processes decoding images for each scoring process (0: in it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _choice(args: argparse.Namespace):
    from atl_desktop.loop.session import ModelChoice

    return ModelChoice(checkpoint_id=args.checkpoint, pretrained=args.pretrained, weights=args.weights)


def _config(args: argparse.Namespace, augment_copies: int, mc_samples: int):
    from atl_desktop.active.scoring import ScoringConfig

    return ScoringConfig(batch_size=args.batch_size, device=args.device, seed=args.seed,
                         augment_copies=augment_copies, mc_samples=mc_samples,
                         num_workers=args.num_workers)


def cmd_score(args: argparse.Namespace) -> int:
    from atl_desktop.loop.session import score_job

    if distributed(args):
        outcome = run_score(args, _choice(args), _config(args, args.augment_copies, args.mc_samples))
        if outcome.get("kind") == "score":
            print(f"Scores of {outcome['target']} target and {outcome['source'] or 0} source images "
                  f"cached by {outcome['processes']} processes in {args.project.name}.d/scores/")
        return 0
    with Project.open(args.project) as project:
        job = score_job(project, model=_choice(args), config=_config(args, args.augment_copies, args.mc_samples),
                        source=True)
        scored = run_with_tqdm(job, desc="scoring", quiet=args.quiet)
        n_source = 0 if scored.source is None else len(scored.source.image_ids)
        print(f"Scores of {len(scored.target.image_ids)} target and {n_source} source images cached "
              f"in {project.data_dir.name}/scores/")
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


def cmd_query(args: argparse.Namespace) -> int:
    return run_query(args, "atl train")


def run_query(args: argparse.Namespace, finish: str) -> int:
    """Open a round with the chosen images and print them; `finish` is the command that ends it."""
    from atl_desktop.loop.session import query_job

    with Project.open(args.project) as project:
        job = query_job(project, strategy=args.strategy, batch=args.batch, params=parse_params(args.param),
                        prototypes=args.prototypes, seed=args.seed, model=_choice(args), head=args.head,
                        scoring=_config(args, 0, args.mc_samples))
        result = run_with_tqdm(job, desc="query", quiet=args.quiet)
        rows = query_rows(project, result)
    if args.json:
        print(json.dumps({"round": result.round_id, "strategy": result.strategy, "images": rows}, indent=2))
    else:
        print(f"Round {result.round_id} open: {result.strategy} chose {len(result.items)} of "
              f"{result.pool_size} unlabelled images. Label them (`atl label`), then run `{finish}`.")
        print(format_query_rows(rows))
    return 0


def query_rows(project: Project, result) -> list[dict]:
    """Per chosen image what the window's tile shows: path, score, the model's suggestion
    (named in the class order of the checkpoint that scored the pool) and why it was chosen."""
    record = next(r for r in project.rounds() if r.id == result.round_id)
    checkpoint = None if record.checkpoint_id is None else project.checkpoint(record.checkpoint_id)
    names = list(checkpoint.classes) if checkpoint is not None else project.class_names()
    rows = []
    for it in result.items:
        top = [{"class": names[pos] if 0 <= pos < len(names) else f"class {pos}", "p": p} for pos, p in it.top]
        rows.append({"id": it.image_id, "path": str(project.image_path(project.image(it.image_id))),
                     "score": it.score, "suggestion": top[0] if top else None, "top": top,
                     "reason": it.reason})
    return rows


def format_query_rows(rows: list[dict]) -> str:
    lines = ["  id\tpath\tscore\tsuggestion\treason"]
    for row in rows:
        best = row["suggestion"]
        if best:
            suggestion = f"{best['class']} ({best['p']:.0%})"
        else:  # an audit image's is hidden, so that its label does not lean on the model
            suggestion = "hidden (audit)" if row["reason"].startswith("audit") else "none (no model)"
        lines.append(f"  {row['id']}\t{row['path']}\t{row['score']:.4g}\t{suggestion}\t{row['reason']}")
    return "\n".join(lines)


def cmd_strategies(args: argparse.Namespace) -> int:
    from atl_desktop.active.strategies import STRATEGIES

    for name, strategy in STRATEGIES.items():
        needs = ", ".join(sorted(strategy.needs)) or "nothing"
        print(f"{name:18} {strategy.help} (needs {needs})")
    return 0
