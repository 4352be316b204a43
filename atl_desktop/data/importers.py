"""Import images into a project: a folder, a class-per-subfolder tree, a CSV, or a NumPy .npz.

DICOM files are images like any other (`data.dicom` says which files and how they
are read); each frame of a multi-frame file becomes an image of its own, named by
its file and frame number (`store.frames`).

Each import is a job (a generator of `Progress` that returns an `ImportReport`).
Files are read once: the bytes are hashed (sha256, the image's identity) and
decoded from memory to prove they are images. Bad files are skipped with the
reason, never abort the import. An image whose content is already in the project
is merged with it and counted as a duplicate.

Work goes in batches: the files of a batch are read and checked outside any
transaction, then written in one short transaction. Every yield lies between
transactions, so a cancelled import leaves exactly the batches committed so far.

Images are referenced where they are (`stored="ref"`, a path relative to the
project's folder) unless `copy=True`; arrays from an .npz are always copied into
the project's content-addressed media folder as lossless PNG.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from atl_desktop.data import dicom
from atl_desktop.data.decode import (
    DEFAULT_MAX_SIDE,
    IMAGE_SUFFIXES,
    ImageDecodeError,
    caught_warnings,
    check_bytes,
    read_file_stat,
)
from atl_desktop.jobs import Job, Progress
from atl_desktop.store import DOMAINS, SPLITS, NewImage, Project, ProjectError
from atl_desktop.store.errors import storage_error
from atl_desktop.store.files import sha256_bytes
from atl_desktop.store.frames import frame_location, frame_sha256

FORMATS = ("folder", "imagefolder", "csv", "npz")
LABEL_MODES = ("labels", "truth", "none")
NPZ_SPLITS = {"train": "pool", "val": "val", "test": "test"}  # npz key suffix -> project split
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
CSV_PATH_HEADERS = frozenset({"path", "file", "filename", "file_name", "image", "image_path", "filepath"})
CSV_LABEL_HEADERS = frozenset({"label", "class", "class_name", "category", "target", "y"})
_PROGRESS_EVERY_S = 0.1
_PROJECT_FILES = (".atl", ".atl-wal", ".atl-shm", ".atl-journal")  # a project and SQLite's files beside it


class SourceError(ProjectError):
    """A source that cannot be imported at all (missing, wrong format, bad arrays)."""


@dataclass(frozen=True)
class ImportOptions:
    """How to import; serialises to JSON (`asdict`) for the project's history."""

    format: str | None = None  # one of FORMATS; None: detect from the source
    domain: str = "target"  # "source" (labelled data of another domain) or "target"
    split: str | None = None  # None: "pool", or the npz key's split
    labels: str = "labels"  # "labels": label events; "truth": hidden ground truth; "none"
    copy: bool = False  # copy files into the project's media folder
    max_side: int = DEFAULT_MAX_SIDE
    batch_size: int = 10000  # images per transaction, at most (bounds what a batch holds in memory)
    commit_seconds: float = 1.0  # commit at least this often (bounds what a cancel discards)

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise SourceError(f"Unknown import format {self.format!r}; use one of {', '.join(FORMATS)}.")
        if self.domain not in DOMAINS:
            raise SourceError(f"Unknown domain {self.domain!r}; use one of {', '.join(DOMAINS)}.")
        if self.split is not None and self.split not in SPLITS:
            raise SourceError(f"Unknown split {self.split!r}; use one of {', '.join(SPLITS)}.")
        if self.labels not in LABEL_MODES:
            raise SourceError(f"Unknown labels option {self.labels!r}; use one of {', '.join(LABEL_MODES)}.")
        if self.batch_size < 1 or self.max_side < 1:
            raise SourceError("batch_size and max_side must be positive.")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ImportReport:
    """What an import did. `image_ids` follows the source order (merged duplicates included)."""

    source: str = ""
    format: str = ""
    labels: str = "labels"  # how labels were recorded: ImportOptions.labels
    added: int = 0
    duplicates: int = 0
    labelled: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # duplicates labelled otherwise
    classes_added: list[str] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)

    def summary(self, max_listed: int = 10) -> str:
        lines = [
            f"Imported {self.source} ({self.format}): {self.added} new images, "
            f"{self.duplicates} duplicates merged, {len(self.skipped)} skipped, "
            + (f"{self.labelled} with hidden ground truth." if self.labels == "truth"
               else f"{self.labelled} labelled.")
        ]
        if self.classes_added:
            lines.append(f"New classes: {', '.join(self.classes_added)}.")
        for title, entries in (("Skipped", self.skipped), ("Label conflicts (kept the existing label)", self.conflicts)):
            if not entries:
                continue
            lines.append(f"{title}:")
            lines += [f"  {path}: {reason}" for path, reason in entries[:max_listed]]
            if len(entries) > max_listed:
                lines.append(f"  ... and {len(entries) - max_listed} more")
        return "\n".join(lines)


