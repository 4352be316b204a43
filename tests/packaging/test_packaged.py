"""The PyInstaller build (packaging/build.sh) passes its own --self-test.

Skipped when there is no build, unless ATL_REQUIRE_PACKAGED_BUILD=1 (set by .ci/run, which
builds first), so a missing or broken build fails CI instead of passing silently.
"""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BUILD = ROOT / "dist" / "atl-desktop"
PROGRAM = BUILD / ("atl-desktop.exe" if sys.platform == "win32" else "atl-desktop")


@pytest.mark.slow
def test_packaged_program_passes_its_self_test(tmp_path):
    if not PROGRAM.is_file():
        if os.environ.get("ATL_REQUIRE_PACKAGED_BUILD") == "1":
            pytest.fail(f"no packaged build at {PROGRAM}; run packaging/build.sh")
        pytest.skip("no packaged build (bash packaging/build.sh makes one)")
    # A clean environment: no Python paths, no virtual environment, a fresh home.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "QT_QPA_PLATFORM": "offscreen",
           "ATL_DESKTOP_DATA": str(tmp_path / "data")}
    run = subprocess.run([str(PROGRAM), "--self-test"], capture_output=True, text=True, env=env,
                         timeout=600, cwd=tmp_path)
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout + run.stderr
    assert lines[-1] == "self-test passed"
    for check in ("device", "open demo", "score", "train one step", "torchvision backbone"):
        assert any(line.startswith(f"ok    {check}") for line in lines), run.stdout
    bundled = BUILD / "_internal" / "atl_desktop" / "resources" / "demo"
    assert all((bundled / f"{name}.atl").is_file() for name in ("bloodcells", "histology", "digits"))
    assert (bundled / "CREDITS.md").is_file()
    assert not (tmp_path / "data" / "demo").exists()  # the self-test used its own temporary copy

    # The command line in the same program: a demo copy, then a report of it (figures drawn
    # by matplotlib inside the build).
    demo = subprocess.run([str(PROGRAM), "--atl", "demo", "digits"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    copy = demo.stdout.strip()
    assert copy == str(tmp_path / "data" / "demo" / "digits.atl")
    report = subprocess.run([str(PROGRAM), "--atl", "report", copy, "--out", str(tmp_path / "r.html"),
                             "--quiet"], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 3
