"""Bundles: a project packed for a run elsewhere (a GPU server, a cluster), and its
results brought back.

    BUNDLE/
      bundle.json        format, id, when and from where it was packed, the state fingerprint,
                         the current checkpoint, the project's settings
      manifest.csv       the pool: image id, sha256, domain, split, label, where the pixels are
      project.atl        a copy of the project, its images pointing into the bundle (copied)
      project.atl.d/     or at their absolute places (referenced); the current checkpoint
      slides/            copied slides (their patches are read from them)

BUNDLE/project.atl is an ordinary project: `atl score` and `atl train` (with
torchrun options or under SLURM) run on it as anywhere. `unpack_results` brings
back the checkpoints made there (with their metrics and parents), and the score
caches, recording their provenance, and refuses a bundle packed from another
state of the project: the fingerprint covers what training and scoring see
(classes, images, labels, pending pseudo-labels, the current checkpoint).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import replace
from pathlib import Path

from atl_desktop.jobs import Progress
from atl_desktop.store import Project, ProjectError
from atl_desktop.store.errors import storage_error
from atl_desktop.store.files import atomic_write_text, confined, copy_regular, sha256_file
from atl_desktop.store.frames import FrameRef, frame_location
from atl_desktop.store.keys import IMPORTED_SETTING
from atl_desktop.store.slides import PatchRef
from atl_desktop.store.snapshot import copy_database, relocate

FORMAT = "atl-bundle/1"
BUNDLE_FILE = "bundle.json"
PROJECT_FILE = "project.atl"
MANIFEST_FILE = "manifest.csv"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def state_fingerprint(project: Project) -> str:
    """sha256 of what a training or scoring run sees: classes (in model order), images
    (id, content, domain, split), current labels, pending pseudo-labels, current checkpoint."""
    digest = hashlib.sha256()

    def feed(name: str, value) -> None:
        digest.update(json.dumps([name, value], separators=(",", ":")).encode())

    feed("classes", [[c.id, c.name] for c in project.classes()])
    feed("images", [[r.id, r.sha256, r.domain, r.split] for r in project.images()])
    feed("labels", sorted(project.current_labels().items()))
    feed("pseudo", [[p.id, p.image_id, p.class_id] for p in project.pseudo_labels("pending")])
    current = project.latest_checkpoint()
    feed("checkpoint", None if current is None else current.sha256)
    return digest.hexdigest()


# ---- pack ------------------------------------------------------------------------------


def pack(project: Project, bundle: str | os.PathLike, *, images: str = "copy",
         prefixes: Sequence[tuple[str, str]] = ()) -> Generator[Progress, None, dict]:
    """Write `bundle` (a new folder) from `project` (read only). A job: cancelling it, or
    any failure, leaves no bundle (it is built under a hidden name and renamed)."""
    if images not in ("copy", "reference"):
        raise ProjectError(f"images must be 'copy' or 'reference', not {images!r}.")
    bundle = Path(bundle).absolute()
    if bundle.exists():
        raise ProjectError(f"{bundle} already exists; choose a new folder for the bundle.")
    if not bundle.parent.is_dir():
        raise ProjectError(f"Folder {bundle.parent} does not exist.")
    yield Progress(0, None, "fingerprinting the project")
    fingerprint = state_fingerprint(project)
    current = project.latest_checkpoint()
    tmp = bundle.with_name(f".{bundle.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        copy_database(project, tmp / PROJECT_FILE)
        with Project.open(tmp / PROJECT_FILE) as copy:
            moves, manifest = yield from _place_images(project, copy, images, prefixes)
            slides = _place_slides(project, copy, images, prefixes)
            relocate(copy, moves, slides)
            if current is not None:
                target = copy.data_dir / current.file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(project.data_dir / current.file, target)
        _write_manifest(tmp / MANIFEST_FILE, project, manifest)
        info = {
            "format": FORMAT, "id": uuid.uuid4().hex, "fingerprint": fingerprint,
            "packed": time.time(), "packed_on": socket.gethostname(),
            "source_project": str(project.path), "images": images, "n_images": len(manifest),
            "checkpoint": None if current is None else {"id": current.id, "sha256": current.sha256,
                                                         "backbone": current.backbone},
            "settings": _settings(project), "python": platform.python_version(),
        }
        atomic_write_text(tmp / BUNDLE_FILE, json.dumps(info, indent=2))
        os.replace(tmp, bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    yield Progress(len(manifest), len(manifest), "bundle written")
    return {"images": len(manifest), "checkpoint": None if current is None else current.id,
            "fingerprint": fingerprint, "id": info["id"]}


def _remote_path(path: Path, prefixes: Sequence[tuple[str, str]]) -> str:
    text = str(path.absolute())
    for local, remote in prefixes:
        if text.startswith(local):
            return remote + text[len(local):]
    return text


def _place_images(project: Project, copy: Project, images: str, prefixes):
    """Copy (or refer to) every image file; patches stay references to their slide."""
    records = project.images()
    moves: dict[int, tuple[str, str, str | None]] = {}
    manifest: list[tuple] = []
    for k, record in enumerate(records):
        where = project.image_path(record)
        frame = ""  # a frame of a multi-frame file: the file travels, the suffix names the frame
        if isinstance(where, FrameRef):
            where, frame = where.path, frame_location("", where.frame)
        if isinstance(where, PatchRef):
            manifest.append((record, record.location))
        elif images == "copy":
            if not where.is_file():
                raise ProjectError(f"Image {record.id}: {where} is missing; cannot copy it into the "
                                   "bundle (find it, or pack with --images reference).")
            location = f"media/{record.sha256[:2]}/{record.sha256}{where.suffix.lower()}"
            target = copy.data_dir / location
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(where, target)  # the same size and time: `atl info` sees no change
            moves[record.id] = (location + frame, "media", record.original_path)
            manifest.append((record, f"{PROJECT_FILE}.d/{location}{frame}"))
        else:
            remote = _remote_path(where, prefixes) + frame
            moves[record.id] = (remote, "ref", remote)
            manifest.append((record, remote))
        if (k + 1) % 256 == 0 or k + 1 == len(records):
            yield Progress(k + 1, len(records), "placing images")
    return moves, manifest


def _place_slides(project: Project, copy: Project, images: str, prefixes) -> dict:
    slides = {}
    for slide in project.slides():
        path = project.slide_path(slide)
        if images == "copy":
            location = f"slides/{slide.fingerprint[:16]}-{path.name}"
            target = copy.path.parent / location
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            slides[slide.id] = (location, None)
        else:
            remote = _remote_path(path, prefixes)
            slides[slide.id] = (remote, remote)
    return slides


def _write_manifest(path: Path, project: Project, rows: list[tuple]) -> None:
    names = {c.id: c.name for c in project.classes()}
    labels = project.current_labels()
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["image_id", "sha256", "domain", "split", "label", "location"])
        for record, location in rows:
            out.writerow([record.id, record.sha256, record.domain, record.split,
                          names.get(labels.get(record.id), ""), location])


def _settings(project: Project) -> dict:
    rows = project.db.execute("SELECT key, value FROM settings ORDER BY key").fetchall()
    return {key: json.loads(value) for key, value in rows}


# ---- unpack ----------------------------------------------------------------------------


def read_bundle(bundle: str | os.PathLike) -> dict:
    path = Path(bundle) / BUNDLE_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProjectError(f"{bundle} is not a bundle (no {BUNDLE_FILE}); make one with `atl pack`.") from None
    except (OSError, ValueError) as error:
        raise ProjectError(f"{path} cannot be read: {error}.") from None
    if info.get("format") != FORMAT:
        raise ProjectError(f"{path}: unknown bundle format {info.get('format')!r}.")
    return info


def unpack_results(project: Project, bundle: str | os.PathLike) -> dict:
    """Merge the checkpoints and score caches made in `bundle` into `project` (open for
    writing), which must be in the state the bundle was packed from."""
    bundle = Path(bundle).absolute()
    info = read_bundle(bundle)
    imported = project.get_setting(IMPORTED_SETTING, [])
    earlier = next((b for b in imported if b["id"] == info["id"]), None)
    if earlier is not None:
        raise ProjectError(f"This bundle's results were already merged on "
                           f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(earlier['unpacked']))}.")
    now = state_fingerprint(project)
    if now != info["fingerprint"]:
        raise ProjectError(
            f"{bundle.name} was packed from another state of the project (state "
            f"{info['fingerprint'][:12]}, packed from {info['source_project']}); {project.path.name} "
            f"is now in state {now[:12]}: its classes, images, labels or current checkpoint have "
            "changed since. Nothing was merged; pack again and rerun the job.")
    provenance = {"bundle": str(bundle), "bundle_id": info["id"], "packed": info["packed"],
                  "packed_on": info["packed_on"], "state": info["fingerprint"],
                  "unpacked": time.time()}
    for part in (bundle / PROJECT_FILE, bundle / f"{PROJECT_FILE}.d"):
        if part.is_symlink():  # its files must be the bundle's own
            raise ProjectError(f"{part} is a symbolic link; a bundle's files must be inside it. Nothing was merged.")
    with Project.open(bundle / PROJECT_FILE, readonly=True) as remote:
        try:
            new = _copy_checkpoints(project, remote)
            caches = _copy_score_caches(project, remote)
        except OSError as error:  # a link or a FIFO where a file should be; a full disk
            raise storage_error(error, project.data_dir) or ProjectError(
                f"The bundle's files cannot be copied ({error}); nothing was merged.") from None
        ids = _record_checkpoints(project, remote, new, provenance, caches)
    return {"checkpoints": ids, "score_caches": caches, "bundle_id": info["id"]}


def _copy_checkpoints(project: Project, remote: Project) -> list:
    """The bundle's checkpoints the project lacks, their files copied in (verified).

    The bundle's database is not ours: a row's `file` is only read inside the bundle's
    folder, never through a link, and the copy's name comes from its verified hash, so a
    crafted row can neither write outside the project nor read outside the bundle."""
    known = {c.sha256 for c in project.checkpoints()}
    new = [c for c in remote.checkpoints() if c.sha256 not in known]
    sources = []
    for record in new:  # all checked before any is copied
        if not _SHA256.fullmatch(record.sha256):
            raise ProjectError(f"Checkpoint {record.id} of the bundle has no valid sha256; nothing was merged.")
        try:
            source = confined(remote.data_dir, record.file)
            if sha256_file(source, follow_symlinks=False) != record.sha256:
                raise ValueError("its content differs from its sha256")
        except (OSError, ValueError) as error:
            raise ProjectError(f"Checkpoint {record.id} of the bundle ({record.file!r}) cannot be "
                               f"used: {error}. Nothing was merged.") from None
        sources.append(source)
    for record, source in zip(new, sources, strict=True):
        _copy_atomically(source, project.data_dir / checkpoint_file(record.sha256))
    return [replace(record, file=checkpoint_file(record.sha256)) for record in new]


def checkpoint_file(sha256: str) -> str:
    """Where a checkpoint with this content lives in a project's folder (see save_checkpoint)."""
    return f"checkpoints/{sha256}.safetensors"


