"""The command line as a new user meets it: a start-up without torch, one round model shared by
`atl query`/`atl train` and `atl round ...`, labels with the window's provenance, typo-proof
classes, and one-line errors."""

import json
import subprocess
import sys

import pytest

from atl_desktop.cli import main
from atl_desktop.jobs import Progress, run_with_tqdm
from atl_desktop.loop.rounds import DISCARDED, open_round
from atl_desktop.store import Project, ProjectError
from tests.conftest import PYTHON, ROOT
from tests.engine.loop.test_rounds import copy_project, template  # noqa: F401 (the fixture)

TRAIN_ARGS = ["--backbone", "smallcnn", "--epochs", "1", "--batch-size", "16", "--patience", "0",
              "--device", "cpu", "--quiet"]

# Imports the commands that need no model, in a fresh interpreter, and says which heavy modules
# came in. `main` is called for real (the parser is built, the command runs).
NO_TORCH_SCRIPT = """
import contextlib, io, sys
from pathlib import Path
from PIL import Image
from atl_desktop.cli import main
folder = Path(sys.argv[1])
(folder / "images").mkdir()
for i in range(3):
    Image.new("RGB", (8, 8), (80 * i, 10, 10)).save(folder / "images" / f"{i}.png")
project = str(folder / "p.atl")
codes = []
for argv in (["--help"], ["new", project, "--classes", "a,b"], ["import", project, str(folder / "images")],
             ["info", project], ["strategies"], ["round", "status", project],
             ["label", project, "1", "--set", "a"], ["label", project, "2", "--set", "typo"],
             ["export", project, str(folder / "out.csv"), "--format", "csv"],
             ["query", "--help"], ["round", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(main(argv))
        except SystemExit as stop:
            codes.append(stop.code)
print(codes)
print(" ".join(m for m in ("torch", "torchvision", "PySide6") if m in sys.modules))
"""


