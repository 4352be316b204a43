"""How long until a new user sees the window on the demo: the README's first command.

    xvfb-run -a python benchmarks/first_window.py [--repo CLONE] [--install] [--repeats 3]

Times, with a fresh home folder (no settings, no demo copy yet) for the first start and the
same home for later ones, from starting `atl-desktop` until its main window is mapped on the
X display: for the source install in CLONE (default: this checkout) and, when it exists, for
the packaged build in CLONE/dist/atl-desktop (started with an empty environment: no Python,
no virtual environment). With --install, `bash packaging/install.sh` in CLONE is timed first
(run it in a fresh clone to time a first install). Writes benchmarks/results/first_window.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from benchcommon import machine, write_json

TITLE = "— ATL Desktop (labelling as"


def window_shown() -> bool:
    tree = subprocess.run(["xwininfo", "-root", "-tree"], capture_output=True, text=True,
                          env={**os.environ, "LANG": "C.UTF-8"}).stdout
    return TITLE in tree


def time_window(command: list[str], env: dict[str, str], timeout: float = 300.0) -> float:
    """Seconds from starting `command` until its main window is mapped; the program is then closed."""
    if window_shown():
        raise SystemExit("another ATL Desktop window is already on this display")
    start = time.perf_counter()
    app = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not window_shown():
            if app.poll() is not None:
                raise SystemExit(f"{command[0]} exited with status {app.returncode} before showing a window")
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"no window after {timeout:.0f} s")
            time.sleep(0.05)
        return time.perf_counter() - start
    finally:
        app.terminate()
        app.wait(timeout=60)
        while window_shown():
            time.sleep(0.05)


def starts(command: list[str], base_env: dict[str, str], repeats: int) -> list[float]:
    """The first start with a fresh home (the demo is copied), then `repeats - 1` more."""
    with tempfile.TemporaryDirectory(prefix="atl-home-") as home:
        env = {**base_env, "HOME": home, "LANG": "C.UTF-8"}
        return [round(time_window(command, env), 2) for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--install", action="store_true", help="time packaging/install.sh first")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not os.environ.get("DISPLAY"):
        raise SystemExit("needs an X display: run it under xvfb-run -a")
    results: dict = {"machine": machine(), "repo": str(args.repo), "display": os.environ["DISPLAY"]}
    display = {k: os.environ[k] for k in ("DISPLAY", "XAUTHORITY") if k in os.environ}
    if args.install:
        start = time.perf_counter()
        subprocess.run(["bash", "packaging/install.sh"], cwd=args.repo, check=True,
                       stdout=subprocess.DEVNULL)
        results["install_s"] = round(time.perf_counter() - start, 1)
    source_env = {**os.environ, **display}
    source_env.pop("QT_QPA_PLATFORM", None)
    results["source_window_s"] = starts([str(args.repo / ".venv" / "bin" / "atl-desktop")], source_env,
                                        args.repeats)
    packaged = args.repo / "dist" / "atl-desktop" / "atl-desktop"
    if packaged.is_file():
        results["packaged_window_s"] = starts([str(packaged)], {"PATH": "/usr/bin:/bin", **display},
                                              args.repeats)
    results["note"] = ("seconds from start to the main window mapped; the first of each list starts "
                       "with a fresh home folder (the demo is copied then)")
    print(write_json("first_window.json", results))


if __name__ == "__main__":
    main()
