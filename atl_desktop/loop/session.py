"""One active-learning round, end to end, headless: score, query, pseudo-label, train.

Each step is a generator job (atl_desktop.jobs) over a Project, so the CLI
drives it with tqdm, the window on a QThread, and tests by iterating.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from atl_desktop.active.audit import AuditEstimate, StopDecision, audit_estimate, stop_rule
from atl_desktop.active.calibration import apply_temperature
from atl_desktop.active.heads import HEADS, head_probs
from atl_desktop.active.pseudo import PseudoLabelConfig, pseudo_labels_for_round
from atl_desktop.active.scoring import (
    ScoreTable,
    ScoringConfig,
    score_pool,
    scores_dir,
    write_meta,
)
from atl_desktop.active.strategies import STRATEGIES, SelectionInput, explain, select
from atl_desktop.jobs import Progress, relabel
from atl_desktop.loop.rounds import (
    OnCommit,
    assess_job,
    check_can_finish,
    check_can_query,
    checkpoint_temperature,
    completed_rounds,
    fine_tune_job,
    label_from_truth,
    notify,
    open_round,
    record_step,
    round_state,
    shown_suggestions,
    training_labels,
)
from atl_desktop.models.encoders import COLD_START_BACKBONE, UNTRAINED, EncoderChoice
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.keys import (
    AUDIT_SHARE_SETTING,
    DEFAULT_AUDIT_SHARE,
    DEFAULT_STOP_WIDTH,
    ENCODER_SETTING,
    LABEL_CHECK_SETTING,
    LABELS_KEPT_SETTING,
    PSEUDO_SETTING,
    ROUND_STATE,
    SKIPPED_SETTING,
    STOP_RULE_SETTING,
    TRAIN_SETTING,
)

HEAD_CHOICES = ("auto", "model", *HEADS)  # auto: the model's own head if trained, else logreg
COLD_START_STRATEGY = "typiclust"  # for strategies that need predictions while nothing is labelled
TOP_PREDICTIONS = 3


@dataclass(frozen=True)
class ModelChoice:
    """Which model scores the pool: a checkpoint (default: the current one), or,
    for a cold start with no checkpoint, a pretrained backbone's features."""

    checkpoint_id: int | None = None
    pretrained: str | None = None
    weights: str = "imagenet"


@dataclass(frozen=True)
class ScoredPool:
    target: ScoreTable
    source: ScoreTable | None
    checkpoint_id: int | None
    key: str = ""  # the score cache's folder: the embeddings' key


@dataclass(frozen=True)
class QueryItem:
    image_id: int
    score: float
    reason: str  # why it was chosen, in words
    top: list[tuple[int, float]]  # (class position, probability), best first
    synthetic: bool = False  # made by a GAN (GAAL), not a pool image


@dataclass(frozen=True)
class QueryResult:
    round_id: int
    strategy: str
    items: list[QueryItem]
    pool_size: int
    params: Mapping = field(default_factory=dict)


def load_model(project: Project, choice: ModelChoice):
    """(model, cache key, checkpoint id) for `choice`.

    With no checkpoint and no encoder named, the cold start uses the project's encoder
    setting (ENCODER_SETTING), else an untrained backbone: weak features, but enough to
    pick typical images before anything is labelled (see models.encoders).
    """
    from atl_desktop.models.encoders import build_encoder, encoder_key

    n_classes = max(1, len(project.class_names()))
    encoder = None
    if choice.pretrained and choice.checkpoint_id is None:
        encoder = EncoderChoice(choice.pretrained, choice.weights)
    elif choice.checkpoint_id is None and project.latest_checkpoint() is None:
        encoder = cold_start_encoder(project)
    if encoder is not None:
        model = build_encoder(encoder, n_classes)
        return model, encoder_key(model), None
    from atl_desktop.models.checkpoints import load_checkpoint

    model, record = load_checkpoint(project, choice.checkpoint_id)
    return model, record.sha256, record.id


def cold_start_encoder(project: Project) -> EncoderChoice:
    """The encoder used before any checkpoint exists: the project's choice, else an untrained one."""
    saved = project.get_setting(ENCODER_SETTING)
    return EncoderChoice.from_json(saved) if saved else EncoderChoice(UNTRAINED + COLD_START_BACKBONE)


def set_encoder_job(project: Project, choice: EncoderChoice) -> Generator[Progress, None, EncoderChoice]:
    """Make `choice` the project's encoder (ENCODER_SETTING) once it builds.

    Building loads and checks the weights (seconds for a ViT-L), so a missing or
    mismatched file fails here with the registry's one-line WeightsError and nothing
    is saved; a cancel at the yield after building saves nothing either.
    """
    from atl_desktop.models.encoders import build_encoder

    yield Progress(0, 1, f"loading {choice.describe()}")
    build_encoder(choice, 1)
    yield Progress(1, 1, "loaded")
    project.set_setting(ENCODER_SETTING, choice.to_json())
    return choice


def trained_head(project: Project, checkpoint_id: int | None) -> bool:
    """Whether the scoring model's own head predicts the project's classes: a checkpoint
    trained on labels. Encoders (self-supervised, pretrained, untrained) have none."""
    from atl_desktop.transfer.selfsup import is_encoder_only

    if checkpoint_id is None:
        return False
    record = project.checkpoint(checkpoint_id)
    return not is_encoder_only(record) and list(record.classes) == project.class_names()


