"""Crash-safe file writes and content hashes for the files beside a project."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

_CHUNK = 1 << 20
# The most bytes read from one file that a user handed us (an image, a CSV's row): bounds
# the memory a huge file, or /dev/zero behind a link, could take.
MAX_READ_BYTES = 512 << 20
# O_NONBLOCK: opening a FIFO must not wait for a writer; O_BINARY: Windows only.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class NotRegularFileError(OSError):
    """A path that is a FIFO, a device, a socket or a folder: never read as a file."""


class FileTooLargeError(OSError):
    """A file larger than the cap on what is read into memory."""


def open_regular(path: str | os.PathLike, *, follow_symlinks: bool = True) -> tuple[int, os.stat_result]:
    """(fd, stat) of `path` opened for reading, refusing anything but a regular file.

    Opened without blocking (a FIFO with no writer would hang a plain open), then
    checked with fstat on the open file, so a swap between a check and the open
    cannot slip a device in. `follow_symlinks=False`: a link in the last component fails.
    """
    fd = os.open(path, _READ_FLAGS | (0 if follow_symlinks else _NOFOLLOW))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device")
            raise NotRegularFileError(f"is {kind}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular(path: str | os.PathLike, max_bytes: int = MAX_READ_BYTES, *,
                 follow_symlinks: bool = True) -> tuple[bytes, os.stat_result]:
    """The bytes and stat of a regular file of at most `max_bytes` (see `open_regular`)."""
    fd, st = open_regular(path, follow_symlinks=follow_symlinks)
    try:
        if st.st_size > max_bytes:
            raise FileTooLargeError(f"is larger than {max_bytes >> 20} MB, the most read from one file")
        chunks, size = [], 0
        while chunk := os.read(fd, _CHUNK * 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # it grew since fstat
                raise FileTooLargeError(f"is larger than {max_bytes >> 20} MB, the most read from one file")
    finally:
        os.close(fd)
    return b"".join(chunks), st


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether `path` resolved (links followed, '..' removed) lies inside `root` resolved."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def confined(root: str | os.PathLike, relative: str) -> Path:
    """`root / relative` for a relative path from a file we did not write (a bundle's
    database): refused (ValueError) when it is absolute, climbs with '..', or passes
    through a symbolic link, so it can neither leave `root` nor be redirected."""
    parts = Path(relative).parts
    if not relative or Path(relative).anchor or ".." in parts:  # anchor: "/", "C:", "\\\\host"
        raise ValueError(f"{relative!r} is not a plain relative path")
    path = Path(root)
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise ValueError(f"{relative!r} passes through a symbolic link ({part})")
    if not is_within(path, root):  # belt and braces: no link, no '..', so always inside
        raise ValueError(f"{relative!r} leads outside {root}")
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, *, follow_symlinks: bool = True) -> str:
    """The content hash of a regular file (a FIFO or a device is refused, never read)."""
    digest = hashlib.sha256()
    fd, _ = open_regular(path, follow_symlinks=follow_symlinks)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_regular(source: str | os.PathLike, target: str | os.PathLike, *,
                 follow_symlinks: bool = False) -> None:
    """Copy a regular file (by default not through a link at `source`'s last component);
    `target` must not exist yet (O_EXCL: nothing is written through a link planted there)."""
    fd, st = open_regular(source, follow_symlinks=follow_symlinks)
    with os.fdopen(fd, "rb") as src:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0), 0o644)
        with os.fdopen(out, "wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same folder, are fsynced, and the
    temporary file is renamed over `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