# ---- what a source holds -----------------------------------------------------------


class _Item(NamedTuple):
    """One image to import: a file, or one image of an array.

    (Tuples rather than dataclasses: a source may hold a million of them.)
    """

    name: str  # for messages (and original_path of an array)
    split: str
    class_name: str | None
    path: str | None = None
    link: bool = False  # the file is a symbolic link (its target is what the project refers to)
    array: np.ndarray | None = None


@dataclass(frozen=True)
class _Plan:
    items: list[_Item]
    classes: list[str]  # in the order they should be created
    skipped: list[tuple[str, str]]


# An item that was read and checked, and the row to record for it (a plain pair: one per file).
_Ready = tuple[_Item, NewImage]


# ---- entry point ---------------------------------------------------------------------


def import_source(
    project: Project, source: str | os.PathLike, options: ImportOptions | None = None
) -> Job:
    """Import `source` into `project`; a job returning an `ImportReport`."""
    options = options or ImportOptions()
    source = Path(source)
    if not source.exists():
        raise SourceError(f"{source}: no such file or folder.")
    fmt = options.format or detect_format(source)
    if fmt in ("csv", "npz") and not source.is_file():
        raise SourceError(f"{source}: a {fmt} import needs a file, not a folder.")
    if fmt == "imagefolder" and not source.is_dir():
        raise SourceError(f"{source}: a class-per-subfolder import needs a folder.")
    yield Progress(0, None, f"reading {source.name}")
    plan = _PLANNERS[fmt](project, source, options)
    report = ImportReport(
        source=printable(str(source)), format=fmt, labels=options.labels, skipped=list(plan.skipped)
    )
    class_ids = _create_classes(project, plan.classes, options, report)
    writer = _Writer(project, options, class_ids, report, label_source=printable(source.name))
    yield from _run(project, plan.items, options, writer, report)
    return report


def detect_format(source: Path) -> str:
    """Guess the format: .npz, a CSV, a class-per-subfolder tree, or a plain folder.

    A folder is a class-per-subfolder tree when it has no images of its own and at
    least two subfolders that hold images; otherwise it is a folder of unlabelled images.
    """
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix == ".npz":
            return "npz"
        if suffix in CSV_SUFFIXES:
            return "csv"
        if suffix in IMAGE_SUFFIXES or _is_unnamed_dicom(str(source), source.name):
            return "folder"  # a single image
        raise SourceError(
            f"{source}: cannot tell how to import this file; give a folder, a .csv or an .npz."
        )
    entries = [e for e in _scan(source) if not e.name.startswith(".")]
    if any(e.is_file() and _is_image_name(e.name) for e in entries):
        return "folder"
    with_images = [e for e in entries if e.is_dir() and _holds_images(Path(e.path))]
    return "imagefolder" if len(with_images) >= 2 else "folder"


def class_names_in(source: str | os.PathLike) -> list[str]:
    """The class names an import of `source` would create, in import order, without
    reading any image: class folders, a CSV's labels, or an .npz's `classes` (else its
    label values). A folder of unlabelled images has none."""
    source = Path(source)
    fmt = detect_format(source)
    if fmt == "imagefolder":
        return [e.name for e in sorted(_scan(source), key=lambda e: e.name)
                if e.is_dir() and not e.name.startswith(".") and _holds_images(Path(e.path))]
    if fmt == "csv":
        labels = (row[1].strip() for _, row in _read_csv_rows(source) if len(row) > 1)
        return list(dict.fromkeys(label for label in labels if label))
    if fmt == "npz":
        try:
            with np.load(source, allow_pickle=False) as arrays:
                if "classes" in arrays.files:
                    return [str(c) for c in _npz_array(arrays, "classes", source)]
                used = set()
                for key in (k for k in arrays.files if k == "y" or k.startswith("y_")):
                    used.update(int(v) for v in np.unique(_npz_array(arrays, key, source)))
        except (OSError, ValueError) as error:
            raise SourceError(f"{source}: not a readable .npz file ({error}).") from None
        return [str(v) for v in sorted(used)]
    return []


