"""Errors the store raises; each carries a message fit to show a user as it is."""

from __future__ import annotations

import errno
import os


class ProjectError(Exception):
    """A problem with a project that the user can understand and fix."""


class NewerProjectError(ProjectError):
    """The project file was written by a newer ATL Desktop; it is left untouched."""


class ProjectLockedError(ProjectError):
    """Another process holds the project open for writing."""


class ClassError(ProjectError):
    """A class name is missing, taken, or otherwise unusable."""


def storage_error(error: BaseException, where: str | os.PathLike) -> ProjectError | None:
    """A one-line ProjectError for a full or read-only disk, from an OSError or from SQLite's
    words for one; None for any other error. SQLite rolls back what it could not write, so
    what was committed before is intact."""
    code = getattr(error, "errno", None)
    text = str(error).lower()
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or "disk is full" in text:
        return ProjectError(f"No space left on the disk holding {where}: free some space and run "
                            "the command again; nothing saved before was lost.")
    if code == errno.EROFS or "readonly database" in text:
        return ProjectError(f"The disk holding {where} is read-only: make it writable, or copy the "
                            "project to a writable place; nothing was changed.")
    if "disk i/o error" in text or "unable to open database file" in text:
        return ProjectError(f"Cannot write {where} ({error}): the disk may be full, read-only or gone; "
                            "fix that and run the command again; nothing saved before was lost.")
    return None
