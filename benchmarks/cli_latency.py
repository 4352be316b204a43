"""How long the `atl` command takes to answer, against a bare Python start-up in the same run.

    python benchmarks/cli_latency.py [--repeats 9]

On a small project (the 270 PathMNIST tiles in resources/testdata, ground truth hidden),
times the wall clock of `python -c pass`, `atl --help`, `atl info P`, `atl label P ID --set C`
and `atl query P --strategy random --batch 5`, each started as its own process, interleaved
(one of each per repetition, so a change in the machine's load touches all alike) after one
untimed warm-up. A query opens a round, so each timed query is preceded by an untimed
`atl round discard`. Reports medians, each command's median over the bare start-up's, and the
goals of issue 22: `--help`, `info` and `label` within 1 s and within 15 times a bare start.
Writes benchmarks/results/cli_latency.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchcommon import machine, write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "resources" / "testdata" / "pathmnist_270.npz"
GOAL_S = 1.0
GOAL_RATIO = 15.0
GOAL_COMMANDS = ("atl --help", "atl info", "atl label")


def run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    atl = str(Path(sys.executable).with_name("atl"))
    host = machine()  # before the runs, so its load average is the one they start at
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="atl-latency-") as folder:
        project = str(Path(folder) / "small.atl")
        subprocess.run([atl, "new", project], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([atl, "import", project, str(DATA), "--labels", "truth", "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "atl --help": [atl, "--help"],
            "atl info": [atl, "info", project],
            "atl label": [atl, "label", project, "1", "--set", "adipose", "--annotator", "bench"],
            "atl query --strategy random": [atl, "query", project, "--strategy", "random", "--batch", "5",
                                            "--quiet"],
        }
        discard = [atl, "round", "discard", project]
        times: dict[str, list[float]] = {name: [] for name in commands}
        for repetition in range(args.repeats + 1):  # the first is a warm-up, not kept
            for name, argv in commands.items():
                if name.startswith("atl query") and repetition:
                    subprocess.run(discard, check=True, stdout=subprocess.DEVNULL)
                seconds = run(argv)
                if repetition:
                    times[name].append(round(seconds, 4))
    bare = statistics.median(times["python -c pass"])
    medians = {name: round(statistics.median(values), 4) for name, values in times.items()}
    ratios = {name: round(median / bare, 1) for name, median in medians.items() if name != "python -c pass"}
    from atl_desktop import __version__

    results = {
        "machine": host,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "versions": {"python": sys.version.split()[0], "atl_desktop": __version__},
        "project": "270 PathMNIST tiles (28 px), 9 classes, ground truth hidden",
        "repeats": args.repeats,
        "median_s": medians,
        "ratio_to_python": ratios,
        "goals": {"commands": list(GOAL_COMMANDS), "max_median_s": GOAL_S, "max_ratio": GOAL_RATIO},
        "goals_met": {name: medians[name] <= GOAL_S and ratios[name] <= GOAL_RATIO for name in GOAL_COMMANDS},
        "all_s": times,
    }
    path = write_json("cli_latency.json", results)
    for name, median in medians.items():
        ratio = f"  ({ratios[name]}× python)" if name in ratios else ""
        print(f"{name:30} {median:.3f} s{ratio}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
