"""GAAL and ASAL in the simulation (`atl simulate`, benchmarks): the GAN, ASAL's pool index,
and a stand-in for the expert who labels GAAL's synthetic images.

There is no ground truth for an image the GAN has just made, and the papers ask
a person. The simulation asks a proxy instead, chosen here as an **oracle
classifier**: a network of the simulation's backbone trained, once, on every
pool image with its true label (all the knowledge a simulated expert has), for
`oracle_epochs` epochs. It answers with its top class. Its test accuracy is
reported, so it is clear how good an "expert" it is; on real images it is
nearly as good as the labels themselves, and on an ambiguous synthetic image it
gives a definite answer where a person might hesitate, so GAAL's curves are, if
anything, optimistic about label quality. As a check, each GAAL round also
records how often the proxy agrees with a second one, the label of the nearest
real pool image in the GAN's feature space (`oracle_agreement`); low agreement
says the synthetic images are ambiguous.

ASAL needs no proxy: it queries real pool images, which the ground truth labels.

The GAN is trained once per simulation on the (subsampled) pool's images with
no labels, and kept in OUT/runs/ with the oracle, so a rerun reuses both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atl_desktop.active.gan import GanConfig, gan_bytes, gan_from_bytes, images_to_tensor, train_gan
from atl_desktop.active.gansampling import (
    FeatureSpaceConfig,
    GanContext,
    PoolFeatures,
    build_index,
    fit_feature_space,
)
from atl_desktop.active.lsh import ExactIndex
from atl_desktop.active.strategies import SelectionInput, synthesise
from atl_desktop.jobs import Progress, relabel
from atl_desktop.store.files import atomic_write_bytes

ORACLES = ("classifier", "nearest")
GAN_SIZES = (16, 24, 28, 32, 48, 64)


@dataclass(frozen=True)
class GanSimConfig:
    """The GAN, ASAL's feature space and the synthetic-image oracle of a simulation."""

    steps: int = 2000
    width: int = 32
    latent_dim: int = 100
    image_size: int | None = None  # None: the largest of GAN_SIZES not above the pool's image side
    batch_size: int = 64
    seed: int = 0
    space: str = "pca"
    dims: int = 32
    index: str = "lsh"  # or "exact"
    oracle: str = "classifier"
    oracle_epochs: int = 10

    def __post_init__(self) -> None:
        if self.oracle not in ORACLES:
            raise ValueError(f"unknown synthetic-image oracle {self.oracle!r}; use one of {ORACLES}")
        if self.index not in ("lsh", "exact"):
            raise ValueError("index must be lsh or exact")

    def to_json(self) -> dict:
        return asdict(self)

    def gan_config(self, raw_pool: np.ndarray, device: str) -> GanConfig:
        side = min(raw_pool.shape[1:3])
        size = self.image_size or max([s for s in GAN_SIZES if s <= side] or [GAN_SIZES[0]])
        channels = 1 if raw_pool.ndim == 3 else 3
        return GanConfig(image_size=size, channels=channels, latent_dim=self.latent_dim, width=self.width,
                         steps=self.steps, batch_size=self.batch_size, seed=self.seed, device=device,
                         preview_every=0)


@dataclass
class SimGan:
    """What GAAL and ASAL arms share in one simulation."""

    gan: Any
    gan_config: GanConfig
    features: PoolFeatures  # rows filled in per query
    oracle: Any  # a Classifier trained on all pool labels (GAAL only)
    pool_labels: np.ndarray
    device: torch.device
    info: dict

    def context(self, model, unlabelled: np.ndarray) -> GanContext:
        pool = PoolFeatures(self.features.space, self.features.index, self.features.exact, unlabelled)
        return GanContext(self.gan, model, self.device, pool)


