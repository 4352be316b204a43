"""GAN sampling over a project: train the GAN, and run a GAAL or ASAL query.

- `gan_train_job` trains a DCGAN on the project's unlabelled (real) target pool
  images and records it: the file goes to NAME.atl.d/generators/<sha256>.safetensors
  (written atomically before its row), sample previews to
  generators/previews/<run>/step-N.png as training goes on.
- `gan_query_job` is what `session.query_job` runs for GAAL and ASAL. It uses
  the newest GAN (training one first when there is none) and the current
  checkpoint as the classifier. GAAL stores its synthetic images in the project
  (flagged synthetic, with their latent codes) and opens the round with them; the
  expert labels them like any image, and fine-tuning uses those labels.
  ASAL opens the round with real unlabelled pool images. The pool's features in
  the chosen space and their LSH index are cached per GAN, feature space and
  set of pool images in generators/<sha256>/asal/, so a later query only
  generates and looks up.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Generator, Mapping

import numpy as np
import torch

from atl_desktop.active.gan import (
    GanConfig,
    gan_bytes,
    gan_from_bytes,
    layout,
    png_bytes,
    resolve_device,
    train_gan,
)
from atl_desktop.active.gansampling import (
    FeatureSpaceConfig,
    GanContext,
    PoolFeatures,
    asal_matches,
    build_index,
    fit_feature_space,
    space_from_tensors,
)
from atl_desktop.active.lsh import ExactIndex, LshIndex
from atl_desktop.active.strategies import SelectionInput, synthesise
from atl_desktop.jobs import Progress, relabel
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.files import atomic_write_bytes, sha256_bytes
from atl_desktop.store.keys import GAN_SETTING

GENERATOR_DIR = "generators"
GAN_SIZES = (16, 24, 28, 32, 48, 64)
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MAX_TRAIN_IMAGES = 20000  # the GAN learns from a random subsample of a larger pool
LOAD_BATCH = 256
# The parameters GAAL and ASAL take: the latent search, ASAL's matching, ASAL's feature space,
# and which recorded GAN to use.
SEARCH_PARAMS = ("steps", "step_size", "constraint")
ASAL_PARAMS = (*SEARCH_PARAMS, "oversample", "exact")
SPACE_PARAMS = ("space", "dims", "autoencoder_steps")
KNOWN_PARAMS = {"gaal": {*SEARCH_PARAMS, "generator"}, "asal": {*ASAL_PARAMS, *SPACE_PARAMS, "generator"}}


def default_gan_config(project: Project, **overrides) -> GanConfig:
    """The project's GAN settings: image size from the pool (the largest of GAN_SIZES not above
    the median image side, at least 16), grey when every pool image is grey, then the project
    setting GAN_SETTING, then `overrides`."""
    records = project.images("target", "pool", synthetic=False)
    sides = [min(r.width, r.height) for r in records if r.width and r.height]
    median = float(np.median(sides)) if sides else 28.0
    size = max([s for s in GAN_SIZES if s <= median] or [GAN_SIZES[0]])
    channels = 1 if records and all((r.mode or "RGB") in GREY_MODES for r in records) else 3
    saved = dict(project.get_setting(GAN_SETTING, {}))
    return GanConfig.from_json({"image_size": size, "channels": channels, **saved, **overrides})


def _pixels_transform(config: GanConfig):
    from torchvision import transforms as T

    from atl_desktop.models.transforms import ToMode

    return T.Compose([ToMode(config.channels), T.Resize(config.image_size, antialias=True),
                      T.CenterCrop(config.image_size), T.PILToTensor()])


def load_pool_pixels(project: Project, image_ids: list[int],
                     config: GanConfig) -> Generator[Progress, None, torch.Tensor]:
    """uint8 (N, channels, size, size) of these images, decoded and resized for the GAN."""
    from torch.utils.data import DataLoader

    from atl_desktop.data.datasets import ImageDataset

    dataset = ImageDataset([project.image_path(project.image(i)) for i in image_ids], None,
                           _pixels_transform(config))
    loader = DataLoader(dataset, batch_size=LOAD_BATCH, shuffle=False)
    parts = []
    for k, (x, _) in enumerate(loader):
        parts.append(x)
        yield Progress(k + 1, len(loader), "reading pool images")
    size = config.image_size
    return torch.cat(parts) if parts else torch.zeros((0, config.channels, size, size), dtype=torch.uint8)


def to_gan_range(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div_(127.5).sub_(1.0)


def unlabelled_real_pool(project: Project) -> list[int]:
    labelled = project.current_labels("target", "pool")
    return [i for i in project.image_ids("target", "pool", synthetic=False) if i not in labelled]


# ---- training -----------------------------------------------------------------------------


def gan_train_job(project: Project, config: GanConfig | None = None, *,
                  max_images: int = MAX_TRAIN_IMAGES) -> Generator[Progress, None, int]:
    """Train a DCGAN on the unlabelled real target pool and record it; returns its id.

    Cancelling keeps the previews written so far and records no generator.
    """
    config = config or default_gan_config(project)
    layout(config.image_size)
    ids = unlabelled_real_pool(project)
    if len(ids) < 2:
        raise ProjectError("The GAN learns from unlabelled target pool images; there are fewer than two.")
    if len(ids) > max_images:
        rng = np.random.default_rng(config.seed)
        ids = sorted(rng.choice(ids, size=max_images, replace=False).tolist())
    pixels = yield from load_pool_pixels(project, ids, config)
    run = uuid.uuid4().hex[:12]
    previews: list[str] = []

    def save_preview(step: int, grid: np.ndarray) -> None:
        relative = f"{GENERATOR_DIR}/previews/{run}/step-{step:06d}.png"
        atomic_write_bytes(project.data_dir / relative, png_bytes(grid))
        previews.append(relative)

    result = yield from train_gan(to_gan_range(pixels), config, on_preview=save_preview)
    metrics = {**result.metrics, "steps": result.steps, "images": len(ids), "previews": previews}
    data = gan_bytes(result.gan, metrics)
    sha = sha256_bytes(data)
    relative = f"{GENERATOR_DIR}/{sha}.safetensors"
    target = project.data_dir / relative
    if not target.exists():
        atomic_write_bytes(target, data)
    generator_id = project.add_generator(file=relative, sha256=sha, architecture="dcgan",
                                         config=config.to_json(), metrics=metrics)
    yield Progress(config.steps, config.steps, f"GAN {generator_id} saved; last preview {previews[-1]}",
                   {k: v for k, v in result.metrics.items()})
    return generator_id


def load_gan(project: Project, generator_id: int | None = None):
    """(gan, record) for a recorded generator (None: the newest), its file checked by sha256."""
    record = project.latest_generator() if generator_id is None else project.generator(generator_id)
    if record is None:
        raise ProjectError(f"{project.path.name} has no GAN yet; train one with `atl gan train`.")
    path = project.data_dir / record.file
    if not path.is_file():
        raise ProjectError(f"GAN {record.id}: file {path} is missing.")
    data = path.read_bytes()
    if sha256_bytes(data) != record.sha256:
        raise ProjectError(f"GAN {record.id}: {path.name} has changed or is damaged (sha256 differs).")
    gan, _ = gan_from_bytes(data, path.name)
    return gan, record


# ---- ASAL's pool features, cached ---------------------------------------------------------------


def _space_config(params: Mapping, seed: int) -> FeatureSpaceConfig:
    return FeatureSpaceConfig(name=str(params.get("space", "pca")), dims=int(params.get("dims", 32)),
                              autoencoder_steps=int(params.get("autoencoder_steps", 600)), seed=seed)


def pool_features_job(project: Project, gan, record, space: FeatureSpaceConfig, *, method: str = "lsh",
                      device: torch.device | None = None):
    """(pool image ids, fitted space, features, index) for every real target pool image: from the
    cache when this GAN, space and set of images were seen before, else computed and cached."""
    from safetensors.torch import load_file, save_file

    ids = project.image_ids("target", "pool", synthetic=False)
    key = sha256_bytes(np.asarray(ids, dtype=np.int64).tobytes())[:16]
    folder = project.data_dir / GENERATOR_DIR / record.sha256 / "asal" / f"{space.key()}-{key}"
    if (folder / "features.npy").is_file():
        fitted = space_from_tensors(space.name, load_file(folder / "space.safetensors"), gan, space)
        features = np.load(folder / "features.npy", mmap_mode="r")
        index = (LshIndex.load(folder / "lsh.npz", features) if method == "lsh" else ExactIndex(features))
        yield Progress(1, 1, "pool features from the cache")
        return ids, fitted, features, index
    gan_config = gan.config
    pixels = yield from relabel(load_pool_pixels(project, ids, gan_config), "reading pool images for ASAL")
    images = to_gan_range(pixels)
    fitted = yield from relabel(fit_feature_space(images, gan, space, device), f"fitting the {space.name} space")
    features = fitted.transform(images)
    index = build_index(features, gan, fitted, seed=space.seed)
    tmp = folder.with_name(f".tmp-{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.contiguous() for k, v in fitted.tensors().items()}, tmp / "space.safetensors")
        np.save(tmp / "features.npy", features)
        index.save(tmp / "lsh.npz")
        (tmp / "meta.json").write_text(json.dumps({"generator": record.id, "space": space.__dict__,
                                                   "images": len(ids)}))
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.is_dir():
            raise
    yield Progress(1, 1, f"{len(ids)} pool images in the {space.name} space")
    return ids, fitted, features, (index if method == "lsh" else ExactIndex(features))


# ---- the query --------------------------------------------------------------------------------------


def gan_query_job(project: Project, *, strategy: str, batch: int, params: Mapping | None = None,
                  seed: int = 0, checkpoint_id: int | None = None, device: str | None = None):
    """GAAL or ASAL: choose (ASAL) or make (GAAL) `batch` images and open a round with them.
    Returns a session.QueryResult."""
    from atl_desktop.loop.session import ModelChoice, QueryResult, load_model, unlabelled_pool

    params = dict(params or {})
    if strategy not in KNOWN_PARAMS:
        raise ProjectError(f"{strategy!r} is not a GAN strategy.")
    unknown = sorted(set(params) - KNOWN_PARAMS[strategy])
    if unknown:
        raise ProjectError(f"{strategy} has no parameter {', '.join(unknown)}; it takes "
                           f"{', '.join(sorted(KNOWN_PARAMS[strategy]))}.")
    if project.latest_generator() is None:
        yield from relabel(gan_train_job(project, default_gan_config(project, device=device)), "training the GAN")
    gan, record = load_gan(project, params.get("generator"))
    model, _, used_checkpoint = load_model(project, ModelChoice(checkpoint_id=checkpoint_id))
    torch_device = resolve_device(device)
    ctx = GanContext(gan.to(torch_device), model.to(torch_device), torch_device)
    rng = np.random.default_rng(seed)
    unlabelled, _ = unlabelled_pool(project)
    record_params = {"batch": batch, "params": params, "seed": seed, "generator": record.id,
                     "pool_size": int(len(unlabelled))}
    if strategy == "gaal":
        yield Progress(0, None, f"searching the GAN's latent space for {batch} uncertain images (GAAL)")
        search = {k: params[k] for k in SEARCH_PARAMS if k in params}
        made = synthesise("gaal", SelectionInput(generative=ctx), batch, rng, **search)
        return _record_gaal(project, made, record, used_checkpoint, record_params)
    if not len(unlabelled):
        raise ProjectError("Every target pool image is labelled or skipped; nothing to choose from.")
    space = _space_config(params, seed)
    ids, fitted, features, index = yield from pool_features_job(
        project, gan, record, space, method="exact" if params.get("exact") else "lsh", device=torch_device)
    rows = np.searchsorted(np.asarray(ids, dtype=np.int64), unlabelled)
    ctx.pool = PoolFeatures(fitted, index, ExactIndex(features), rows)
    yield Progress(0, None, f"matching {batch} generated images to the pool (ASAL, {space.name} space)")
    matches = asal_matches(ctx, batch, rng, **{k: params[k] for k in ASAL_PARAMS if k in params})
    chosen = unlabelled[matches.rows]
    probs = yield from _predict(project, model, chosen, torch_device)
    items = [_item(int(i), float(h), p, f"looks like a GAN-made image the model is unsure of (entropy {h:.2f} "
                   f"nats; feature distance {d:.2f}, {space.name} space)")
             for i, h, d, p in zip(chosen, matches.entropy, matches.distances, probs, strict=True)]
    record_params.update(chosen=[int(i) for i in chosen], lookup_candidates=matches.candidates,
                         lookup_fallback=matches.fallback)
    round_id = project.start_round("asal", record_params, checkpoint_id=used_checkpoint)
    return QueryResult(round_id, "asal", items, int(len(unlabelled)), params)


def _item(image_id: int, score: float, probs: np.ndarray, reason: str, synthetic: bool = False):
    from atl_desktop.loop.session import TOP_PREDICTIONS, QueryItem

    order = np.argsort(-probs, kind="stable")[:TOP_PREDICTIONS]
    return QueryItem(image_id, score, reason, [(int(c), float(probs[c])) for c in order], synthetic=synthetic)


def _record_gaal(project: Project, made, record, checkpoint_id: int | None, record_params: dict):
    from atl_desktop.loop.session import QueryResult

    encoded = [png_bytes(image) for image in made.images]
    height, width = made.images.shape[1:3]
    mode = "L" if made.images.ndim == 3 else "RGB"
    with project.transaction():
        ids = [project.add_synthetic_image(data, sha256=sha256_bytes(data), generator_id=record.id,
                                           latent=latent.tolist(), width=width, height=height, mode=mode,
                                           strategy="gaal", score=float(h))
               for data, latent, h in zip(encoded, made.latents, made.entropy, strict=True)]
        round_id = project.start_round("gaal", {**record_params, "chosen": ids, "synthetic": True},
                                       checkpoint_id=checkpoint_id)
        project.set_synthetic_round(ids, round_id)
    items = [_item(i, float(h), p, f"SYNTHETIC: made by the GAN for the model's uncertainty (entropy {h:.2f} "
                   f"nats, from {h0:.2f} at its random start)", synthetic=True)
             for i, h, h0, p in zip(ids, made.entropy, made.entropy_start, made.probs, strict=True)]
    return QueryResult(round_id, "gaal", items, record_params["pool_size"], record_params["params"])


def _predict(project: Project, model, image_ids: np.ndarray, device: torch.device):
    """Softmax of the classifier on a few pool images (for the tiles' suggestions)."""
    from atl_desktop.data.datasets import ImageDataset
    from atl_desktop.loop.rounds import predict_probs
    from atl_desktop.models.transforms import input_transform

    dataset = ImageDataset([project.image_path(project.image(int(i))) for i in image_ids], None,
                           input_transform(model.spec))
    return (yield from predict_probs(model, dataset, device=str(device), message="predicting the chosen images"))
