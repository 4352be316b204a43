"""Pretrained weights from local files only; nothing here downloads.

ImageNet weights come from torchvision's weights API, but only when the file is
already in torch's hub cache (`torch.hub.get_dir()/checkpoints`): we compute
the file name from the weights' URL and read the file ourselves with
`torch.load(weights_only=True)`, so torchvision's downloader is never called.
Local files are .safetensors or .pth/.pt state dicts; a file that would need
unpickling of Python objects is refused, because unpickling can run code.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor

from atl_desktop.store.errors import ProjectError

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
NESTED_KEYS = ("state_dict", "model", "model_state_dict")


class WeightsError(ProjectError):
    """Weights that are missing, unreadable, unsafe or do not fit the model."""


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_weights_file(backbone: str) -> tuple[Path, str]:
    """Where torchvision's default weights for `backbone` must be, and their URL."""
    from torchvision.models import get_model_weights

    url = get_model_weights(backbone).DEFAULT.url
    return hub_checkpoint_dir() / url.rsplit("/", 1)[-1], url


def load_imagenet_state(backbone: str) -> dict[str, Tensor]:
    """The ImageNet state dict of a torchvision backbone, from the local cache only."""
    path, url = imagenet_weights_file(backbone)
    if not path.is_file():
        raise WeightsError(
            f"Pretrained ImageNet weights for {backbone} are not on this machine: put "
            f"{path.name} in {path.parent} (it can be fetched elsewhere from {url}), "
            f"or train without pretrained weights (`--weights none`)."
        )
    state = load_weights_file(path)
    if backbone.startswith("densenet"):
        state = _renamed_densenet_keys(state)
    return state


def load_weights_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A flat name -> tensor dict from a .safetensors or a .pth/.pt file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"Cannot read {path.name} as safetensors: {e}") from e
    if suffix not in TORCH_SUFFIXES:
        raise WeightsError(
            f"{path.name}: weights must be a .safetensors file or a .pth/.pt state dict."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path.name} contains pickled Python objects, which ATL Desktop does not load "
            "because unpickling can run arbitrary code. Save only the weights: "
            "torch.save(model.state_dict(), ...) or safetensors."
        ) from e
    except (RuntimeError, OSError, EOFError) as e:
        raise WeightsError(f"Cannot read {path.name} as a PyTorch weights file: {e}") from e
    return _flat_state_dict(obj, path.name)


def _flat_state_dict(obj: object, name: str) -> dict[str, Tensor]:
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{name} does not hold a state dict (a mapping of names to tensors).")
    # Weights saved from torch.nn.DataParallel carry a "module." prefix.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


_DENSENET_OLD_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _renamed_densenet_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # The published DenseNet files predate a rename: "norm.1.weight" is now "norm1.weight".
    return {_DENSENET_OLD_KEY.sub(lambda m: m.group(1) + m.group(2), k): v for k, v in state.items()}