def score_job(
    project: Project,
    *,
    model: ModelChoice | None = None,
    config: ScoringConfig | None = None,
    source: bool = False,
) -> Generator[Progress, None, ScoredPool]:
    """Score the target pool (and the source pool, if asked); cached per checkpoint."""
    from atl_desktop.data.datasets import AugmentedCopies, project_dataset
    from atl_desktop.models.transforms import input_transform
    from atl_desktop.store import PatchRef

    config = config or ScoringConfig()
    net, key, checkpoint_id = load_model(project, model or ModelChoice())
    cache = scores_dir(project.data_dir, key, config)
    transform = input_transform(net.spec)
    tables: dict[str, ScoreTable | None] = {}
    for domain in ("target", "source") if source else ("target",):
        if not project.image_ids(domain=domain, split="pool"):
            tables[domain] = None
            continue
        dataset = project_dataset(project, domain=domain, split="pool", labelled=None,
                                  transform=transform)
        if config.augment_copies and any(isinstance(p, PatchRef) for p in dataset.paths):
            # AIFT on slides: a patch's copies are crops jittered around it on the slide.
            dataset = AugmentedCopies(dataset, config.augment_copies, config.augment_min_scale,
                                      config.seed)
        job = score_pool(net, dataset, cache, image_ids=dataset.image_ids, config=config)
        tables[domain] = yield from relabel(job, f"scoring {domain} images")
    write_meta(cache, {"checkpoint_id": checkpoint_id, "key": key, "config": config.to_json()})
    if tables["target"] is None:
        raise ProjectError(f"{project.path.name} has no target images in the pool.")
    return ScoredPool(tables["target"], tables.get("source"), checkpoint_id, key)


def unlabelled_pool(project: Project, *, include_skipped: bool = False) -> tuple[np.ndarray, dict[int, int]]:
    """(images, labels): real target pool images with no label, never drawn for the audit sample
    (and, unless asked, not marked unsure); and the target pool labels a model may learn from
    (those of held-out audit images left out)."""
    labelled = project.current_labels(domain="target", split="pool")
    pool = np.asarray(project.image_ids(domain="target", split="pool", synthetic=False), dtype=np.int64)
    keep = ~np.isin(pool, list(labelled)) & ~np.isin(pool, list(project.audit_ids()))
    if not include_skipped:
        keep &= ~np.isin(pool, list(project.get_setting(SKIPPED_SETTING, [])))
    return pool[keep], project.current_labels(domain="target", split="pool", for_training=True)


def selection_input(project: Project, scored: ScoredPool | None, unlabelled: np.ndarray,
                    labelled: dict[int, int], head: str = "model") -> SelectionInput:
    """What the strategy sees. With a head ("logreg", "prototype"), the probabilities come
    from that head fitted on the labelled images' cached embeddings, not from the model's
    own head (None while nothing is labelled)."""
    if scored is None:
        return SelectionInput(probs=np.zeros((len(unlabelled), 1)))
    lab_ids = np.asarray(sorted(labelled), dtype=np.int64)
    data = pool_selection_input(scored.target, unlabelled, lab_ids, scored.source)
    if head in HEADS:
        probs = None
        if len(lab_ids):
            position = project.class_index()
            labels = np.asarray([position[labelled[i]] for i in lab_ids], dtype=np.int64)
            both = np.concatenate([data.features, data.labelled_features])
            rows = np.arange(len(data.features), len(both))
            probs = head_probs(head, both, rows, labels, len(position))[: len(data.features)]
        data = replace(data, probs=probs)
    return data


def pool_selection_input(target: ScoreTable, unlabelled: np.ndarray, labelled: np.ndarray,
                         source: ScoreTable | None = None) -> SelectionInput:
    """What a strategy sees: scores of the unlabelled rows, features of the labelled ones
    (the simulation builds it the same way)."""
    rows = target.rows(unlabelled)
    return SelectionInput(
        probs=np.asarray(target.probs[rows]), features=np.asarray(target.features[rows]),
        labelled_features=np.asarray(target.features[target.rows(labelled)]),
        source_features=None if source is None else np.asarray(source.features),
        augmented_probs=None if target.augmented_probs is None else np.asarray(target.augmented_probs[rows]),
        mc_probs=None if target.mc_probs is None else np.asarray(target.mc_probs[rows]),
    )


def scoring_config_for(strategy: str, params: Mapping, base: ScoringConfig) -> ScoringConfig:
    """The scoring pass a strategy needs: augmented copies for AIFT, MC-dropout for BALD."""
    needs = STRATEGIES[strategy].needs
    return ScoringConfig(**{
        **base.to_json(),
        "augment_copies": int(params.get("m", 8)) if "augmented_probs" in needs else 0,
        "mc_samples": (base.mc_samples or 10) if "mc_probs" in needs else 0,
    })


