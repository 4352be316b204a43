"""Export labels: a CSV, a JSON document with the full label history, or class folders.

Export only reads the project (open it with `readonly=True`). The class-folder
export writes `OUT/<class>/<image>` ready for torchvision's `ImageFolder`; class
names become safe folder names, and nothing is written outside `OUT`. Patches, frames and
DICOM files are written as PNGs of their pixels (a DICOM header names the patient).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from atl_desktop.data import dicom
from atl_desktop.data.decode import IMAGE_SUFFIXES, load_image
from atl_desktop.jobs import Job, Progress
from atl_desktop.store import FrameRef, ImageRecord, LabelEvent, PatchRef, Project, ProjectError
from atl_desktop.store.files import (
    NotRegularFileError,
    atomic_write_bytes,
    atomic_write_text,
    copy_regular,
    is_within,
)
from atl_desktop.store.project import SIDE_SUFFIXES

EXPORT_FORMATS = ("csv", "json", "imagefolder")
CSV_COLUMNS = ("path", "label", "who", "round", "confidence")
JSON_FORMAT = "atl-desktop-labels"
JSON_VERSION = 1
MAX_NAME_LENGTH = 100
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}
)
_UNSAFE_CHARACTERS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


class ExportError(ProjectError):
    """An export that cannot be done as asked (for example a non-empty target folder)."""


@dataclass
class ExportReport:
    out: str
    format: str
    written: int = 0
    folders: dict[str, str] = field(default_factory=dict)  # class name -> folder name
    missing: list[str] = field(default_factory=list)  # image files not found (not exported)

    def summary(self) -> str:
        text = f"Exported {self.written} labelled images to {self.out} ({self.format})."
        if self.missing:
            text += f" {len(self.missing)} image files are missing and were left out"
            text += f" (first: {self.missing[0]}); `atl info` lists them."
        return text


# ---- safe names ------------------------------------------------------------------------


def safe_name(name: str, fallback: str = "unnamed") -> str:
    """A file or folder name that is valid on Windows, macOS and Linux and cannot leave its folder.

    Separators, control and reserved characters become "_"; trailing dots and
    spaces go; names that are empty, only dots, or reserved on Windows (CON, NUL,
    AUX, COM1, ... also with an extension) are changed; the length is capped.
    """
    cleaned = _UNSAFE_CHARACTERS.sub("_", name).strip().rstrip(". ")
    if not cleaned or set(cleaned) <= {"."}:
        cleaned = fallback
    if cleaned.split(".")[0].upper() in _WINDOWS_RESERVED:
        cleaned = "_" + cleaned
    return cleaned[:MAX_NAME_LENGTH].rstrip(". ") or fallback


def class_folder_names(names: Iterable[str]) -> dict[str, str]:
    """Class name -> distinct safe folder name; a collision (ignoring case) gets "_2", "_3", ..."""
    folders: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = safe_name(name, fallback="unnamed_class")
        folder, n = base, 1
        while folder.lower() in taken:
            n += 1
            folder = f"{base}_{n}"
        taken.add(folder.lower())
        folders[name] = folder
    return folders


# ---- the rows every export shares ----------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    record: ImageRecord
    path: Path | PatchRef | FrameRef
    label: str
    newest: LabelEvent


def _labelled_rows(project: Project) -> list[_Row]:
    names = {c.id: c.name for c in project.classes()}
    records = {r.id: r for r in project.images()}
    newest: dict[int, LabelEvent] = {}
    for event in project.label_history():  # ordered by id: the last one per image wins
        newest[event.image_id] = event
    rows = []
    for image_id, class_id in sorted(project.current_labels().items()):
        if class_id not in names:  # a label of a deleted class is no label any more
            continue
        record = records[image_id]
        rows.append(_Row(record, project.image_path(record), names[class_id], newest[image_id]))
    return rows


def _path_text(path: Path | PatchRef | FrameRef) -> str:
    """An absolute path; for a patch, the slide's path with the patch's place after '#';
    for a frame, the file's path with '#frame=N'."""
    if isinstance(path, FrameRef):
        return str(FrameRef(Path(os.path.abspath(path.path)), path.frame))
    return str(path) if isinstance(path, PatchRef) else os.path.abspath(path)


def _as_png(path: Path | PatchRef | FrameRef) -> bool:
    """Written as a PNG of its pixels rather than copied: a patch or frame has no file of its
    own, and a DICOM file's header holds the patient's name and ids, which exports never carry."""
    return isinstance(path, (PatchRef, FrameRef)) or dicom.has_dicom_name(path.name) or (
        dicom.may_be_dicom_name(path.name) and dicom.sniff_file(str(path)))


