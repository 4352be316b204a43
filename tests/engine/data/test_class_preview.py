"""class_names_in: the classes an import would create, read without decoding images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from atl_desktop.data.importers import SourceError, class_names_in


def _png(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)


def test_class_folders_csv_labels_and_npz_names(tmp_path):
    for name in ("stroma", "adipose"):
        _png(tmp_path / "tree" / name / "a.png")
    (tmp_path / "tree" / "empty").mkdir()  # holds no images: not a class
    assert class_names_in(tmp_path / "tree") == ["adipose", "stroma"]

    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na.png,tumour\nb.png,normal\nc.png,tumour\nd.png,\n")
    assert class_names_in(csv) == ["tumour", "normal"]  # first seen first, blanks ignored

    x = np.zeros((3, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "named.npz", x=x, y=np.array([0, 1, 0]), classes=np.array(["a", "b", "c"]))
    assert class_names_in(tmp_path / "named.npz") == ["a", "b", "c"]
    np.savez(tmp_path / "bare.npz", x_train=x, y_train=np.array([[2], [0], [2]]), x_test=x[:1],
             y_test=np.array([[5]]))
    assert class_names_in(tmp_path / "bare.npz") == ["0", "2", "5"]


def test_unlabelled_folder_has_no_classes_and_bad_files_say_why(tmp_path):
    _png(tmp_path / "flat" / "a.png")
    _png(tmp_path / "flat" / "sub" / "b.png")
    assert class_names_in(tmp_path / "flat") == []
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="not a readable .npz"):
        class_names_in(tmp_path / "broken.npz")
