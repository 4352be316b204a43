"""Per-backbone input handling: colour mode, size, normalisation and augmentation.

Grayscale images are replicated to three channels for RGB backbones. Random
augmentations draw from torch's generator of the calling thread (or of a
DataLoader worker, which the loader seeds from its own generator); the training
loop runs them inside its private random stream, so they are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from atl_desktop.data.stain import RandomHEDJitter, StainConfig, StainNormalise
from atl_desktop.models.classifier import InputSpec
from atl_desktop.store.keys import AUGMENTATIONS

HED_SIGMA = 0.05  # Tellez et al.'s "HED-light"


class RandomRot90:
    """Rotate by a random multiple of 90 degrees (tissue has no up)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        k = int(torch.randint(4, ()).item())
        if k == 0:
            return img
        return img.transpose((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                              Image.Transpose.ROTATE_270)[k - 1])


class ToMode:
    """Convert to the colour mode the backbone wants (L -> RGB replicates the channel)."""

    def __init__(self, channels: int):
        self.mode = "RGB" if channels == 3 else "L"

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)


def input_transform(
    spec: InputSpec, *, train: bool = False, augment: str = "none"
) -> Callable[[Image.Image], Tensor]:
    """PIL image -> normalised tensor (channels, size, size) for a model with `spec`.

    augment (training only): "natural" = random resized crop, horizontal flip
    and mild colour jitter; "histology" = flips, 90-degree rotations and mild
    colour jitter (stain variation), no cropping; "hed" = flips, rotations and
    HED stain augmentation (Tellez et al., sigma 0.05); "none" = as at inference.
    A stain normalisation in `spec.stain` comes first, in training and inference.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}")
    size = spec.size
    steps: list[Callable] = []
    if spec.stain:  # on the RGB image, before anything else
        steps.append(StainNormalise(StainConfig.from_json(spec.stain)))
    steps.append(ToMode(spec.channels))
    if train and augment == "natural":
        steps += [
            T.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
        ]
    else:
        steps += [T.Resize(size, antialias=True), T.CenterCrop(size)]
        if train and augment in ("histology", "hed"):
            steps += [T.RandomHorizontalFlip(), T.RandomVerticalFlip(), RandomRot90()]
            steps.append(RandomHEDJitter(HED_SIGMA) if augment == "hed" else
                         T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.04))
    steps += [T.ToTensor(), T.Normalize(spec.mean[: spec.channels], spec.std[: spec.channels])]
    return T.Compose(steps)