# ---- planners: list what a source holds ----------------------------------------------


def _plan_folder(project: Project, source: Path, options: ImportOptions) -> _Plan:
    split = options.split or "pool"
    if source.is_file():
        if not _utf8(str(source)):
            return _Plan([], [], [(printable(str(source)), _NOT_UTF8)])
        return _Plan([_Item(str(source), split, None, path=str(source), link=source.is_symlink())], [], [])
    files, skipped = _walk_images(source, project)
    return _Plan([_Item(p, split, None, p, link) for p, link in files], [], skipped)


def _plan_imagefolder(project: Project, source: Path, options: ImportOptions) -> _Plan:
    split = options.split or "pool"
    items, skipped, classes = [], [], []
    for entry in sorted(_scan(source), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if not _utf8(entry.path):
            skipped.append((printable(entry.path), _NOT_UTF8))
            continue
        if not entry.is_dir():
            skipped.append((str(path), "not inside a class folder"))
            continue
        files, bad = _walk_images(path, project)
        skipped += bad
        if files:
            classes.append(entry.name)
            items += [_Item(p, split, entry.name, p, link) for p, link in files]
    return _Plan(items, classes, skipped)


def _plan_csv(project: Project, source: Path, options: ImportOptions) -> _Plan:
    split = options.split or "pool"
    rows = _read_csv_rows(source)
    items, skipped, classes = [], [], []
    for number, row in rows:
        raw = row[0].strip()
        label = row[1].strip() if len(row) > 1 and row[1].strip() else None
        if not raw:
            skipped.append((f"{source.name}:{number}", "empty path"))
            continue
        path = Path(raw)
        path = str(path if path.is_absolute() else source.parent / path)
        if label is not None and label not in classes:
            classes.append(label)
        items.append(_Item(path, split, label, path=path, link=os.path.islink(path)))
    return _Plan(items, classes, skipped)


def _plan_npz(project: Project, source: Path, options: ImportOptions) -> _Plan:
    try:
        arrays = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise SourceError(f"{source}: not a readable .npz file ({error}).") from None
    with arrays:
        keys = set(arrays.files)
        parts = [("x", "y", "pool")] if "x" in keys else [
            (f"x_{s}", f"y_{s}", project_split) for s, project_split in NPZ_SPLITS.items()
            if f"x_{s}" in keys
        ]
        if not parts:
            raise SourceError(
                f"{source}: no image arrays; expected key 'x' or x_train/x_val/x_test "
                f"(found {', '.join(sorted(keys)) or 'nothing'})."
            )
        classes = [str(c) for c in _npz_array(arrays, "classes", source)] if "classes" in keys else None
        items: list[_Item] = []
        used: set[int] = set()
        for x_key, y_key, split in parts:
            x = _image_array(_npz_array(arrays, x_key, source), source, x_key)
            y = _label_array(_npz_array(arrays, y_key, source), len(x), source, y_key) if y_key in keys else None
            if y is not None:
                used.update(int(v) for v in np.unique(y))
            names = _npz_class_names(classes, used, source)
            for i in range(len(x)):
                label = None if y is None else names[int(y[i])]
                items.append(_Item(f"{source}:{x_key}[{i}]", options.split or split, label, array=x[i]))
    class_order = classes if classes is not None else [str(v) for v in sorted(used)]
    return _Plan(items, class_order if used else [], [])


def _npz_array(arrays, key: str, source: Path) -> np.ndarray:
    try:
        return arrays[key]
    except ValueError as error:  # object arrays: loading them would unpickle, which can run code
        if "allow_pickle" in str(error):
            raise SourceError(f"{source}: '{key}' holds Python objects, which are never loaded (that "
                              "could run code); save it as a plain numeric array.") from None
        raise SourceError(f"{source}: '{key}' cannot be read ({error}).") from None
    except (OSError, EOFError) as error:
        raise SourceError(f"{source}: '{key}' cannot be read ({error}).") from None


_PLANNERS: dict[str, Callable[[Project, Path, ImportOptions], _Plan]] = {
    "folder": _plan_folder,
    "imagefolder": _plan_imagefolder,
    "csv": _plan_csv,
    "npz": _plan_npz,
}


def _scan(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        raise SourceError(f"{folder}: cannot list this folder ({error.strerror or error}).") from None


def _is_image_name(name: str) -> bool:
    """`os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES`, several times faster (for folders
    of 100,000 files): a suffix needs a dot after something other than leading dots."""
    stem, _, suffix = name.rpartition(".")
    return bool(stem.lstrip(".")) and f".{suffix.lower()}" in IMAGE_SUFFIXES


def _is_unnamed_dicom(path: str, name: str) -> bool:
    """A DICOM file whose name does not say so (IM000001, or named by its UID): only such
    names are opened, to read the preamble and "DICM"; every other file stays unopened."""
    return dicom.may_be_dicom_name(name) and dicom.sniff_file(path)


def _holds_images(folder: Path) -> bool:
    for _root, _dirs, files in os.walk(folder):
        if any(_is_image_name(f) for f in files):
            return True
    return False


def _walk_images(folder: Path, project: Project) -> tuple[list[tuple[str, bool]], list[tuple[str, str]]]:
    """Image files under `folder` as (path, is a symbolic link), in the order of a top-down
    `os.walk` with sorted names; other files are listed as skipped (hidden ones not).

    Like `os.walk`, links to folders are not followed and unreadable folders are passed
    over. Walking with `os.scandir` tells links apart without a system call per file.
    """
    own = os.path.realpath(project.data_dir)
    files: list[tuple[str, bool]] = []
    skipped: list[tuple[str, str]] = []
    pending = [str(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                if not _utf8(entry.path):
                    skipped.append((printable(entry.path), f"a folder {_NOT_UTF8}"))
                elif not entry.is_symlink() and os.path.realpath(entry.path) != own:
                    subfolders.append(entry.path)
            elif not _utf8(entry.path):
                skipped.append((printable(entry.path), _NOT_UTF8))
            elif _is_image_name(entry.name) or _is_unnamed_dicom(entry.path, entry.name):
                files.append((entry.path, entry.is_symlink()))
            elif not entry.name.endswith(_PROJECT_FILES):
                suffix = os.path.splitext(entry.name)[1] or "no extension"
                skipped.append((entry.path, f"not an image file type ({suffix})"))
        pending += reversed(subfolders)  # the first subfolder is walked next
    return files, skipped


# The store keeps paths as UTF-8 text: a name that is not UTF-8 could not be found again.
_NOT_UTF8 = "its name is not valid UTF-8 text; rename it (e.g. with convmv) and import again"


def _utf8(path: str) -> bool:
    """Whether `path` holds no undecodable bytes (Python keeps them as lone surrogates)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str) -> str:
    """`path` fit to print and store, its undecodable bytes shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # as os.walk: what cannot be told a folder is taken for a file
        return False


def _read_csv_rows(source: Path) -> list[tuple[int, list[str]]]:
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"{source}: cannot read this CSV ({error}).") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text), dialect), 1) if row]
    if rows and _is_header(rows[0][1], source.parent):
        rows = rows[1:]
    return rows


