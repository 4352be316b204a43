"""The README's workflow, run top to bottom as written: its `atl` commands, in its order."""

from __future__ import annotations

import re
import shlex

import numpy as np
from PIL import Image

from atl_desktop.cli import main
from atl_desktop.store import Project
from tests.conftest import ROOT


def workflow_commands() -> list[str]:
    """Every `atl ...` command quoted in the README's "The workflow" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The workflow", 1)[1].split("\n## ", 1)[0]
    return [c for c in re.findall(r"`(atl [^`]+)`", section.replace("\n   ", " "))]


def test_the_workflow_commands_run_in_the_readmes_order(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"  # unlabelled images, one folder: what a user brings
    images.mkdir()
    for k, name in enumerate(("tumour", "stroma")):  # the README's classes; two kinds of image
        for i in range(12):
            pixels = np.clip(rng.normal(60 + 120 * k, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(images / f"{name}-{i}.png")
    # `atl pretrain` and `atl round discard` are mentioned as options, not steps; a bare
    # `atl query` names a command in prose (a step names the project).
    commands = [c for c in workflow_commands()
                if "study.atl" in c and c.split()[1] not in ("pretrain", "round")]
    steps = [c.split()[1] for c in commands]
    assert steps[:5] == ["new", "import", "query", "label", "train"], commands
    project = tmp_path / "study.atl"
    for command in commands[:5]:
        command = command.replace("study.atl", str(project)).replace("images/", str(images))
        command = command.replace("tumour,stroma,...", "tumour,stroma")
        argv = shlex.split(command)[1:]
        if argv[0] == "label":  # ID and CLASS: each chosen image, with its true class
            with Project.open(project, readonly=True) as p:
                chosen = p.rounds()[-1].params["chosen"]
                paths = {i: str(p.image_path(p.image(i))) for i in chosen}
            for image_id in chosen:
                truth = "tumour" if "tumour-" in paths[image_id] else "stroma"
                assert main(["label", str(project), str(image_id), "--set", truth]) == 0
            continue
        if argv[0] == "query":
            argv[argv.index("--batch") + 1] = "6"  # 24 images: a batch of 20 would leave few
        assert main([*argv, "--quiet"] if argv[0] in ("import", "query", "train") else argv) == 0, command
    with Project.open(project, readonly=True) as p:
        (round_,) = p.rounds()
        assert round_.finished is not None and p.latest_checkpoint() is not None
        assert len(p.current_labels()) == 6