def _png(img) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _who(event: LabelEvent) -> str:
    return f"{event.kind}:{event.annotator}" if event.annotator else event.kind


# ---- CSV and JSON ------------------------------------------------------------------------------


def export_csv(project: Project, out: str | os.PathLike, overwrite: bool = False) -> ExportReport:
    """One row per labelled image: path (absolute), label, who, round, confidence."""
    out = check_file_target(Path(out), overwrite)
    refuse_project_files(project, out)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    rows = _labelled_rows(project)
    for row in rows:
        event = row.newest
        writer.writerow([
            _path_text(row.path), row.label, _who(event),
            "" if event.round_id is None else event.round_id,
            "" if event.confidence is None else repr(event.confidence),
        ])
    atomic_write_text(out, buffer.getvalue())
    return ExportReport(str(out), "csv", written=len(rows))


def export_json(project: Project, out: str | os.PathLike, overwrite: bool = False) -> ExportReport:
    """Classes, every image's current label and its whole label history (provenance)."""
    out = check_file_target(Path(out), overwrite)
    refuse_project_files(project, out)
    document = json_document(project)
    atomic_write_text(out, json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    labelled = sum(1 for image in document["images"] if image["label"] is not None)
    return ExportReport(str(out), "json", written=labelled)


def json_document(project: Project) -> dict:
    names = {c.id: c.name for c in project.classes()}
    history: dict[int, list[LabelEvent]] = {}
    for event in project.label_history():
        history.setdefault(event.image_id, []).append(event)
    current = project.current_labels()
    images = []
    for record in project.images():
        events = history.get(record.id, [])
        if not events:
            continue
        label = current.get(record.id)
        images.append({
            "id": record.id,
            "sha256": record.sha256,
            "path": _path_text(project.image_path(record)),
            "location": record.location,
            "stored": record.stored,
            "domain": record.domain,
            "split": record.split,
            "width": record.width,
            "height": record.height,
            "label": names.get(label) if label is not None else None,
            "history": [_event_json(e, names) for e in events],
        })
    return {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "project": project.path.name,
        "exported": time.time(),
        "classes": [asdict(c) for c in project.classes()],
        "images": images,
    }


def _event_json(event: LabelEvent, names: dict[int, str]) -> dict:
    values = asdict(event)
    values["label"] = names.get(event.class_id) if event.class_id is not None else None
    values["suggestion"] = names.get(event.suggestion_class_id)
    return values


def infer_format(out: Path) -> str:
    """The export format OUT asks for: .csv, .json, .onnx (the model, `models.onnx_export`),
    or a folder (existing, or a name without a suffix)."""
    suffix = out.suffix.lower()
    if suffix in (".csv", ".json", ".onnx"):
        return suffix[1:]
    if out.is_dir() or not suffix:
        return "imagefolder"
    raise ExportError(f"Cannot tell the export format from {out.name!r}: name a .csv, .json or .onnx "
                      "file or a folder, or pass --format (csv, json or imagefolder; onnx for the model).")


def check_file_target(out: Path, overwrite: bool) -> Path:
    """`out` itself, when a file may be written there; else an ExportError saying why."""
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give a file name.")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass overwrite to replace it.")
    if not out.parent.is_dir():
        raise ExportError(f"Folder {out.parent} does not exist.")
    return out


def refuse_project_files(project: Project, out: Path) -> None:
    """An ExportError when writing the file `out` would replace the project's own files
    (NAME.atl, its -wal/-shm, anything in NAME.atl.d) or an image the project reads."""
    real = os.path.realpath(out)
    _refuse_owned(project, real, out)
    if os.path.exists(real):  # an existing file may be an imported image: compare the few of its size
        for slide in project.slides():
            if os.path.realpath(project.slide_path(slide)) == real:
                raise ExportError(f"{out} is slide {slide.id} of {project.path.name}; writing there "
                                  "would destroy it. Choose another file name.")
        size = os.path.getsize(real)
        for record in project.images():
            path = project.image_path(record)
            if isinstance(path, FrameRef):
                path = path.path
            if record.file_size == size and not isinstance(path, PatchRef) and os.path.realpath(path) == real:
                raise ExportError(f"{out} is image {record.id} of {project.path.name}; writing there "
                                  "would destroy it. Choose another file name.")


def _refuse_owned(project: Project, real: str, out: Path) -> None:
    own = [os.path.realpath(project.path)] + [os.path.realpath(f"{project.path}{s}") for s in SIDE_SUFFIXES]
    if real in own or is_within(real, project.data_dir):
        raise ExportError(f"{out} is {project.path.name}'s own file or folder; writing there would "
                          "damage the project. Choose another place.")


