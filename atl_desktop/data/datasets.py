"""Torch datasets over image files, arrays and projects, and loaders for .npz and class folders.

Every item is `(transform(image), label)` where the image is the 8-bit "RGB" or
"L" PIL image that `load_image` gives and the label is an int (-1: unlabelled).
Without a transform the image becomes a float tensor (C, H, W) in [0, 1].
Datasets hold paths and numbers only (no open project), so DataLoader workers
can pickle them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from atl_desktop.data.decode import DEFAULT_MAX_SIDE, IMAGE_SUFFIXES, load_image
from atl_desktop.data.importers import SourceError
from atl_desktop.store import FrameRef, PatchRef, Project, ProjectError

UNLABELLED = -1
Transform = Callable[[Image.Image], torch.Tensor]


def to_tensor(img: Image.Image) -> torch.Tensor:
    """The default transform: float32 (C, H, W) in [0, 1]."""
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = pixels[None]
    else:
        pixels = pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels))


class ImageDataset(Dataset):
    """Images from files; labels are class indices, or None for an unlabelled set."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | None = None,
        transform: Transform | None = None,
        max_side: int = DEFAULT_MAX_SIDE,
    ):
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels.")
        # A patch of a slide (PatchRef) or a frame of a file (FrameRef) stays a reference;
        # load_image reads it.
        self.paths = [p if isinstance(p, (PatchRef, FrameRef)) else Path(p) for p in paths]
        self.labels = None if labels is None else [int(v) for v in labels]
        self.transform = transform
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = load_image(self.paths[index], max_side=self.max_side)
        label = UNLABELLED if self.labels is None else self.labels[index]
        return (self.transform or to_tensor)(img), label


class AugmentedCopies(Dataset):
    """An image dataset whose items also carry m augmented copies: x is (1 + m, C, H, W).

    For AIFT on slides: a patch's copies are crops jittered around its location,
    read from the slide (`data.slides.read_jittered`); a plain image's copies are
    random crops inside it (side in [min_scale, 1], mirrored with probability 1/2),
    as the scoring pass makes them for pools of plain images. Each item draws from
    its own generator, seeded by (seed, image id), so copies do not depend on the
    batch order.
    """

    def __init__(self, dataset: ImageDataset, copies: int, min_scale: float = 0.6, seed: int = 0):
        self.dataset = dataset
        self.copies = copies
        self.min_scale = min_scale
        self.seed = seed
        self.image_ids = getattr(dataset, "image_ids", list(range(len(dataset))))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from atl_desktop.data.slides import read_jittered

        path = self.dataset.paths[index]
        img = load_image(path, max_side=self.dataset.max_side)
        rng = np.random.default_rng([self.seed, int(self.image_ids[index])])
        if isinstance(path, PatchRef):
            copies = [read_jittered(path, rng, self.min_scale) for _ in range(self.copies)]
        else:
            copies = [_random_crop(img, rng, self.min_scale) for _ in range(self.copies)]
        transform = self.dataset.transform or to_tensor
        x = torch.stack([transform(img)] + [transform(c) for c in copies])
        label = UNLABELLED if self.dataset.labels is None else self.dataset.labels[index]
        return x, label


def _random_crop(img: Image.Image, rng: np.random.Generator, min_scale: float) -> Image.Image:
    side = max(1, int(round(min(img.size) * rng.uniform(min_scale, 1.0))))
    x = int(rng.integers(0, img.width - side + 1))
    y = int(rng.integers(0, img.height - side + 1))
    crop = img.crop((x, y, x + side, y + side)).resize(img.size, Image.Resampling.BILINEAR)
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


class ArrayDataset(Dataset):
    """Images from a uint8 array (N, H, W) or (N, H, W, 3); items as in ImageDataset."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None, transform: Transform | None = None):
        x = np.asarray(x)
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
            raise ValueError(f"x must be uint8 (N, H, W) or (N, H, W, 3); got {x.dtype} {x.shape}.")
        if y is not None:
            y = np.asarray(y).reshape(-1)
            if len(y) != len(x):
                raise ValueError(f"{len(x)} images but {len(y)} labels.")
        self.x = x
        self.y = y
        self.transform = transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = self.x[index]
        img = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
        label = UNLABELLED if self.y is None else int(self.y[index])
        return (self.transform or to_tensor)(img), label


def project_dataset(
    project: Project,
    *,
    domain: str | None = "target",
    split: str | None = "pool",
    labelled: bool | None = True,
    transform: Transform | None = None,
    use_truth: bool = False,
    for_training: bool = False,
) -> ImageDataset:
    """The project's images of one domain and split as a dataset.

    labelled=True: only images with a label; False: only unlabelled ones (label
    -1); None: all (-1 where unlabelled). Labels are class positions, indices into
    `project.class_names()`. `use_truth` takes labels from the hidden ground truth
    (simulations) instead of the label history. `for_training` leaves out the labels of
    audit images still held out (they never train a model). The dataset's `image_ids`
    lists the project ids in item order (ascending).
    """
    position = project.class_index()
    source = (project.truth(domain, split) if use_truth
              else project.current_labels(domain, split, for_training=for_training))
    known = {image_id: position[c] for image_id, c in source.items() if c in position}
    records = [
        r for r in project.images(domain, split)
        if labelled is None or (r.id in known) == labelled
    ]
    dataset = ImageDataset(
        [project.image_path(r) for r in records],
        [known.get(r.id, UNLABELLED) for r in records],
        transform,
    )
    dataset.image_ids = [r.id for r in records]
    return dataset


def load_npz(path: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """x, y (None if absent), class names from an .npz with x/y or x_<split>/y_<split> (+ classes).

    Loaded with allow_pickle=False. Without a `classes` key the names are "0".."max(y)".
    """
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise SourceError(f"{path}: not a readable .npz file ({error}).") from None
    with arrays:
        keys = set(arrays.files)
        if f"x_{split}" in keys:
            x_key, y_key = f"x_{split}", f"y_{split}"
        elif split == "train" and "x" in keys:
            x_key, y_key = "x", "y"
        else:
            raise SourceError(f"{path}: no images for split {split!r} (keys: {', '.join(sorted(keys))}).")
        x = arrays[x_key]
        y = arrays[y_key].reshape(-1).astype(np.int64) if y_key in keys else None
        if "classes" in keys:
            classes = [str(c) for c in arrays["classes"]]
        else:
            classes = [str(i) for i in range(int(y.max()) + 1)] if y is not None and len(y) else []
    return x, y, classes


def load_imagefolder(root: str | os.PathLike) -> tuple[list[Path], list[int], list[str]]:
    """paths, labels, classes of a class-per-subfolder tree, in torchvision ImageFolder's order.

    Classes are the sorted names of subfolders that hold images; files are taken
    recursively with an image extension, ordered as ImageFolder orders them.
    """
    root = Path(root)
    if not root.is_dir():
        raise ProjectError(f"{root}: no such folder.")
    per_class: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            files = [
                Path(folder) / name
                for folder, _dirs, names in sorted(os.walk(entry.path, followlinks=True))
                for name in sorted(names)
                if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
            ]
            if files:
                per_class[entry.name] = files
    classes = sorted(per_class)
    paths = [p for c in classes for p in per_class[c]]
    labels = [i for i, c in enumerate(classes) for _ in per_class[c]]
    return paths, labels, classes
