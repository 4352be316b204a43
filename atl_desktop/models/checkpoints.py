"""Checkpoints: safetensors files with JSON metadata, content-addressed in the project.

The metadata (backbone, class list, input specification, parent, round,
training configuration, seed, metrics, library versions) sits in the
safetensors header under the key "atl", so a file describes itself even
outside a project. In a project the file is written atomically to
data_dir/checkpoints/<sha256>.safetensors and recorded with its hash.
Loading rebuilds the architecture from the metadata and refuses, saying exactly
what differs, when the weights or the class list do not fit.
"""

from __future__ import annotations

import json
import os
import platform
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from atl_desktop.models.classifier import Classifier, InputSpec
from atl_desktop.models.registry import BACKBONES, build_model, state_dict_mismatch
from atl_desktop.store.errors import ProjectError
from atl_desktop.store.files import atomic_write_bytes, sha256_bytes

FORMAT = "atl-checkpoint/1"
METADATA_KEY = "atl"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ProjectError):
    """A checkpoint that cannot be used, with the exact reason."""


def library_versions() -> dict[str, str]:
    import numpy
    import safetensors
    import torchvision

    import atl_desktop

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "atl_desktop": atl_desktop.__version__,
    }


def checkpoint_metadata(
    model: Classifier,
    *,
    classes: Sequence[str],
    parent_id: int | None = None,
    round: int | None = None,
    config: dict | None = None,
    metrics: dict | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    if len(classes) != model.num_classes:
        raise CheckpointError(
            f"The model has {model.num_classes} outputs but {len(classes)} class names were given."
        )
    return {
        "format": FORMAT,
        "backbone": model.backbone_name,
        "classes": list(classes),
        "input": model.spec.to_dict(),
        "bottleneck_dim": model.bottleneck_dim,
        "parent_id": parent_id,
        "round": round,
        "config": config or {},
        "seed": seed,
        "metrics": metrics or {},
        "versions": library_versions(),
    }


def checkpoint_bytes(model: Classifier, metadata: dict[str, Any]) -> bytes:
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return save_safetensors(tensors, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def save_checkpoint(
    project,
    model: Classifier,
    *,
    classes: Sequence[str],
    parent_id: int | None = None,
    round: int | None = None,
    config: dict | None = None,
    metrics: dict | None = None,
    seed: int | None = None,
) -> int:
    """Write the model into the project and record it; returns the checkpoint id."""
    meta = checkpoint_metadata(model, classes=classes, parent_id=parent_id, round=round,
                               config=config, metrics=metrics, seed=seed)
    data = checkpoint_bytes(model, meta)
    sha = sha256_bytes(data)
    relative = f"{CHECKPOINT_DIR}/{sha}.safetensors"
    target = Path(project.data_dir) / relative
    if not target.exists():
        atomic_write_bytes(target, data)
    return project.add_checkpoint(
        file=relative, sha256=sha, backbone=model.backbone_name, classes=list(classes),
        parent_id=parent_id, round=round, metrics=metrics or {}, config=config or {},
    )


def load_checkpoint(project, checkpoint_id: int | None = None, *, classes: Sequence[str] | None = None):
    """(model, record) for a project checkpoint (None = the latest).

    With `classes`, the checkpoint's class list must equal it (same names, same order).
    """
    record = project.latest_checkpoint() if checkpoint_id is None else project.checkpoint(checkpoint_id)
    if record is None:
        raise CheckpointError(f"{Path(project.path).name} has no checkpoint yet; train a model first.")
    path = Path(project.data_dir) / record.file
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {record.id}: file {path} is missing.")
    data = path.read_bytes()
    if sha256_bytes(data) != record.sha256:
        raise CheckpointError(f"Checkpoint {record.id}: {path.name} has changed or is damaged (sha256 differs).")
    meta = _metadata(data, path.name)
    if meta["backbone"] != record.backbone:
        raise CheckpointError(
            f"Checkpoint {record.id}: the project records backbone {record.backbone} "
            f"but the file holds {meta['backbone']}."
        )
    if list(meta["classes"]) != list(record.classes):
        raise CheckpointError(
            f"Checkpoint {record.id}: the file's classes differ from the project's record: "
            + class_list_difference(record.classes, meta["classes"])
        )
    model = _model_from(data, meta, path.name, classes)
    return model, record


def save_model_file(
    path: str | os.PathLike,
    model: Classifier,
    *,
    classes: Sequence[str],
    config: dict | None = None,
    metrics: dict | None = None,
    seed: int | None = None,
) -> Path:
    """Write a self-describing model file outside any project (atomically)."""
    meta = checkpoint_metadata(model, classes=classes, config=config, metrics=metrics, seed=seed)
    return atomic_write_bytes(path, checkpoint_bytes(model, meta))


def load_model_file(
    path: str | os.PathLike, *, classes: Sequence[str] | None = None
) -> tuple[Classifier, dict[str, Any]]:
    """(model, metadata) from a file written by `save_model_file` or `save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Model file {path} does not exist.")
    data = path.read_bytes()
    meta = _metadata(data, path.name)
    return _model_from(data, meta, path.name, classes), meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path.name} is not a safetensors file.")
        (n,) = struct.unpack("<Q", head)
        return _parse_header(f.read(n), path.name)


def class_list_difference(expected: Sequence[str], found: Sequence[str]) -> str:
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if not parts:
        parts.append(f"same classes in another order: {list(found)} instead of {list(expected)}")
    return "; ".join(parts)


def _metadata(data: bytes, name: str) -> dict[str, Any]:
    if len(data) < 8:
        raise CheckpointError(f"{name} is not a safetensors file.")
    (n,) = struct.unpack("<Q", data[:8])
    return _parse_header(data[8 : 8 + n], name)


def _parse_header(header: bytes, name: str) -> dict[str, Any]:
    try:
        meta = json.loads(json.loads(header)["__metadata__"][METADATA_KEY])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{name} is not an ATL Desktop checkpoint (no metadata).") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{name} has an unknown checkpoint format {meta.get('format')!r}.")
    return meta


def _model_from(data: bytes, meta: dict, name: str, classes: Sequence[str] | None) -> Classifier:
    if classes is not None and list(classes) != list(meta["classes"]):
        raise CheckpointError(
            f"{name} was trained for other classes: {class_list_difference(classes, meta['classes'])}"
        )
    backbone = meta["backbone"]
    if backbone not in BACKBONES:
        raise CheckpointError(f"{name} needs backbone {backbone!r}, which this version does not know.")
    spec = InputSpec.from_dict(meta["input"])
    model = build_model(backbone, len(meta["classes"]), input_size=spec.size,
                        bottleneck_dim=meta.get("bottleneck_dim"), seed=0)
    state = load_safetensors(data)
    problems = state_dict_mismatch(model, state)
    if problems:
        raise CheckpointError(f"{name} does not fit a {backbone} with {len(meta['classes'])} classes: {problems}")
    model.load_state_dict(state, strict=True)
    model.spec = spec
    model.eval()
    return model