def _copy_score_caches(project: Project, remote: Project) -> list[str]:
    """Finished score-cache parts of the bundle (same image ids: same state) copied in;
    only regular files and folders, never a link (it could lead out of the bundle)."""
    copied = []
    root = remote.data_dir / "scores"
    if root.is_symlink():
        raise ProjectError(f"{root} is a symbolic link; a bundle's files must be inside it. Nothing was merged.")
    for variant in sorted(_subfolders(root, 2)) if root.is_dir() else ():
        key = f"{variant.parent.name}/{variant.name}"
        target = project.data_dir / "scores" / key
        parts = [p for p in sorted(variant.glob("part-*")) if not (target / p.name).exists()]
        for part in parts:
            target.mkdir(parents=True, exist_ok=True)
            hidden = target / f".tmp-{part.name}"
            shutil.rmtree(hidden, ignore_errors=True)
            try:
                _copy_tree(part, hidden)
            except BaseException:
                shutil.rmtree(hidden, ignore_errors=True)
                raise
            os.replace(hidden, target / part.name)
        if (variant / "meta.json").exists() and not (target / "meta.json").exists():
            _copy_atomically(variant / "meta.json", target / "meta.json")
        if parts:
            copied.append(key)
    return copied


def _subfolders(root: Path, depth: int) -> list[Path]:
    """Folders `depth` levels below `root`; a link on the way is refused."""
    folders = [root]
    for _ in range(depth):
        below = []
        for folder in folders:
            with os.scandir(folder) as scan:
                entries = list(scan)
            for entry in entries:
                if entry.is_symlink():
                    raise ProjectError(f"{entry.path} in the bundle is a symbolic link; nothing was merged.")
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
        folders = below
    return folders