def query_job(
    project: Project,
    *,
    strategy: str,
    batch: int,
    checkpoint_id: int | None = None,
    params: Mapping | None = None,
    prototypes: bool = False,
    seed: int = 0,
    model: ModelChoice | None = None,
    scoring: ScoringConfig | None = None,
    head: str = "auto",
) -> Generator[Progress, None, QueryResult]:
    """Score the pool as the strategy needs, choose `batch` images, record them as a round.

    head: where predictions come from. "model": the scoring model's own head;
    "logreg" or "prototype": a head fitted on the labelled images' cached embeddings
    (the embedding-first loop); "auto": the model's head when it was trained on this
    project's classes, else logreg. `prototypes` is the older spelling of head="prototype".
    While nothing is labelled, a strategy that needs predictions is replaced by
    COLD_START_STRATEGY (typical images first), and the round records that.
    """
    if strategy not in STRATEGIES:
        raise ProjectError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    if batch < 1:
        raise ProjectError("The batch size must be at least 1.")
    check_can_query(project)
    if head not in HEAD_CHOICES:
        raise ProjectError(f"Unknown head {head!r}; choose one of {', '.join(HEAD_CHOICES)}.")
    head = "prototype" if prototypes else head
    params = dict(params or {})
    needs = STRATEGIES[strategy].needs
    if "generative" in needs:  # GAAL, ASAL: a GAN and the classifier, no scoring pass
        from atl_desktop.loop.generative import gan_query_job

        return (yield from gan_query_job(project, strategy=strategy, batch=batch, params=params, seed=seed,
                                         checkpoint_id=checkpoint_id,
                                         device=None if scoring is None else scoring.device))
    unlabelled, labelled = unlabelled_pool(project)
    audit = draw_audit(project, batch, unlabelled, seed)
    drawn_before = project.audit_ids()
    pending_audit = [i for i in audit if i in drawn_before]
    unlabelled = unlabelled[~np.isin(unlabelled, audit)]
    if not len(unlabelled) and not audit:
        raise ProjectError("Every target pool image is labelled or skipped; nothing to choose from.")
    scored = None
    if needs or head != "model":
        config = scoring_config_for(strategy, params, scoring or ScoringConfig(seed=seed))
        choice = model or ModelChoice(checkpoint_id=checkpoint_id)
        scored = yield from score_job(project, model=choice, config=config,
                                      source="source_features" in needs)
        if head == "auto":
            head = "model" if trained_head(project, scored.checkpoint_id) else "logreg"
    yield Progress(0, None, f"choosing {batch} images ({strategy})")
    data = selection_input(project, scored, unlabelled, labelled, head)
    chosen_by = strategy
    if "probs" in needs and data.probs is None:
        chosen_by, params = COLD_START_STRATEGY, {}
    wanted = min(batch - len(audit), len(unlabelled))
    picks = select(chosen_by, data, wanted, np.random.default_rng(seed), **params) if wanted > 0 else []
    calibration = suggestion_temperature(project, scored, labelled, head)
    temperature = calibration["temperature"] if calibration else 1.0
    items = describe_picks(chosen_by, data, np.asarray(picks, dtype=np.int64), unlabelled, params,
                           temperature=temperature)
    items += [QueryItem(i, 0.0, AUDIT_REASON, []) for i in audit]
    record = {
        "batch": batch, "chosen": [it.image_id for it in items], "params": params, "seed": seed,
        "head": head, "pool_size": int(len(unlabelled)), "shown": shown_suggestions(items),
        "audit": {"images": audit, "share": audit_share(project), "seed": seed},
    }
    if calibration:
        record["temperature"] = calibration
    if chosen_by != strategy:
        record["cold_start"] = chosen_by
    if scored is not None and head in HEADS:
        record["embeddings"] = scored.key  # the live head reads them again (live_suggestions)
    with project.transaction():
        round_id = project.start_round(strategy, record,
                                       checkpoint_id=None if scored is None else scored.checkpoint_id)
        project.mark_audit([i for i in audit if i not in pending_audit], round=round_id, seed=seed)
    return QueryResult(round_id, strategy, items, int(len(unlabelled)), params)


# ---- the audit sample ---------------------------------------------------------------------

AUDIT_REASON = "audit: drawn at random to measure accuracy (no suggestion shown; trains nothing until released)"


def audit_share(project: Project) -> float:
    """The share of queried images drawn for the audit sample (project setting, default 1 in 10)."""
    share = float(project.get_setting(AUDIT_SHARE_SETTING, DEFAULT_AUDIT_SHARE))
    if not 0.0 <= share <= 1.0:
        raise ProjectError(f"The audit share must be between 0 and 1, not {share}; "
                           f"set it with `atl audit set {project.path.name} --share 0.1`.")
    return share


def audit_quota(project: Project, batch: int) -> int:
    """How many of this batch are audit images: floor(share * shown) grows by this much, with
    `shown` every image queried since audits began (rounds that record "audit"), so over many
    rounds exactly the share is audit however small the batches."""
    share = audit_share(project)
    shown = sum(len(r.params.get("chosen", [])) for r in project.rounds() if "audit" in r.params)
    return math.floor(share * (shown + batch) + 1e-9) - math.floor(share * shown + 1e-9)


def draw_audit(project: Project, batch: int, unlabelled: np.ndarray, seed: int) -> list[int]:
    """This batch's audit images: first those drawn before but still unlabelled (a discarded
    round's), then new ones drawn uniformly at random from `unlabelled` (the unlabelled pool
    without audit images) with a generator of their own, so the strategy's draws are unchanged."""
    quota = audit_quota(project, batch)
    labelled = project.current_labels()
    skipped = set(project.get_setting(SKIPPED_SETTING, []))
    pending = [r.image_id for r in project.audit_images(held_out=True)
               if r.image_id not in labelled and r.image_id not in skipped][:quota]
    rng = np.random.default_rng([seed, 0xA0D1])
    new = rng.choice(unlabelled, size=min(quota - len(pending), len(unlabelled)), replace=False)
    return pending + sorted(int(i) for i in new)