def _key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def prepare_job(prepared, sim_config, gan: GanSimConfig, fingerprint: str, classes: list[str],
                out_dir: str | Path | None, *, oracle: bool = True) -> Generator[Progress, None, SimGan]:
    """Train (or reload) the GAN and, for GAAL (`oracle`), the oracle; index the pool in the
    GAN's feature space."""
    from atl_desktop.models.checkpoints import load_model_file, save_model_file

    device = torch.device(sim_config.device)
    gan_config = gan.gan_config(prepared.raw_pool, sim_config.device)
    fields = {"data": fingerprint, "pool": len(prepared.raw_pool), "gan": gan_config.to_json()}
    fields["gan"].pop("device")
    runs = None if out_dir is None else Path(out_dir) / "runs"
    gan_file = None if runs is None else runs / f"gan-{_key(fields)}.safetensors"
    images = images_to_tensor(prepared.raw_pool, gan_config)
    if gan_file is not None and gan_file.is_file():
        net, meta = gan_from_bytes(gan_file.read_bytes(), gan_file.name)
        gan_metrics = meta["metrics"]
    else:
        result = yield from relabel(train_gan(images, gan_config), "training the GAN on the pool")
        net, gan_metrics = result.gan, {**result.metrics, "steps": result.steps}
        if gan_file is not None:
            atomic_write_bytes(gan_file, gan_bytes(net, gan_metrics))
    net.to(device).eval()
    space_config = FeatureSpaceConfig(gan.space, gan.dims, seed=gan.seed)
    space = yield from relabel(fit_feature_space(images, net, space_config, device), "fitting the feature space")
    feats = space.transform(images.to(device))
    exact = ExactIndex(feats)
    index = build_index(feats, net, space, seed=gan.seed) if gan.index == "lsh" else exact
    oracle_fields = {"data": fingerprint, "pool": len(prepared.raw_pool), "backbone": sim_config.backbone,
                     "epochs": gan.oracle_epochs, "seed": gan.seed}
    oracle_file = None if runs is None else runs / f"oracle-{_key(oracle_fields)}.safetensors"
    info = {"gan": gan_config.to_json(), "gan_metrics": gan_metrics, "space": asdict(space_config),
            "index": gan.index}
    model = None
    if oracle and oracle_file is not None and oracle_file.is_file():
        model = load_model_file(oracle_file)[0]
    elif oracle:
        model = yield from _train_oracle(prepared, sim_config, gan, len(classes))
        if oracle_file is not None:
            save_model_file(oracle_file, model, classes=classes, config=oracle_fields, seed=gan.seed)
    if model is not None:
        info.update(oracle=gan.oracle, oracle_test_accuracy=(yield from _accuracy(model, prepared.test, sim_config)))
    return SimGan(net, gan_config, PoolFeatures(space, index, exact, np.arange(len(feats))), model,
                  np.asarray(prepared.pool.labels), device, info)


def _train_oracle(prepared, sim_config, gan: GanSimConfig, n_classes: int):
    """The stand-in expert: the simulation's backbone trained on every pool label."""
    from atl_desktop.models.registry import build_model
    from atl_desktop.transfer.train import TrainConfig, train

    model = build_model(sim_config.backbone, n_classes, seed=gan.seed + 101)
    config = TrainConfig(backbone=sim_config.backbone, epochs=gan.oracle_epochs, batch_size=64, lr=1e-3,
                         patience=0, seed=gan.seed + 101, amp=False, device=sim_config.device)
    yield from relabel(train(model, prepared.pool, config), "training the oracle for synthetic images")
    return model.eval()


def _accuracy(model, dataset, sim_config):
    from atl_desktop.loop.rounds import predict_probs

    probs = yield from predict_probs(model, dataset, batch_size=sim_config.scoring_batch,
                                     device=sim_config.device, message="evaluating the oracle")
    return float(np.mean(probs.argmax(1) == np.asarray(dataset.labels)))


def asal_rows(sim: SimGan, model, unlabelled: np.ndarray, batch: int, rng: np.random.Generator,
              params: dict) -> np.ndarray:
    """ASAL's choice among `unlabelled` pool rows (registry `select`)."""
    from atl_desktop.active.strategies import select

    return unlabelled[select("asal", SelectionInput(generative=sim.context(model, unlabelled)), batch, rng,
                             **params)]


def gaal_labelled(sim: SimGan, model, batch: int, rng: np.random.Generator, params: dict, spec):
    """GAAL's synthetic images, labelled by the oracle: (TensorData for training, round info)."""
    from atl_desktop.simulate import TensorData

    made = synthesise("gaal", SelectionInput(generative=GanContext(sim.gan, model, sim.device)), batch, rng,
                      **params)
    x = images_to_tensor(made.images, sim.gan_config).to(sim.device)
    with torch.no_grad():
        oracle_ctx = GanContext(sim.gan, sim.oracle.to(sim.device).eval(), sim.device)
        by_classifier = oracle_ctx.classify(x).argmax(1).cpu().numpy()
        feats = sim.features.space.transform(x)
    nearest = sim.pool_labels[sim.features.exact.search(feats, 1).indices[:, 0]]
    labels = nearest if sim.info["oracle"] == "nearest" else by_classifier
    info = {"synthetic_entropy": float(made.entropy.mean()),
            "synthetic_entropy_start": float(made.entropy_start.mean()),
            "oracle_agreement": float(np.mean(by_classifier == nearest))}
    return TensorData.from_arrays(made.images, labels, spec), info