def _copy_tree(source: Path, target: Path) -> None:
    """shutil.copytree without following links: a link, FIFO or device is refused."""
    if source.is_symlink():
        raise ProjectError(f"{source} in the bundle is a symbolic link; nothing was merged.")
    if not source.is_dir():
        copy_regular(source, target)  # a FIFO or device: NotRegularFileError
        return
    target.mkdir()
    with os.scandir(source) as scan:
        names = [entry.name for entry in scan]
    for name in names:
        _copy_tree(source / name, target / name)


def _copy_atomically(source: Path, target: Path) -> None:
    if target.is_file() and not target.is_symlink():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    hidden = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        copy_regular(source, hidden)
        os.replace(hidden, target)
    except BaseException:
        hidden.unlink(missing_ok=True)
        raise


def _record_checkpoints(project: Project, remote: Project, new: list, provenance: dict,
                        caches: list[str]) -> list[int]:
    """Record the new checkpoints in the bundle's order (parents first), in one transaction,
    with the bundle they came from; and the bundle in the project's list of merged ones."""
    by_sha = {c.sha256: c.id for c in project.checkpoints()}
    remote_sha = {c.id: c.sha256 for c in remote.checkpoints()}
    rounds = {r.id: r.started for r in project.rounds()}
    remote_rounds = {r.id: r.started for r in remote.rounds()}
    ids = []
    with project.transaction():
        for record in new:
            parent = by_sha.get(remote_sha.get(record.parent_id)) if record.parent_id else None
            same_round = record.round_id is not None and rounds.get(record.round_id) == remote_rounds.get(record.round_id)
            by_sha[record.sha256] = project.add_checkpoint(
                file=record.file, sha256=record.sha256, backbone=record.backbone,
                classes=record.classes, parent_id=parent, round=record.round_id if same_round else None,
                metrics=record.metrics, config={**record.config, "provenance": provenance})
            ids.append(by_sha[record.sha256])
        entries = project.get_setting(IMPORTED_SETTING, [])
        project.set_setting(IMPORTED_SETTING, [*entries, {**provenance, "id": provenance["bundle_id"],
                                                          "checkpoints": ids, "score_caches": caches}])
    return ids