def _is_header(row: list[str], folder: Path) -> bool:
    first = row[0].strip()
    if first.lower() in CSV_PATH_HEADERS:
        return True
    second = row[1].strip().lower() if len(row) > 1 else ""
    return second in CSV_LABEL_HEADERS and not (folder / first).exists()


def _image_array(x: np.ndarray, source: Path, key: str) -> np.ndarray:
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise SourceError(
            f"{source}: '{key}' must be uint8 images (N, H, W) or (N, H, W, 3); "
            f"found {x.dtype} {x.shape}."
        )
    return x


def _label_array(y: np.ndarray, n: int, source: Path, key: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:  # MedMNIST keeps labels as (N, 1)
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise SourceError(f"{source}: '{key}' must be {n} integer labels; found {y.dtype} {y.shape}.")
    if n and y.min() < 0:
        raise SourceError(f"{source}: '{key}' has negative labels.")
    return y


def _npz_class_names(classes: list[str] | None, used: set[int], source: Path) -> dict[int, str]:
    if classes is None:
        return {v: str(v) for v in used}
    if used and max(used) >= len(classes):
        raise SourceError(
            f"{source}: label {max(used)} has no name ('classes' holds {len(classes)} names)."
        )
    return dict(enumerate(classes))


# ---- running ---------------------------------------------------------------------------


def _create_classes(
    project: Project, names: list[str], options: ImportOptions, report: ImportReport
) -> dict[str, int]:
    if options.labels == "none" or not names:
        return {}
    ids = {}
    with project.transaction():
        for name in names:
            existing = project.class_by_name(name.strip())
            if existing is None:
                report.classes_added.append(name.strip())
            ids[name] = existing.id if existing is not None else project.add_class(name)
    return ids


def _run(
    project: Project, items: list[_Item], options: ImportOptions, writer: _Writer, report: ImportReport
) -> Iterator[Progress]:
    """Check items and commit them in batches: what `commit_seconds` allowed, or `batch_size`
    items, whichever comes first. Each commit is an fsync (milliseconds), so the time bound
    usually ends a batch: it keeps commits rare for small files and a cancel cheap for large
    ones; the count only bounds memory. Every yield is a cancel point between transactions."""
    locator = _Locator(project)
    try:
        yield from _run_batches(project, items, options, writer, report, locator)
    except (OSError, sqlite3.Error) as error:
        # A full or read-only disk: the batch was rolled back; its media files go too.
        for path in locator.written:
            path.unlink(missing_ok=True)
        problem = storage_error(error, project.data_dir if isinstance(error, OSError) else project.path)
        if problem is None:
            raise
        raise SourceError(f"{problem} The import stopped after {report.added + report.duplicates} "
                          "images; running it again adds the rest.") from None


def _run_batches(
    project: Project, items: list[_Item], options: ImportOptions, writer: _Writer,
    report: ImportReport, locator: _Locator,
) -> Iterator[Progress]:
    total = len(items)
    pending = iter(items)
    batch: list[_Ready] = []
    done = 0
    last_commit = time.monotonic()
    while done < total:
        deadline = min(time.monotonic() + _PROGRESS_EVERY_S, last_commit + options.commit_seconds)
        done += _check_until(deadline, pending, batch, project, options, locator, report)
        now = time.monotonic()
        if len(batch) >= options.batch_size or now - last_commit >= options.commit_seconds or done == total:
            writer.write(batch)
            batch = []
            locator.written.clear()  # committed: no longer orphans if a later batch fails
            last_commit = time.monotonic()
            yield Progress(done, total, "importing", {**_metrics(report), "committed": done})
        else:  # a cancel point: nothing half-written
            yield Progress(done, total, "importing", _metrics(report))


def _check_until(
    deadline: float, pending: Iterator[_Item], batch: list[_Ready], project: Project,
    options: ImportOptions, locator: _Locator, report: ImportReport,
) -> int:
    """Read and check items from `pending` into `batch` (bad ones into the report) until the
    deadline or a full batch; returns how many were taken. One `caught_warnings` serves the
    whole stretch (a few microseconds less per file), which never spans a yield."""
    taken = 0
    with caught_warnings() as caught:
        for item in pending:
            taken += 1
            try:
                batch += _prepare(project, item, options, locator, caught)
            except ImageDecodeError as error:
                report.skipped.append((item.name, _reason(error, item.name)))
            if len(batch) >= options.batch_size or time.monotonic() >= deadline:
                break
    return taken


def _metrics(report: ImportReport) -> dict[str, float]:
    return {"added": report.added, "duplicates": report.duplicates, "skipped": len(report.skipped)}


def _reason(error: ImageDecodeError, name: str) -> str:
    message = str(error)
    return message[len(name) + 2 :] if message.startswith(f"{name}: ") else message


def _prepare(
    project: Project, item: _Item, options: ImportOptions, locator: _Locator,
    caught: list[warnings.WarningMessage],
) -> list[_Ready]:
    """Read, hash and check one item (outside any transaction): its image, or one per frame
    of a multi-frame DICOM file."""
    if item.array is not None:
        return [_prepare_array(project, item, options, locator)]
    data, st = read_file_stat(item.path)
    sha = sha256_bytes(data)
    info = check_bytes(data, name=item.name, max_side=options.max_side, caught=caught)
    width, height = info.oriented_size
    location, absolute = locator.locate(item.path, item.link)
    stored = "ref"
    if options.copy:  # the bytes go into the project's media folder instead
        suffix = os.path.splitext(item.path)[1].lower() or (".dcm" if info.format == "DICOM" else ".img")
        location, stored = _media(project, data, sha, suffix, locator), "media"
    image = NewImage(
        sha, location, stored, absolute, st.st_size, st.st_mtime,
        width, height, info.mode, info.bit_depth, options.domain, item.split,
    )
    if info.format != "DICOM" or info.frames == 1:
        return [(item, image)]
    return [
        (item, image._replace(sha256=frame_sha256(sha, k), location=frame_location(location, k),
                              original_path=frame_location(absolute, k)))
        for k in range(1, info.frames + 1)
    ]


class _Locator:
    """Where files are, relative to the project and absolute, working out each folder only once."""

    def __init__(self, project: Project):
        self.project = project
        self.cwd = os.getcwd()
        self.folders: dict[str, tuple[str, str]] = {}  # folder -> (relative prefix, absolute prefix)
        self.written: list[Path] = []  # media files written for the batch not committed yet

    def locate(self, path: str, link: bool) -> tuple[str, str]:
        """`project.relative_location(path)`, and `Path(path).absolute()` (as named: links kept)."""
        # A path from a planner ends in os.sep + name; rfind is several times faster than
        # os.path.split, and the folder keeps its separator ("" for the working folder).
        cut = path.rfind(os.sep) + 1
        folder, name = path[:cut], path[cut:]
        prefixes = self.folders.get(folder)
        if prefixes is None:
            relative = self.project.relative_location(folder or ".")
            relative = "" if relative == "." else relative + "/"
            prefixes = self.folders[folder] = relative, os.path.join(self.cwd, folder)
        relative, absolute = prefixes
        location = self.project.relative_location(path) if link else relative + name
        return location, absolute + name


def _prepare_array(project: Project, item: _Item, options: ImportOptions, locator: _Locator) -> _Ready:
    pixels = item.array
    mode = "L" if pixels.ndim == 2 else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    data = buffer.getvalue()
    sha = sha256_bytes(data)
    location = _media(project, data, sha, ".png", locator)
    image = NewImage(
        sha, location, "media", item.name, width=pixels.shape[1], height=pixels.shape[0],
        mode=mode, bit_depth=8, domain=options.domain, split=item.split,
    )
    return item, image


def _media(project: Project, data: bytes, sha: str, suffix: str, locator: _Locator) -> str:
    # Content-addressed: writing the same bytes twice is harmless, and a file
    # written by a cancelled batch is simply reused by the next import.
    return project.store_media(data, sha, suffix=suffix, written=locator.written)


class _Writer:
    """Writes checked items in one transaction: images, then labels or truth."""

    def __init__(
        self, project: Project, options: ImportOptions, class_ids: dict[str, int],
        report: ImportReport, label_source: str,
    ):
        self.project = project
        self.options = options
        self.class_ids = class_ids
        self.report = report
        self.annotator = label_source
        self._truth: set[int] | None = None  # images with truth, read on first need

    def write(self, batch: Sequence[_Ready]) -> None:
        labelled, conflicts = 0, []
        with self.project.transaction():
            results = self.project.add_images([image for _, image in batch])
            if self.class_ids:  # there are labels (or truth) to record
                for (item, _), (image_id, is_new) in zip(batch, results, strict=True):
                    outcome = self._label(image_id, is_new, item)
                    labelled += outcome is True
                    if isinstance(outcome, str):
                        conflicts.append((item.name, outcome))
        # The report changes only once the transaction is committed.
        added = sum(is_new for _, is_new in results)
        self.report.added += added
        self.report.duplicates += len(results) - added
        self.report.labelled += labelled
        self.report.image_ids += [image_id for image_id, _ in results]
        self.report.conflicts += conflicts

    def _label(self, image_id: int, is_new: bool, item: _Item) -> bool | str:
        """True when a label (or truth) was recorded; a message when it conflicts."""
        if item.class_name is None or self.options.labels == "none":
            return False
        class_id = self.class_ids[item.class_name]
        if self.options.labels == "truth":
            if self._truth is None:
                self._truth = set(self.project.truth())
            if image_id in self._truth:  # a duplicate keeps the truth it has
                return False
            self.project.set_truth(image_id, class_id)
            self._truth.add(image_id)
            return True
        current = None if is_new else self.project.label_of(image_id)
        if current is None:
            self.project.set_label(image_id, class_id, kind="import", annotator=self.annotator)
            return True
        if current != class_id:
            return f"already labelled differently (kept it; this source says {item.class_name!r})"
        return False