def test_commands_that_need_no_model_start_without_torch(tmp_path):
    run = subprocess.run([PYTHON, "-c", NO_TORCH_SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    codes, imported = (run.stdout + "\n").split("\n")[:2]
    assert codes == "[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]"  # the typo is refused; the rest ran
    assert imported == "", f"imported by commands that need no model: {imported}"


def test_importing_the_cli_and_its_help_pull_no_torch():
    code = ("import sys, atl_desktop.cli as c\n"
            "try:\n    c.build_parser().parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'torchvision' in sys.modules)")
    run = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.stdout.split()[-2:] == ["False", "False"], run.stdout + run.stderr


def test_lazy_choices_still_check_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["query", str(tmp_path / "p.atl"), "--strategy", "psychic", "--batch", "2"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'psychic'" in err and "entropy" in err  # the registry's names
    with pytest.raises(SystemExit):
        main(["train", "p.atl", "--method", "nope"])
    assert "dann" in capsys.readouterr().err


def test_train_help_names_every_augmentation_and_optimizer(capsys):
    from atl_desktop.models.transforms import AUGMENTATIONS
    from atl_desktop.transfer.train import OPTIMIZERS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in (*AUGMENTATIONS, *OPTIMIZERS))
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "dann" in listed and "smallcnn" in listed


def test_one_round_at_a_time_for_query_train_and_round(template, tmp_path, capsys):  # noqa: F811
    path = copy_project(template, tmp_path)
    assert main(["query", str(path), "--strategy", "margin", "--batch", "3", "--json", "--quiet"]) == 0
    chosen = [row["id"] for row in json.loads(capsys.readouterr().out)["images"]]
    for argv in (["query", str(path), "--strategy", "random", "--batch", "2", "--quiet"],
                 ["round", "query", str(path), "--strategy", "random", "--batch", "2", "--quiet"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Round 2 is still open (0 of 3" in err and "atl round discard" in err
    assert main(["train", str(path), *TRAIN_ARGS]) == 1  # nobody labelled the round yet
    assert "none of its 3 chosen images is labelled" in capsys.readouterr().err
    with Project.open(path) as p:
        truth = p.truth()
        names = {c.id: c.name for c in p.classes()}
    for image_id in chosen:
        assert main(["label", str(path), str(image_id), "--set", names[truth[image_id]]]) == 0
    capsys.readouterr()
    # A plain `atl train` finishes the round the plain `atl query` opened.
    assert main(["train", str(path), *TRAIN_ARGS, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["round"] == 2 and out["metrics"]["labels"] == 23
    assert main(["round", "status", str(path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["open"] is None and [r["round"] for r in status["finished"]] == [1, 2]
    assert status["finished"][1]["checkpoint"] == out["checkpoint"]
    assert main(["query", str(path), "--strategy", "random", "--batch", "2", "--quiet"]) == 0
    assert "Round 3" in capsys.readouterr().out


def test_discard_closes_the_open_round_and_keeps_its_labels(template, tmp_path, capsys):  # noqa: F811
    path = copy_project(template, tmp_path)
    assert main(["round", "discard", str(path)]) == 1
    assert "No open round" in capsys.readouterr().err
    assert main(["query", str(path), "--strategy", "random", "--batch", "2", "--json", "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out)["images"][0]["id"]
    with Project.open(path) as p:
        p.set_label(first, p.classes()[0].id, round=2)
        # A project from before the rule: a second unfinished round beside the open one.
        p.start_round("random", {"chosen": []})
    assert main(["round", "status", str(path)]) == 0
    assert "also unfinished" in capsys.readouterr().out
    assert main(["round", "discard", str(path)]) == 0
    assert "Round 2, 3 discarded" in capsys.readouterr().out
    with Project.open(path) as p:
        assert open_round(p) is None
        assert all(r.metrics.get(DISCARDED) for r in p.rounds()[1:])
        assert p.label_of(first) == p.classes()[0].id
    assert main(["round", "status", str(path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["open"] is None and status["finished"][-1]["discarded"]
    assert main(["query", str(path), "--strategy", "random", "--batch", "2", "--quiet"]) == 0


def test_label_records_what_the_query_showed(template, tmp_path, capsys):  # noqa: F811
    path = copy_project(template, tmp_path)
    assert main(["query", str(path), "--strategy", "entropy", "--batch", "3", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert main(["round", "discard", str(path)]) == 0 and "suggestion" in text
    capsys.readouterr()
    assert main(["query", str(path), "--strategy", "entropy", "--batch", "3", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)["images"]
    assert all(row["suggestion"]["class"] and 0 < row["suggestion"]["p"] <= 1 and row["reason"] for row in rows)
    assert all(row["score"] > 0 and row["path"].endswith(".png") for row in rows)
    shown, other = rows[0], rows[1]
    assert main(["label", str(path), str(shown["id"]), "--set", shown["suggestion"]["class"],
                 "--annotator", "bob"]) == 0
    with Project.open(path) as p:
        event = p.label_history(shown["id"])[-1]
        current = open_round(p)
        names = {c.name: c.id for c in p.classes()}
        assert (event.annotator, event.round_id, event.strategy) == ("bob", current.id, "entropy")
        assert event.checkpoint_id == current.checkpoint_id is not None
        assert event.suggestion_class_id == names[shown["suggestion"]["class"]]
        assert event.suggestion_confidence == pytest.approx(shown["suggestion"]["p"])
        outside = next(i for i in p.image_ids("target", "pool") if i not in {r["id"] for r in rows}
                       and p.label_of(i) is None)
    # An image the open round did not choose: no round, no suggestion, still who.
    assert main(["label", str(path), str(outside), "--set", other["suggestion"]["class"],
                 "--annotator", "bob"]) == 0
    with Project.open(path) as p:
        event = p.label_history(outside)[-1]
        assert (event.annotator, event.round_id, event.suggestion_class_id) == ("bob", None, None)


def test_label_takes_the_windows_annotator_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    settings = tmp_path / "config" / "ATL Desktop" / "ATL Desktop.conf"
    settings.parent.mkdir(parents=True)
    settings.write_text("[General]\nannotator=Dr Ada\nlast_project=/x/p.atl\n", encoding="utf-8")
    path = tmp_path / "p.atl"
    assert main(["new", str(path), "--classes", "a,b"]) == 0
    with Project.open(path) as p:
        image = _add_image(p, tmp_path)
    assert main(["label", str(path), str(image), "--set", "b"]) == 0
    with Project.open(path) as p:
        assert p.label_history(image)[-1].annotator == "Dr Ada"


def _add_image(project: Project, folder) -> int:
    from PIL import Image

    from atl_desktop.store.files import sha256_file

    file = folder / "one.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(file)
    image_id, _ = project.add_image(sha256=sha256_file(file), location=project.relative_location(file), stored="ref",
                                    original_path=str(file), width=8, height=8, mode="RGB", bit_depth=8)
    return image_id


def test_an_unknown_class_is_refused_unless_new(tmp_path, capsys):
    path = tmp_path / "p.atl"
    assert main(["new", str(path), "--classes", "lymphocytes,mucus"]) == 0
    with Project.open(path) as p:
        image = _add_image(p, tmp_path)
    capsys.readouterr()
    assert main(["label", str(path), str(image), "--set", "lymphocyte"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'lymphocytes'?" in err and "--new-class" in err
    with Project.open(path) as p:
        assert p.class_names() == ["lymphocytes", "mucus"] and p.label_of(image) is None
    assert main(["label", str(path), str(image), "--set", "stroma", "--new-class"]) == 0
    with Project.open(path) as p:
        assert p.class_names() == ["lymphocytes", "mucus", "stroma"]


def test_a_job_refused_before_any_work_leaves_no_progress_bar(capsys):
    def refused():
        raise ProjectError("no")
        yield Progress(0, 1)  # a generator, like every job

    with pytest.raises(ProjectError):
        run_with_tqdm(refused(), desc="query")
    assert capsys.readouterr().err == ""


def test_evaluate_without_a_test_split_says_how_to_add_one(tmp_path, capsys):
    path = tmp_path / "p.atl"
    assert main(["new", str(path), "--classes", "a,b"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no target images in the test split" in err
    assert "`atl import p.atl IMAGES --split test`" in err


if sys.platform.startswith("linux"):
    def test_configured_annotator_reads_what_qt_writes(tmp_path, monkeypatch):
        """The INI QSettings writes on Linux, with a value Qt quotes (edge spaces)."""
        from atl_desktop.userconfig import configured_annotator, window_settings_file

        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
        window_settings_file().parent.mkdir(parents=True)
        window_settings_file().write_text('[General]\nannotator=" Eve "\n', encoding="utf-8")
        assert configured_annotator() == "Eve"
        window_settings_file().write_text("[General]\n", encoding="utf-8")
        assert configured_annotator()  # the login name, as the window falls back to


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`atl strategies | head -1`: the pipe closes early; atl ends quietly with SIGPIPE's code."""
    script = ("import sys\nfrom atl_desktop.cli import main\n"
              "class Closed:\n    def write(self, text):\n        raise BrokenPipeError(32, 'Broken pipe')\n"
              "    def flush(self):\n        pass\n    def fileno(self):\n        return 1\n"
              "sys.stdout = Closed()\ncode = main(['strategies'])\nsys.stdout = sys.__stdout__\n"
              "print('code', code)\n")
    run = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "Traceback" not in run.stderr and run.returncode == 0, run.stderr