# ---- the audit estimate ---------------------------------------------------------------------


def audit_labels(project: Project) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, class positions) of the held-out audit images that have a label. Released
    ones are left out: a model may have learnt from them, so they no longer test it."""
    position = project.class_index()
    labelled = project.current_labels(domain="target", split="pool")
    ids = sorted(i for i in project.audit_ids(held_out=True) if labelled.get(i) in position)
    return np.asarray(ids, dtype=np.int64), np.asarray([position[labelled[i]] for i in ids], dtype=np.int64)


def no_audit_labels_message(project: Project) -> str:
    return (f"{project.path.name} has no labelled audit images yet: each query (`atl query`, the window's "
            f"Query next batch) draws {audit_share(project):.0%} of its batch at random as audit images; "
            "label them and ask again.")


@dataclass(frozen=True)
class AuditResult:
    estimate: AuditEstimate
    checkpoint_id: int | None  # the model scored (None: the cold-start encoder)
    head: str  # "model": the checkpoint's own head; else the head fitted on the embeddings

    def to_json(self) -> dict:
        return {**self.estimate.to_json(), "checkpoint_id": self.checkpoint_id, "head": self.head}


def audit_job(project: Project, *, model: ModelChoice | None = None, scoring: ScoringConfig | None = None,
              head: str = "auto") -> Generator[Progress, None, AuditResult]:
    """The current model's accuracy on the held-out audit images, with 95 % intervals
    (active.audit). The model is the one a query would use: the pool's cached scores (scored
    first if need be) and, with head "auto", the checkpoint's own head when it was trained on
    this project's classes, else a logistic head fitted on the training labels' embeddings."""
    ids, labels = audit_labels(project)
    if not len(ids):
        raise ProjectError(no_audit_labels_message(project))
    scored = yield from score_job(project, model=model or ModelChoice(), config=scoring or ScoringConfig())
    if head == "auto":
        head = "model" if trained_head(project, scored.checkpoint_id) else "logreg"
    probs = current_model_probs(scored.target, ids, head, training_positions(project), len(project.class_names()))
    yield Progress(1, 1, "audit estimate")
    return AuditResult(audit_estimate(labels, probs.argmax(axis=1), project.class_names()),
                       scored.checkpoint_id, head)


def round_audit_job(project: Project, checkpoint_id: int, *,
                    device: str | None = None) -> Generator[Progress, None, AuditResult]:
    """`audit_job` for a round's new checkpoint. A checkpoint whose head predicts these classes
    (a fine-tune's) predicts the audit images alone, as `rounds.assess_job` does the test split,
    not the whole pool; otherwise its embeddings of the pool are scored and a head fitted."""
    if not trained_head(project, checkpoint_id):
        return (yield from audit_job(project, model=ModelChoice(checkpoint_id=checkpoint_id),
                                     scoring=ScoringConfig(device=device)))
    from atl_desktop.data.datasets import ImageDataset
    from atl_desktop.loop.rounds import predict_probs
    from atl_desktop.models.checkpoints import load_checkpoint
    from atl_desktop.models.transforms import input_transform

    ids, labels = audit_labels(project)
    classes = project.class_names()
    model, _ = load_checkpoint(project, checkpoint_id, classes=classes)
    dataset = ImageDataset([project.image_path(project.image(int(i))) for i in ids], None,
                           input_transform(model.spec))
    probs = yield from predict_probs(model, dataset, device=device or "auto", message="predicting the audit images")
    return AuditResult(audit_estimate(labels, probs.argmax(axis=1), classes), checkpoint_id, "model")


def current_model_probs(table: ScoreTable, image_ids: np.ndarray, head: str, train: Mapping[int, int],
                        n_classes: int) -> np.ndarray:
    """Probabilities (N, C) of `image_ids` (target pool images) from the model's own head
    ("model", the cached scores) or from `head` fitted on the cached embeddings of `train`
    (image id -> class position: the labels a model may learn from), as the query view
    suggests. Numpy and files only: any thread may call it."""
    if head == "model":
        probs = np.asarray(table.probs[table.rows(image_ids)])
        if probs.shape[1] != n_classes:
            raise ProjectError(f"The model predicts {probs.shape[1]} classes but the project has {n_classes}; "
                               "train again after changing classes.")
        return probs
    in_table = set(table.image_ids.tolist())
    train_ids = np.asarray(sorted(i for i in train if i in in_table), dtype=np.int64)
    if not len(train_ids):
        raise ProjectError("The model has learnt from no label yet: label some of the images a query "
                           "chose (not only audit images), then ask again.")
    y = np.asarray([train[i] for i in train_ids], dtype=np.int64)
    probs = head_probs(head, np.asarray(table.features), table.rows(train_ids), y, n_classes)
    return probs[table.rows(image_ids)]


@dataclass(frozen=True)
class AuditInputs:
    """What `cached_audit` needs, read from the project on its own thread (the window's)."""

    cache: str  # the score cache of the current model
    head: str
    pool_ids: np.ndarray  # every real target pool image, ascending
    ids: np.ndarray  # labelled held-out audit images
    labels: np.ndarray  # their class positions
    train: dict[int, int]  # the labels a model may learn from, as class positions
    classes: tuple[str, ...]


def audit_inputs(project: Project) -> AuditInputs | None:
    """The current model's score cache and the audit labels (None when none is labelled): the
    checkpoint's own scores when its head was trained on these classes, else the newest
    round's embeddings with the head it used. A ProjectError when nothing is scored yet."""
    ids, labels = audit_labels(project)
    if not len(ids):
        return None
    latest = project.latest_checkpoint()
    if latest is not None and trained_head(project, latest.id):
        key, head = latest.sha256, "model"
    else:
        newest = next((r for r in reversed(project.rounds()) if r.params.get("embeddings")), None)
        if newest is None:
            raise ProjectError("The pool has not been scored by the current model yet: "
                               f"`atl audit show {project.path.name}` scores it.")
        key, head = newest.params["embeddings"], newest.params.get("head", "logreg")
    pool = np.asarray(sorted(project.image_ids(domain="target", split="pool", synthetic=False)), dtype=np.int64)
    return AuditInputs(str(scores_dir(project.data_dir, key, ScoringConfig())), head, pool, ids, labels,
                       training_positions(project), tuple(project.class_names()))


def cached_audit(inputs: AuditInputs) -> AuditEstimate:
    """The audit estimate from the cached scores alone (numpy and files: any thread)."""
    from atl_desktop.active.scoring import MissingScores, load_scores

    try:
        table = load_scores(inputs.cache, inputs.pool_ids)
    except (MissingScores, OSError):
        raise ProjectError("The current model has not scored every audit image yet: the next query, "
                           "or `atl audit show`, scores them.") from None
    probs = current_model_probs(table, inputs.ids, inputs.head, inputs.train, len(inputs.classes))
    return audit_estimate(inputs.labels, probs.argmax(axis=1), inputs.classes)


def stop_decision(project: Project, stabilised: bool, estimate: AuditEstimate | None) -> StopDecision:
    """active.audit.stop_rule with the project's width and target (STOP_RULE_SETTING)."""
    rule = project.get_setting(STOP_RULE_SETTING, {}) or {}
    return stop_rule(stabilised, estimate, width=float(rule.get("width", DEFAULT_STOP_WIDTH)),
                     target=rule.get("target"))


def suggestion_temperature(project: Project, scored: ScoredPool | None, labelled: Mapping[int, int],
                           head: str) -> dict | None:
    """The temperature applied to the suggestions' confidence (not to the strategy's scores,
    which rank as their papers define them). A head on embeddings: fitted on its
    out-of-fold predictions of the labels so far (active.head_calibration). The model's
    own head: the temperature its assessment fitted on held-out labels (rounds.assess_job).
    None when there is none to apply."""
    if scored is None:
        return None
    if head not in HEADS:
        t = checkpoint_temperature(project, scored.checkpoint_id)
        return None if t == 1.0 else {"temperature": t, "fitted_on": "the checkpoint's assessment"}
    from atl_desktop.active.head_calibration import head_temperature

    position = project.class_index()
    ids = np.asarray(sorted(i for i, c in labelled.items() if c in position), dtype=np.int64)
    if not len(ids):
        return None
    labels = np.asarray([position[labelled[i]] for i in ids], dtype=np.int64)
    features = np.asarray(scored.target.features[scored.target.rows(ids)])
    return head_temperature(features, labels, len(position), head=head)


# ---- suggestions refitted after every label (the embedding-first loop) ------------------


@dataclass(frozen=True)
class LiveHead:
    """What `live_suggestions` needs, read from the project on its own thread."""

    cache: str  # the score cache folder holding the round's embeddings
    head: str
    pool_ids: np.ndarray  # every real target pool image, ascending
    labels: dict[int, int]  # image id -> class position, the labels a model may learn from
    num_classes: int
    hidden: frozenset = frozenset()  # audit images: no suggestion, so the expert's label stays independent
    temperature: float = 1.0  # fitted out of fold when the round was queried (suggestion_temperature)
    # Carried from one refit to the next (dataclasses.replace shares it): the pool's
    # standardisation, computed once, and the last logistic fit, the next one's warm start.
    memo: dict = field(default_factory=dict, compare=False, repr=False)


def live_head(project: Project, round_id: int | None) -> LiveHead | None:
    """The round's head and labels, when the round was chosen on cached embeddings."""
    record = next((r for r in project.rounds() if r.id == round_id), None)
    if record is None or record.params.get("head") not in HEADS or not record.params.get("embeddings"):
        return None
    position = project.class_index()
    cache = scores_dir(project.data_dir, record.params["embeddings"], ScoringConfig())
    pool = np.asarray(sorted(project.image_ids(domain="target", split="pool", synthetic=False)), dtype=np.int64)
    temperature = float((record.params.get("temperature") or {}).get("temperature", 1.0))
    return LiveHead(str(cache), record.params["head"], pool, training_positions(project), len(position),
                    frozenset(project.audit_ids()), temperature)


def training_positions(project: Project) -> dict[int, int]:
    """image id -> class position of the target pool labels a model may learn from."""
    position = project.class_index()
    return {i: position[c] for i, c in project.current_labels(domain="target", split="pool", for_training=True).items()
            if c in position}


def live_suggestions(live: LiveHead, image_ids) -> dict[int, list[tuple[int, float]]]:
    """Refit the head on every current label and predict `image_ids`: (class position,
    probability) best first, TOP_PREDICTIONS of them. Numpy and files only, so any thread
    may call it (tens of milliseconds for thousands of pool images and hundreds of labels;
    benchmarks/al_pbc.py times the fit). {} when nothing is labelled or the embeddings are gone."""
    from atl_desktop.active.heads import LogisticHead, fit_scaler, make_head
    from atl_desktop.active.scoring import MissingScores, load_scores

    in_pool = set(live.pool_ids.tolist())
    labelled = np.asarray(sorted(i for i in live.labels if i in in_pool), dtype=np.int64)
    if not len(labelled):
        return {}
    try:
        table = load_scores(live.cache, live.pool_ids)
    except (MissingScores, OSError):
        return {}
    scaler = live.memo.get("scaler")
    if scaler is None or live.memo.get("scaler_rows") != len(table.features):
        live.memo.update(scaler=fit_scaler(table.features), scaler_rows=len(table.features))
        scaler = live.memo["scaler"]
    y = np.asarray([live.labels[i] for i in labelled], dtype=np.int64)
    head = make_head(live.head, live.num_classes)
    x = scaler(table.features[table.rows(labelled)])
    if isinstance(head, LogisticHead):
        previous = live.memo.get("head")
        head.fit(x, y, start=previous if previous is not None and previous.num_classes == live.num_classes else None)
        live.memo["head"] = head
    else:
        head.fit(x, y)
    wanted = np.asarray([i for i in image_ids if i in in_pool and i not in live.hidden], dtype=np.int64)
    if not len(wanted):
        return {}
    probs = apply_temperature(head.predict_proba(scaler(table.features[table.rows(wanted)])), live.temperature)
    out = {}
    for image_id, p in zip(wanted, probs, strict=True):
        order = np.argsort(-p, kind="stable")[:TOP_PREDICTIONS]
        out[int(image_id)] = [(int(c), float(p[c])) for c in order]
    return out


# ---- more like this --------------------------------------------------------------------


@dataclass(frozen=True)
class SimilarImage:
    image_id: int
    similarity: float  # cosine, in the encoder's embedding space


def similar_job(project: Project, image_id: int, *, k: int = 20, model: ModelChoice | None = None,
                scoring: ScoringConfig | None = None) -> Generator[Progress, None, list[SimilarImage]]:
    """The k unlabelled target pool images nearest to `image_id` in the embedding space of
    the model a query would use (cached embeddings; the pool is embedded once)."""
    from atl_desktop.active.similar import SimilarIndex

    if k < 1:
        raise ProjectError("k must be at least 1.")
    project.image(image_id)  # a one-line error for an unknown id
    scored = yield from score_job(project, model=model or ModelChoice(), config=scoring or ScoringConfig())
    table = scored.target
    try:
        query_row = int(table.rows([image_id])[0])
    except KeyError:
        raise ProjectError(f"Image {image_id} is not in the target pool; "
                           "more like this starts from a pool image.") from None
    unlabelled, _ = unlabelled_pool(project)
    allowed = np.isin(table.image_ids, unlabelled) & (table.image_ids != image_id)
    yield Progress(0, None, f"finding images like {image_id}")
    rows, sims = SimilarIndex(table.features).search(np.asarray(table.features[query_row]), k, allowed)
    return [SimilarImage(int(table.image_ids[r]), float(v)) for r, v in zip(rows, sims, strict=True)]


# ---- possible label errors ---------------------------------------------------------------


@dataclass(frozen=True)
class LabelSuspect:
    image_id: int
    given: int  # class id of the label
    likely: int  # class id confident learning puts it in
    margin: float  # p(likely) - p(given), out of fold
    probability: float = float("nan")  # p(likely), out of fold
    given_probability: float = float("nan")  # p(given), out of fold

    def to_json(self) -> dict:
        return {"image_id": self.image_id, "given": self.given, "likely": self.likely, "margin": self.margin,
                "probability": self.probability, "given_probability": self.given_probability}


def check_labels_job(project: Project, *, folds: int = 5, model: ModelChoice | None = None,
                     scoring: ScoringConfig | None = None) -> Generator[Progress, None, list[LabelSuspect]]:
    """Confident learning (active.label_errors) over the target pool's labels, on the cached
    embeddings of the model a query would use; most suspicious first. Labels the expert kept
    as they are (LABELS_KEPT_SETTING) are not flagged again; the result is kept in
    LABEL_CHECK_SETTING for the window."""
    from atl_desktop.active.label_errors import find_label_errors, out_of_fold_probs

    labelled = project.current_labels(domain="target", split="pool")
    classes = project.classes()
    position = {c.id: k for k, c in enumerate(classes)}
    ids = np.asarray(sorted(i for i, c in labelled.items() if c in position), dtype=np.int64)
    labels = np.asarray([position[labelled[i]] for i in ids], dtype=np.int64)
    if len(ids) < 2 * folds or len(np.unique(labels)) < 2:
        raise ProjectError(f"Checking labels needs at least {2 * folds} labelled images in two classes or more.")
    scored = yield from score_job(project, model=model or ModelChoice(), config=scoring or ScoringConfig())
    yield Progress(0, None, f"cross-validating a head over {len(ids)} labels")
    features = np.asarray(scored.target.features[scored.target.rows(ids)])
    probs = out_of_fold_probs(features, labels, len(classes), folds=folds)
    kept = project.get_setting(LABELS_KEPT_SETTING, {}) or {}
    suspects = [LabelSuspect(int(ids[s.row]), classes[s.given].id, classes[s.likely].id, s.margin,
                             float(probs[s.row, s.likely]), float(probs[s.row, s.given]))
                for s in find_label_errors(probs, labels)]
    suspects = not_kept(suspects, kept)
    project.set_setting(LABEL_CHECK_SETTING, [s.to_json() for s in suspects])
    return suspects


def not_kept(suspects: list[LabelSuspect], kept: Mapping[str, int]) -> list[LabelSuspect]:
    """The suspects whose label the expert has not kept as it is ({str(image id): class id});
    a label changed since it was kept is flagged again."""
    return [s for s in suspects if kept.get(str(s.image_id)) != s.given]


# ---- why each image was chosen, in words ---------------------------------------------


def describe_picks(strategy: str, data: SelectionInput, picks: np.ndarray,
                   unlabelled: np.ndarray, params: Mapping, *, temperature: float = 1.0) -> list[QueryItem]:
    """Each pick with its score, reason and top predictions (temperature-scaled)."""
    values, words = explain(strategy, data, picks, params)
    items = []
    for k, row in enumerate(picks):
        top: list[tuple[int, float]] = []
        if data.probs is not None and data.probs.shape[1] > 1:
            p = apply_temperature(np.asarray(data.probs[row], dtype=np.float64)[None, :], temperature)[0]
            order = np.argsort(-p, kind="stable")[:TOP_PREDICTIONS]
            top = [(int(c), float(p[c])) for c in order]
        items.append(QueryItem(int(unlabelled[row]), float(values[k]), words[k], top))
    return items


# ---- CEAL pseudo-labels ----------------------------------------------------------------


def pseudo_label_job(
    project: Project,
    *,
    config: PseudoLabelConfig | None = None,
    round_id: int | None = None,
    checkpoint_id: int | None = None,
    scoring: ScoringConfig | None = None,
) -> Generator[Progress, None, int]:
    """Propose CEAL pseudo-labels for confident unlabelled images; returns how many.

    The threshold applies to the checkpoint's temperature-scaled probabilities (the T its
    assessment fitted on held-out labels; 1 when none was fitted).

    They belong to `round_id` (default: the open round, if any), whose step is
    committed with them. The entropy threshold decays with the number of rounds
    finished so far. Pairs the expert rejected before are never proposed again.
    """
    config = config or PseudoLabelConfig(**project.get_setting(PSEUDO_SETTING, {}))
    if round_id is None:
        current = open_round(project)
        round_id = None if current is None else current.id
    unlabelled, _ = unlabelled_pool(project)
    chosen = []
    if len(unlabelled):
        scored = yield from score_job(project, model=ModelChoice(checkpoint_id=checkpoint_id),
                                      config=scoring or ScoringConfig())
        probs = np.asarray(scored.target.probs[scored.target.rows(unlabelled)])
        class_ids = [c.id for c in project.classes()]
        if probs.shape[1] != len(class_ids):
            raise ProjectError(
                f"The checkpoint predicts {probs.shape[1]} classes but the project has {len(class_ids)}; "
                "train again after changing classes."
            )
        round_index = len(completed_rounds(project))
        chosen = pseudo_labels_for_round(probs, unlabelled, round_index, config,
                                         class_ids=class_ids, exclude=project.rejected_pseudo(),
                                         temperature=checkpoint_temperature(project, scored.checkpoint_id))
    with project.transaction():
        project.add_pseudo_labels([p.as_tuple() for p in chosen], round=round_id)
        if round_id is not None and not round_state(project, round_id).reached("pseudo-labelled"):
            record_step(project, round_id, "pseudo-labelled", pseudo=len(chosen), pseudo_config=config.to_json())
    yield Progress(1, 1, f"{len(chosen)} pseudo-labels proposed")
    return len(chosen)


# ---- fine-tuning and the round as a whole ------------------------------------------------



def project_train_config(project: Project, **overrides):
    """The project's training settings (backbone, method, epochs...) with `overrides` applied."""
    from atl_desktop.transfer.train import TrainConfig

    saved = dict(project.get_setting(TRAIN_SETTING, {}))
    latest = project.latest_checkpoint()
    if "backbone" not in saved and latest is not None:
        saved["backbone"] = latest.backbone  # fine-tuning continues the same architecture
    if "input_size" not in saved and latest is not None and latest.config.get("input_size"):
        saved["input_size"] = latest.config["input_size"]  # e.g. a self-supervised encoder's size
    # Class-balanced sampling whenever the labels are imbalanced, unless the project says otherwise.
    return TrainConfig.from_dict({"balanced": "auto", **saved, **overrides})



def train_job(project: Project, *, config=None, from_scratch: bool = False,
              round_id: int | None = None) -> Generator[Progress, None, int]:
    """Fine-tune incrementally from the current checkpoint; returns the new checkpoint id.

    The round is the newest unfinished one unless given: its pending pseudo-labels
    join the training set (CEAL), and it is finished with the new checkpoint, the
    test metrics and the stop signal, so the next query starts a new round.
    Without an open round this is plain training.
    """
    from atl_desktop.transfer.train import train_project

    config = config or project_train_config(project)
    if round_id is None:
        current = open_round(project)
        round_id = None if current is None else current.id
    if round_id is None:
        result = yield from train_project(project, config, from_scratch=from_scratch)
        return result.checkpoint_id
    summary = yield from finish_round_job(project, round_id=round_id, config=config,
                                          from_scratch=from_scratch)
    return summary.checkpoint_id


@dataclass(frozen=True)
class RoundSummary:
    round_id: int
    checkpoint_id: int
    metrics: Mapping


def finish_round_job(
    project: Project,
    *,
    round_id: int | None = None,
    pseudo: PseudoLabelConfig | None = None,
    config=None,
    oracle: bool = False,
    from_scratch: bool = False,
    device: str | None = None,
    on_commit: OnCommit | None = None,
) -> Generator[Progress, None, RoundSummary]:
    """Everything after the query, resuming after the round's last committed step:
    [oracle labels] -> [pseudo-labels, when `pseudo` is given] -> fine-tune -> assess ->
    finish. `on_commit(step)` is called after each step is committed (tests use it)."""
    current = open_round(project) if round_id is None else next(
        (r for r in project.rounds() if r.id == round_id), None)
    if current is None or current.finished is not None:
        raise ProjectError("No open round: start one with a query (`atl round query`).")
    round_id = current.id
    config = config or project_train_config(project)
    if device is not None:
        config = replace(config, device=device)
    if oracle and not round_state(project, round_id).reached("labelled"):
        label_from_truth(project, round_id)
        notify(on_commit, "labelled")
    state = round_state(project, round_id)
    if not state.reached("trained"):
        check_can_finish(project, round_id)
    if pseudo is not None and not state.reached("pseudo-labelled"):
        yield from relabel(pseudo_label_job(project, config=pseudo, round_id=round_id,
                                            scoring=ScoringConfig(device=device)), "pseudo-labelling")
        notify(on_commit, "pseudo-labelled")
    state = round_state(project, round_id)
    if not state.reached("trained"):
        _, extra = training_labels(project, round_id)
        yield from fine_tune_job(project, config, round_id=round_id, pseudo=extra, from_scratch=from_scratch)
        notify(on_commit, "trained")
        state = round_state(project, round_id)
    checkpoint_id = int(state.data["checkpoint"])
    assessed = yield from assess_job(project, checkpoint_id, _previous_model(project, round_id, checkpoint_id),
                                     device=config.device)
    assessed = yield from _with_audit(project, assessed, checkpoint_id, config.device)
    labels, _ = training_labels(project, round_id)
    metrics = {
        # "labels": every target pool label given, audit ones included (the labelling spent);
        # "training_labels": those the model may learn from.
        **assessed, "train": state.data.get("train", {}),
        "labels": len(project.current_labels(domain="target", split="pool")), "training_labels": len(labels),
        "pseudo_used": state.data.get("train", {}).get("n_pseudo", 0),
        "pseudo_proposed": state.data.get("pseudo"), "pseudo_config": state.data.get("pseudo_config"),
        "oracle": bool(state.data.get("oracle", False)), "train_config": config.to_dict(),
    }
    with project.transaction():
        project.finish_round(round_id, metrics, checkpoint_id=checkpoint_id)
        project.set_setting(ROUND_STATE, None)
    notify(on_commit, "finished")
    yield Progress(1, 1, f"round {round_id} finished", _headline(metrics))
    return RoundSummary(round_id, checkpoint_id, metrics)


def _with_audit(project: Project, assessed: dict, checkpoint_id: int,
                device: str | None) -> Generator[Progress, None, dict]:
    """A round's assessment with the new model's audit estimate (when audit images are labelled)
    and the stopping rule, which combines it with the stop set's agreement."""
    out = dict(assessed)
    estimate = None
    if len(audit_labels(project)[0]):
        result = yield from relabel(round_audit_job(project, checkpoint_id, device=device), "audit")
        out["audit"] = result.to_json()
        estimate = result.estimate
    stop = dict(out.get("stop") or {})
    decision = stop_decision(project, bool(stop.get("stop")), estimate)
    out["stop"] = {**stop, "rule": {"stop": decision.stop, "audit_ok": decision.audit_ok, "reason": decision.reason}}
    return out


def _previous_model(project: Project, round_id: int, checkpoint_id: int) -> int | None:
    """The model of the last round finished before this one (else the new model's parent)."""
    earlier = [r for r in completed_rounds(project) if r.id < round_id and r.checkpoint_id]
    return earlier[-1].checkpoint_id if earlier else project.checkpoint(checkpoint_id).parent_id


def _headline(metrics: Mapping) -> dict[str, float]:
    out = {}
    if "test" in metrics:
        out["test_accuracy"] = metrics["test"]["accuracy"]
        out["ece"] = metrics["test"]["calibration"]["ece"]
    kappa = (metrics.get("stop") or {}).get("kappa")
    if kappa is not None:
        out["kappa"] = kappa
    return out


def round_job(
    project: Project,
    *,
    strategy: str,
    batch: int,
    params: Mapping | None = None,
    seed: int = 0,
    pseudo: PseudoLabelConfig | None = None,
    config=None,
    scoring: ScoringConfig | None = None,
    on_commit: OnCommit | None = None,
) -> Generator[Progress, None, RoundSummary]:
    """One whole round with the hidden ground truth as the oracle (simulations, demos).
    An open round is resumed first instead of starting a new one."""
    current = open_round(project)
    if current is None:
        yield from relabel(query_job(project, strategy=strategy, batch=batch, params=params, seed=seed,
                                     scoring=scoring), "query")
        notify(on_commit, "queried")
    return (yield from finish_round_job(project, pseudo=pseudo, config=config, oracle=True,
                                        device=None if scoring is None else scoring.device,
                                        on_commit=on_commit))
