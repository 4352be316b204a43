"""Datasets over files, arrays and projects; the .npz and class-folder loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from atl_desktop.data.datasets import (
    ArrayDataset,
    ImageDataset,
    load_imagefolder,
    load_npz,
    project_dataset,
    to_tensor,
)
from atl_desktop.data.importers import ImportOptions, SourceError, import_source
from atl_desktop.jobs import run_job
from atl_desktop.store import Project

TESTDATA = Path(__file__).resolve().parents[3] / "resources" / "testdata"


def test_to_tensor_by_hand():
    img = Image.fromarray(np.array([[0, 51], [255, 102]], np.uint8))
    t = to_tensor(img)
    assert t.shape == (1, 2, 2) and t.dtype == torch.float32
    torch.testing.assert_close(t[0], torch.tensor([[0.0, 0.2], [1.0, 0.4]]))
    rgb = to_tensor(Image.fromarray(np.array([[[255, 0, 51]]], np.uint8)))
    torch.testing.assert_close(rgb[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))


def test_array_dataset_items_and_loader():
    x = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
    ds = ArrayDataset(x, np.array([4, 7]))
    img, label = ds[1]
    assert label == 7 and img.shape == (3, 3, 3)
    torch.testing.assert_close(img, torch.from_numpy(x[1].transpose(2, 0, 1).astype(np.float32) / 255))
    batch, labels = next(iter(DataLoader(ds, batch_size=2)))
    assert batch.shape == (2, 3, 3, 3) and labels.tolist() == [4, 7]
    assert ArrayDataset(x[..., 0])[0][1] == -1
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(x.astype(np.float32))


def test_image_dataset_with_transform(tmp_path):
    paths = []
    for v in (10, 20):
        paths.append(tmp_path / f"{v}.png")
        Image.new("L", (4, 5), v).save(paths[-1])
    ds = ImageDataset(paths, [0, 1], transform=lambda img: torch.tensor(img.size))
    assert [ds[i][0].tolist() for i in range(2)] == [[4, 5], [4, 5]]
    assert ImageDataset(paths, None)[1][1] == -1
    assert ImageDataset(paths, None)[1][0].max().item() == pytest.approx(20 / 255)


def test_load_npz_single_and_splits():
    x, y, classes = load_npz(TESTDATA / "mnist_600.npz")
    assert x.shape == (600, 28, 28) and y.shape == (600,) and classes == [str(i) for i in range(10)]
    assert np.bincount(y).tolist() == [60] * 10
    xt, yt, _ = load_npz(TESTDATA / "usps_900.npz", split="test")
    assert xt.shape == (300, 16, 16) and len(yt) == 300
    with pytest.raises(SourceError, match="split 'val'"):
        load_npz(TESTDATA / "usps_900.npz", split="val")


def test_load_npz_without_classes(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, x=np.zeros((3, 2, 2), np.uint8), y=np.array([[0], [2], [1]]))
    x, y, classes = load_npz(path)
    assert y.tolist() == [0, 2, 1] and classes == ["0", "1", "2"]


def test_load_imagefolder_matches_torchvision(tmp_path):
    for cls, names in {"zebra": ["b.png", "a.png"], "ant": ["c.jpg"], "ant/deep": ["d.png"]}.items():
        folder = tmp_path / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            Image.new("RGB", (3, 3), (i * 40, 0, 0)).save(folder / name)
    paths, labels, classes = load_imagefolder(tmp_path)
    reference = ImageFolder(str(tmp_path))
    assert classes == reference.classes == ["ant", "zebra"]
    assert [(str(p), lab) for p, lab in zip(paths, labels, strict=True)] == reference.samples


def test_project_dataset_labels_are_positions(tmp_path):
    with Project.create(tmp_path / "p.atl") as project:
        project.add_class("first")  # not in the npz: shifts the positions of the digits
        run_job(import_source(project, TESTDATA / "mnist_600.npz", ImportOptions(labels="labels")))
        names = project.class_names()
        x, y, _ = load_npz(TESTDATA / "mnist_600.npz")
        unlabel = project.images()[0].id
        project.set_label(unlabel, None)

        ds = project_dataset(project, labelled=True)
        assert len(ds) == 599 and unlabel not in ds.image_ids
        k = 5
        img, label = ds[k]
        index = ds.image_ids[k] - 1  # ids follow the npz order here
        assert names[label] == str(y[index])
        torch.testing.assert_close(img[0], torch.from_numpy(x[index].astype(np.float32) / 255))

        pool = project_dataset(project, labelled=False)
        assert pool.image_ids == [unlabel] and pool[0][1] == -1
        assert len(project_dataset(project, labelled=None)) == 600
        assert len(project_dataset(project, split="test")) == 0


def test_project_dataset_from_truth(tmp_path):
    with Project.create(tmp_path / "p.atl") as project:
        run_job(import_source(project, TESTDATA / "pathmnist_270.npz", ImportOptions(labels="truth")))
        assert len(project_dataset(project)) == 0  # no labels given yet
        ds = project_dataset(project, use_truth=True)
        assert len(ds) == 270
        _, y, classes = load_npz(TESTDATA / "pathmnist_270.npz")
        assert project.class_names() == classes
        assert [ds.labels[i] for i in range(0, 270, 37)] == [int(y[ds.image_ids[i] - 1]) for i in range(0, 270, 37)]
        img, _ = ds[0]
        assert img.shape == (3, 28, 28)
