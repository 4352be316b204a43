"""`atl-desktop --self-test`: a headless smoke check of an installation.

Opens a fresh copy of the demo project in a temporary folder, scores a batch,
trains one step, writes and reloads a checkpoint, builds a torchvision backbone
(random weights) and runs it, and reports the device. Each check prints one
line; any failure makes the exit status non-zero.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from collections.abc import Callable


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"CUDA ({torch.cuda.get_device_name(0)})"
    return "CPU"


def _torchvision_backbone() -> str:
    """A ResNet-18 from torchvision's architectures (random weights: nothing is downloaded)."""
    import torch

    from atl_desktop.models.registry import build_model

    model = build_model("resnet18", 3, input_size=64, seed=0).eval()
    with torch.inference_mode():
        logits = model(torch.zeros(2, 3, 64, 64))
    if tuple(logits.shape) != (2, 3) or not torch.isfinite(logits).all():
        raise RuntimeError(f"resnet18 gave logits of shape {tuple(logits.shape)}")
    return "resnet18 built and run on 2 images"


def run_self_test(print_line: Callable[[str], None] = print) -> int:
    from atl_desktop.demo import DEFAULT_DEMO, install_demo
    from atl_desktop.jobs import run_job
    from atl_desktop.store import Project

    failures = 0
    with tempfile.TemporaryDirectory(prefix="atl-self-test-") as tmp:
        os.environ["ATL_DESKTOP_DATA"] = tmp  # never touch the user's own demo copy
        state: dict = {}

        def open_demo():
            state["project"] = Project.open(install_demo(DEFAULT_DEMO))
            return f"{state['project'].counts()['total']} images"

        def score():
            from atl_desktop.loop.rounds import discard_round
            from atl_desktop.loop.session import query_job

            # Only the scoring is checked: the demo's open round and this query's go unused.
            discard_round(state["project"])
            result = run_job(query_job(state["project"], strategy="entropy", batch=4))
            discard_round(state["project"])
            return f"chose {len(result.items)} of {result.pool_size}: {result.items[0].reason}"

        def train_and_reload():
            from atl_desktop.loop.session import project_train_config, train_job
            from atl_desktop.models.checkpoints import load_checkpoint

            project = state["project"]
            config = project_train_config(project, max_steps=1, epochs=1)
            checkpoint = run_job(train_job(project, config=config))
            model, record = load_checkpoint(project, checkpoint)
            return f"checkpoint {record.id} ({record.backbone}, {record.sha256[:12]}) reloaded"

        checks = [("device", _device), ("open demo", open_demo), ("score", score),
                  ("train one step, write and reload a checkpoint", train_and_reload),
                  ("torchvision backbone", _torchvision_backbone)]
        for name, check in checks:
            start = time.perf_counter()
            try:
                detail = check()
                print_line(f"ok    {name}: {detail} ({time.perf_counter() - start:.1f} s)")
            except Exception:  # a self-test reports every failure and goes on
                failures += 1
                print_line(f"FAIL  {name}:\n{traceback.format_exc()}")
        if "project" in state:
            state["project"].close()
        os.environ.pop("ATL_DESKTOP_DATA", None)
    print_line("self-test passed" if not failures else f"self-test FAILED ({failures} checks)")
    return 1 if failures else 0
