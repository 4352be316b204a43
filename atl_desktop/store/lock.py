"""One writer per project: an OS file lock on `NAME.atl.d/lock`.

The operating system releases the lock when the holding process dies, so a
lock left by a killed process is taken over without any guessing; the PID and
host written into the file only serve to name the holder in the message.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from atl_desktop.store.errors import ProjectError, ProjectLockedError

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class WriterLock:
    """Held by the one process that may write a project."""

    def __init__(self, path: Path, project_name: str):
        self.path = path
        self.project_name = project_name
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except IsADirectoryError:
            raise ProjectError(
                f"{self.path} is a folder, but ATL Desktop keeps its writer lock file there: "
                "remove that folder (it holds nothing of the project) and open the project again."
            ) from None
        except OSError as error:
            if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ProjectError(
                    f"{self.project_name} cannot be opened for writing: {self.path.parent} is "
                    f"{'on a read-only disk' if error.errno == errno.EROFS else 'not writable for you'}. "
                    "Read-only commands (atl info, atl export) still work; to change the project, "
                    "copy it with its .atl.d folder to a writable place."
                ) from None
            if error.errno == errno.ELOOP:  # writing through it would truncate another file
                raise ProjectError(f"{self.path} is a symbolic link, not ATL Desktop's lock file: "
                                   "remove it and open the project again.") from None
            raise
        if not _try_lock(fd):
            holder = self._read_holder(fd)
            os.close(fd)
            raise ProjectLockedError(
                f"{self.project_name} is already open for writing by {holder}. "
                "Close it there first; read-only commands (atl info, atl export) still work."
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "program": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd

    @staticmethod
    def _read_holder(fd: int) -> str:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            info = json.loads(os.read(fd, 4096).decode() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "another process"
        return (
            f"process {info.get('pid', '?')} ({info.get('program', '?')}) on "
            f"{info.get('host', '?')} since {info.get('since', '?')}"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            _unlock(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
