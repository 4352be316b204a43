"""The bundled demo projects: copied to the user's data folder, never changed in place."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from atl_desktop.store import Project, ProjectError

DEMOS = {
    "bloodcells": "Blood cell photographs at real resolution, 8 classes (Acevedo et al. 2020, CC BY 4.0)",
    "histology": "Colorectal histology tiles, 9 classes, simulated stain shift between two labs",
    "digits": "Handwritten digits, MNIST (source) to USPS (target)",
}
DEFAULT_DEMO = "bloodcells"


def resources_dir() -> Path:
    """resources/ in a source checkout, atl_desktop/resources in an installed package."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "resources", package / "resources"):
        if (candidate / "demo").is_dir():
            return candidate
    raise ProjectError(f"The bundled demo files are missing (looked beside {package}).")


def bundled_demo(name: str = DEFAULT_DEMO) -> Path:
    if name not in DEMOS:
        raise ProjectError(f"Unknown demo {name!r}; choose one of {', '.join(DEMOS)}.")
    path = resources_dir() / "demo" / f"{name}.atl"
    if not path.is_file():
        raise ProjectError(f"The bundled demo {name!r} is missing ({path}).")
    return path


def user_demo_dir() -> Path:
    from platformdirs import user_data_path

    override = os.environ.get("ATL_DESKTOP_DATA")  # tests and portable installs
    base = Path(override) if override else user_data_path("atl-desktop", appauthor=False)
    return base / "demo"


def is_demo_copy(path: str | os.PathLike) -> bool:
    """Whether `path` is the user's copy of a bundled demo (not a project of their own)."""
    return Path(path).resolve().parent == user_demo_dir().resolve()


def install_demo(name: str = DEFAULT_DEMO, *, reset: bool = False) -> Path:
    """The user's own copy of a demo project, copied from the bundle on first use.

    With `reset`, the copy is replaced by a fresh one (refused while it is open
    for writing elsewhere). The copy is made beside the target and renamed into
    place, so an interrupted copy never looks like a project.
    """
    source = bundled_demo(name)
    target = user_demo_dir() / source.name
    if target.exists() and not reset:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        Project.open(target).close()  # raises ProjectLockedError while someone uses it
    staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=target.parent))
    try:
        shutil.copy2(source, staging / source.name)
        shutil.copytree(source.with_name(source.name + ".d"), staging / (source.name + ".d"),
                        ignore=shutil.ignore_patterns("lock", "*-wal", "*-shm"))
        for old in (target.with_name(target.name + ".d"), target):
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        os.replace(staging / (source.name + ".d"), target.with_name(target.name + ".d"))
        os.replace(staging / source.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    Project.open(target).close()  # a bundle older than this version is migrated once, in the copy
    return target