def _source_paths(project: Project) -> set[str]:
    """The real paths of every file the project reads its images from (slides included)."""
    paths = (project.image_path(record) for record in project.images())
    paths = (p.path if isinstance(p, FrameRef) else p for p in paths)
    slides = (project.slide_path(slide) for slide in project.slides())
    return {os.path.realpath(p) for p in (*paths, *slides) if not isinstance(p, PatchRef)}


# ---- class folders -------------------------------------------------------------------------------


def export_imagefolder(
    project: Project, out: str | os.PathLike, *, symlink: bool = False, overwrite: bool = False
) -> Job:
    """Copy (or symlink) each labelled image to OUT/<class folder>/; a job returning an ExportReport.

    An existing non-empty OUT is refused unless `overwrite`, which writes into it
    and replaces files of the same name (other files are left alone).
    """
    sources = _source_paths(project)
    _refuse_folder_of(project, Path(out), sources)
    root = _prepare_folder(Path(out), overwrite)
    rows = _labelled_rows(project)
    folders = class_folder_names(project.class_names())
    report = ExportReport(str(root), "imagefolder", folders=dict(folders))
    used: set[str] = set()
    for done, row in enumerate(rows, 1):
        if not (row.path.exists() if isinstance(row.path, PatchRef) else row.path.is_file()):
            report.missing.append(str(row.path))
        else:
            folder = _class_folder(root, folders[row.label])
            target = folder / _unique_file_name(row, folders[row.label], used)
            if _as_png(row.path):  # a patch, a frame or a DICOM file: its pixels, as a PNG
                atomic_write_bytes(target, _png(load_image(row.path)))
            else:
                if os.path.realpath(target) in sources:  # belt and braces: see _refuse_folder_of
                    raise ExportError(f"{target} is an image of the project; refusing to replace it.")
                try:
                    _place(row.path, target, symlink)
                except NotRegularFileError:  # a FIFO or a device where an image was: never read
                    report.missing.append(str(row.path))
                    continue
            report.written += 1
        if done % 50 == 0 or done == len(rows):
            yield Progress(done, len(rows), "exporting")
    return report


def _refuse_folder_of(project: Project, out: Path, sources: set[str]) -> None:
    """An ExportError when OUT is, or holds, the project's own files or the images it reads:
    replacing a file of the same name there would destroy an original."""
    real = os.path.realpath(out)
    _refuse_owned(project, real, out)
    owned = [os.path.realpath(project.path), os.path.realpath(project.data_dir)]
    below = real.rstrip(os.sep) + os.sep  # all paths here are resolved already
    inside = next((p for p in (*owned, *sources) if p == real or p.startswith(below)), None)
    if inside is not None:
        raise ExportError(f"{out} holds files of {project.path.name} (first: {inside}); exporting "
                          "there could overwrite them. Choose a folder outside.")


def _prepare_folder(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} is not empty; choose an empty folder or pass overwrite.")
    out.mkdir(parents=True, exist_ok=True)
    return out.resolve()


def _class_folder(root: Path, name: str) -> Path:
    folder = root / name
    if folder.is_symlink():  # writing through it could land outside OUT
        raise ExportError(f"{folder} is a symbolic link; refusing to write through it.")
    folder.mkdir(exist_ok=True)
    if folder.resolve().parent != root:
        raise ExportError(f"{folder} would be outside {root}.")
    return folder


def _unique_file_name(row: _Row, folder: str, used: set[str]) -> str:
    record = row.record
    original = Path(record.original_path or "").name
    if isinstance(row.path, FrameRef):  # image.dcm#frame=3 -> image_frame3.png
        original = f"{row.path.path.stem}_frame{row.path.frame}.png"
    suffix = ".png" if _as_png(row.path) else (row.path.suffix.lower() or ".png")
    stem = Path(original).stem if Path(original).suffix.lower() in IMAGE_SUFFIXES else ""
    name = safe_name(f"{stem}{suffix}" if stem else f"image_{record.id}{suffix}")
    if f"{folder}/{name}".lower() in used:
        name = safe_name(f"{Path(name).stem}_{record.id}{suffix}")
    used.add(f"{folder}/{name}".lower())
    return name


def _place(source: Path, target: Path, symlink: bool) -> None:
    if target.is_symlink() or target.exists():
        target.unlink()  # replace a link rather than write through it
    if symlink:
        target.symlink_to(source.resolve())
    else:
        copy_regular(source, target, follow_symlinks=True)  # a FIFO or device is refused
