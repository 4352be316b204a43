"""What every benchmark records: the machine it ran on, and where results go."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """CPU, cores, OS, Python, library versions, GPU and the load when the run started."""
    parts = [cpu_name(), f"{os.cpu_count()} logical cores",
             f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}"]
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        parts += [f"torch {torch.__version__} ({torch.get_num_threads()} threads)", gpu]
    except ImportError:
        parts.append("no torch")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f} at start")
    return "; ".join(parts)


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
