"""`atl simulate` on a tiny real set: outputs, random included, reproducible curves, resumption."""

import csv
import json

import numpy as np
import pytest

from atl_desktop.cli import main
from atl_desktop.jobs import collect, run_job
from atl_desktop.simulate import (
    Arm,
    SimulationConfig,
    area_under_curve,
    labels_to_reach,
    learning_curve_figure,
    load_simulation_data,
    simulate_job,
    summarise,
)
from atl_desktop.store import ProjectError
from tests.conftest import TESTDATA


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    with np.load(TESTDATA / "usps_900.npz", allow_pickle=False) as f:
        np.savez(folder / "usps.npz", x_train=f["x_train"][:150], y_train=f["y_train"][:150],
                 x_test=f["x_test"][:100], y_test=f["y_test"][:100], classes=f["classes"])
    with np.load(TESTDATA / "mnist_600.npz", allow_pickle=False) as f:
        np.savez(folder / "mnist.npz", x=f["x"][:200], y=f["y"][:200], classes=f["classes"])
    return folder / "usps.npz", folder / "mnist.npz"


def test_labels_to_reach_and_area_worked_by_hand():
    labels, acc = [20, 40, 60, 80], [0.5, 0.7, 0.8, 0.9]
    assert labels_to_reach(labels, acc, 0.8) == 60
    assert labels_to_reach(labels, acc, 0.95) is None
    # trapezoids: 20 * (0.6 + 0.75 + 0.85) = 44, over a range of 60
    assert area_under_curve(labels, acc) == pytest.approx(44 / 60)


def _runs(curves):
    """Per-seed records as run_arm_job writes them, from {seed: [(labels, accuracy), ...]}."""
    return {seed: [{"labels": n, "accuracy": a} for n, a in points] for seed, points in curves.items()}


def test_summary_compares_mean_curves_with_random_at_the_end_of_the_budget():
    runs = {
        # random's mean: 0.55, 0.70, 0.85 at 20, 40, 60 labels
        "random": _runs({0: [(20, 0.5), (40, 0.7), (60, 0.8)], 1: [(20, 0.6), (40, 0.7), (60, 0.9)]}),
        # mean 0.55, 0.85, 0.90: reaches 0.85 at 40
        "margin": _runs({0: [(20, 0.5), (40, 0.9), (60, 0.9)], 1: [(20, 0.6), (40, 0.8), (60, 0.9)]}),
        # mean 0.55, 0.80, 0.84: never reaches 0.85
        "entropy": _runs({0: [(20, 0.5), (40, 0.8), (60, 0.84)], 1: [(20, 0.6), (40, 0.8), (60, 0.84)]}),
    }
    arms = [Arm("random", "random"), Arm("margin", "margin"), Arm("entropy", "entropy")]
    summary = summarise(runs, arms, SimulationConfig(budget=60, batch=20, initial=20, seeds=(0, 1)))
    assert summary["random_final_accuracy"] == pytest.approx(0.85) and summary["random_final_labels"] == 60
    out = summary["arms"]
    assert out["random"]["labels_to_match_random_60"] == 60
    assert out["margin"]["labels_to_match_random_60"] == 40 == out["margin"]["labels_to_match_random"]
    assert out["entropy"]["labels_to_match_random_60"] is None
    assert out["margin"]["mean"] == pytest.approx([0.55, 0.85, 0.9])
    assert out["margin"]["std"] == pytest.approx([0.05, 0.05, 0.0])
    # trapezoids over 40 labels: 20 * ((0.55 + 0.85) / 2 + (0.85 + 0.9) / 2) / 40
    assert out["margin"]["aulc"] == pytest.approx((0.7 + 0.875) / 2)
    assert out["entropy"]["accuracy_per_seed"] == {"0": [0.5, 0.8, 0.84], "1": [0.6, 0.8, 0.84]}

    figure = learning_curve_figure(summary)
    ax = figure.axes[0]
    assert len(ax.collections) == 3  # one ±std band per arm
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["random"].get_linestyle() == "--"
    assert "margin (matches random with 40)" in lines and "entropy" in lines
    band = ax.collections[1].get_paths()[0].vertices  # margin's band spans mean ± std
    assert band[:, 1].min() == pytest.approx(0.5) and band[:, 1].max() == pytest.approx(0.9)


def test_simulate_command_writes_json_csv_png_with_random(files, tmp_path, capsys):
    target, source = files
    out = tmp_path / "sim"
    argv = [
        "simulate", str(target), "--source", str(source), "--strategies", "entropy", "--budget", "30",
        "--batch", "10", "--initial", "10", "--seeds", "1", "--epochs", "1", "--source-epochs", "1",
        "--out", str(out), "--quiet",
    ]
    assert main(argv) == 0
    assert "Random reaches" in capsys.readouterr().out
    summary = json.loads((out / "simulation.json").read_text())
    assert set(summary["arms"]) == {"random", "entropy"}
    for arm in summary["arms"].values():
        assert arm["labels"] == [10, 20, 30]
        assert len(arm["accuracy_per_seed"]["0"]) == 3 and all(0 <= a <= 1 for a in arm["mean"])
        assert arm["aulc"] is not None
    assert summary["arms"]["random"]["labels_to_match_random"] <= 30
    with open(out / "simulation.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["arm"] for r in rows} == {"random", "entropy"}
    assert (out / "simulation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Same seed, same curve: run again in memory, without the saved runs.
    data = load_simulation_data(target, source)
    config = SimulationConfig(budget=30, batch=10, initial=10, seeds=(0,), epochs=1, source_epochs=1)
    again = run_job(simulate_job(data, [Arm("random", "random"), Arm("entropy", "entropy")], config))
    for name in ("random", "entropy"):
        assert again["arms"][name]["accuracy_per_seed"]["0"] == summary["arms"][name]["accuracy_per_seed"]["0"]
        assert again["arms"][name]["rounds"]["0"] == summary["arms"][name]["rounds"]["0"]

    # Finished runs are reused: nothing is trained the second time.
    progress = collect(simulate_job(data, [Arm("random", "random"), Arm("entropy", "entropy")], config, out))
    assert not any("fine-tuning" in p.message or "pre-training" in p.message for p in progress)


def test_rounds_instead_of_a_budget_and_a_budget_ending_with_a_smaller_batch(files):
    target, _ = files
    data = load_simulation_data(target)
    arms = [Arm("random", "random")]
    by_rounds = SimulationConfig(budget=10, batch=7, initial=10, rounds=2, seeds=(0,), epochs=1)
    summary = run_job(simulate_job(data, arms, by_rounds))
    assert summary["arms"]["random"]["labels"] == [10, 17, 24]
    by_budget = SimulationConfig(budget=25, batch=10, initial=10, seeds=(0,), epochs=1)
    summary = run_job(simulate_job(data, arms, by_budget))
    assert summary["arms"]["random"]["labels"] == [10, 20, 25]


def test_cold_start_with_pseudo_labels_and_random_added(files):
    target, _ = files
    data = load_simulation_data(target)
    config = SimulationConfig(budget=20, batch=10, initial=0, seeds=(1,), epochs=1)
    summary = run_job(simulate_job(data, [Arm("margin+ceal", "margin", pseudo=True)], config))
    assert list(summary["arms"]) == ["random", "margin+ceal"]  # random is always the baseline
    rounds = summary["arms"]["margin+ceal"]["rounds"]["1"]
    assert [r["labels"] for r in rounds] == [10, 20]  # no source model: nothing to measure at 0
    # No entropy is below a threshold of 0, and every one (at most ln 10 = 2.3 nats) is below
    # 10: then every pool row left unlabelled after the query is pseudo-labelled, 150 - 10 and
    # 150 - 20 (the pool is USPS's first 150 training images).
    assert summary["pool"] == 150
    for delta0, expected in ((0.0, [0, 0]), (10.0, [140, 130])):
        config = SimulationConfig(budget=20, batch=10, initial=0, seeds=(1,), epochs=1, pseudo_delta0=delta0)
        rounds = run_job(simulate_job(data, [Arm("margin+ceal", "margin", pseudo=True)], config)
                         )["arms"]["margin+ceal"]["rounds"]["1"]
        assert [r["pseudo"] for r in rounds] == expected
        assert [r["pseudo_accuracy"] is None for r in rounds] == [delta0 == 0.0] * 2


def test_imagefolder_target_is_read_resized_and_split(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(10):
            pixels = rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    data = load_simulation_data(tmp_path, image_size=28)
    assert data.classes == ("cat", "dog")
    assert data.x_pool.shape == (14, 28, 28, 3) and data.x_test.shape == (6, 28, 28, 3)
    assert np.bincount(data.y_test).tolist() == [3, 3]  # stratified 70/30


def test_every_arm_of_a_large_comparison_has_its_own_colour():
    runs = {name: _runs({0: [(20, 0.5), (40, 0.6)]}) for name in ["random", *(f"arm{i}" for i in range(12))]}
    arms = [Arm(name, "random") for name in runs]
    figure = learning_curve_figure(summarise(runs, arms, SimulationConfig(budget=40, seeds=(0,))))
    colours = [tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
               for line in figure.axes[0].get_lines()[:13]]
    assert len(set(colours)) == 13


def test_adapt_steps_lengthen_only_the_first_fine_tune(files, monkeypatch):
    """An arm's adaptation to the unlabelled pool before the first query: round 0's fine-tune
    runs adapt_steps steps with the arm's method, later rounds the configured steps."""
    import atl_desktop.transfer.train as train_module

    steps: dict[str, list[int]] = {}
    real_train = train_module.train

    def counting_train(model, train_set, config, **kwargs):
        result = yield from real_train(model, train_set, config, **kwargs)
        steps.setdefault(config.method, []).append(result.steps)
        return result

    monkeypatch.setattr(train_module, "train", counting_train)
    data = load_simulation_data(*files)
    arms = [Arm("random", "random"), Arm("margin+dann+adapt", "margin", method="dann", adapt_steps=7)]
    config = SimulationConfig(budget=20, batch=10, initial=10, seeds=(0,), epochs=3, max_steps=2,
                              source_epochs=1, batch_size=16)
    summary = run_job(simulate_job(data, arms, config))
    assert steps["finetune"][1:] == [2, 2]  # after source pre-training: rounds 0 and 1 of random
    assert steps["dann"] == [7, 2]
    assert summary["arms"]["margin+dann+adapt"]["labels"] == [10, 20]

    steps.clear()  # a cold start adapts too, on the source and the pool alone
    cold = SimulationConfig(budget=10, batch=10, initial=0, seeds=(0,), epochs=3, max_steps=2,
                            source_epochs=1, batch_size=16)
    summary = run_job(simulate_job(data, arms, cold))
    assert steps["dann"] == [7, 2]
    assert summary["arms"]["margin+dann+adapt"]["labels"] == [0, 10]


def test_an_arm_without_adaptation_steps_keeps_its_saved_key():
    assert "adapt_steps" not in Arm("margin", "margin").to_json()  # runs saved before stay valid
    assert Arm("m", "margin", method="dann", adapt_steps=300).to_json()["adapt_steps"] == 300
    with pytest.raises(ProjectError, match="adapt_steps"):
        Arm("m", "margin", adapt_steps=-1)


@pytest.mark.parametrize("method", ["dann", "autodial", "source_only", "selective"])
def test_a_method_that_needs_a_source_is_refused_without_one_before_any_work(method, files, tmp_path,
                                                                              capsys, monkeypatch):
    import atl_desktop.transfer.train as train_module

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(train_module, "train", no_training)
    target, _ = files
    code = main(["simulate", str(target), "--method", method, "--budget", "20", "--seeds", "1",
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "needs labelled source images" in err
    assert not (tmp_path / "out").exists()
    # The Python API refuses too, at its first step, before the random arm trains.
    data = load_simulation_data(target)
    job = simulate_job(data, [Arm(f"margin+{method}", "margin", method=method)], SimulationConfig(budget=20))
    with pytest.raises(ProjectError, match=f"The method {method} needs labelled source images"):
        next(job)


def test_fine_tuning_and_heads_need_no_source():
    from atl_desktop.simulate import check_source
    from atl_desktop.transfer.methods import METHODS

    assert [name for name, m in METHODS.items() if not m.needs_source()] == ["finetune"]
    check_source([Arm("margin", "margin"), Arm("head", "margin", method="dann", head="logreg")], False)
    check_source([Arm("margin+dann", "margin", method="dann")], True)
    with pytest.raises(ProjectError, match="Unknown method"):
        Arm("m", "margin", method="nope")


def test_rounds_choose_no_epoch_on_validation_labels_the_budget_does_not_count(files, monkeypatch):
    """With a validation split in the data, every fine-tune still trains its fixed schedule:
    no validation set, so no best epoch kept by labels outside the budget."""
    import dataclasses

    import atl_desktop.transfer.train as train_module
    from atl_desktop.simulate import _run_key

    calls = []
    real_train = train_module.train

    def recording_train(model, train_set, config, **kwargs):
        calls.append((kwargs.get("val_set"), config.patience))
        return (yield from real_train(model, train_set, config, **kwargs))

    monkeypatch.setattr(train_module, "train", recording_train)
    data = load_simulation_data(*files)
    with_val = dataclasses.replace(data, x_val=data.x_test[:40], y_val=data.y_test[:40])
    config = SimulationConfig(budget=20, batch=10, initial=10, seeds=(0,), epochs=2, source_epochs=1, batch_size=16)
    summary = run_job(simulate_job(with_val, [Arm("margin", "margin")], config))
    assert summary["arms"]["margin"]["labels"] == [10, 20]
    assert len(calls) == 1 + 2 * 2  # source pre-training, then rounds 0 and 1 of random and margin
    assert calls == [(None, 0)] * 5
    # Runs saved when a validation split still chose the epochs are not reused.
    arm = Arm("margin", "margin")
    assert _run_key(with_val, arm, config, 0) != _run_key(data, arm, config, 0)


def test_random_dihedral_gives_each_of_the_eight_symmetries():
    import torch

    from atl_desktop.simulate import random_dihedral

    image = torch.arange(9.0).view(1, 3, 3)
    torch.manual_seed(0)
    seen = {tuple(random_dihedral(image).flatten().tolist()) for _ in range(200)}
    assert len(seen) == 8  # 4 rotations x (flipped or not), all distinct for this image
    assert tuple(image.flatten().tolist()) in seen
    assert all(sorted(s) == list(range(9)) for s in seen)  # the same pixels, moved


def test_project_recipe_trains_each_round_its_minimum_steps_with_one_cycle(files, monkeypatch):
    """--project-recipe: every fine-tune takes min_steps steps with the one-cycle schedule, on
    flipped and rotated copies of the labelled images, at the input size asked for."""
    import atl_desktop.transfer.train as train_module
    from atl_desktop.cli import build_parser
    from atl_desktop.commands.simulate import _recipe

    args = build_parser().parse_args(["simulate", "t", "--out", "o", "--project-recipe", "--min-steps", "6"])
    assert _recipe(args) == {"min_steps": 6, "schedule": "onecycle", "augment": "dihedral"}
    seen = []
    real_train = train_module.train

    def spying_train(model, train_set, config, **kwargs):
        result = yield from real_train(model, train_set, config, **kwargs)
        seen.append((config.schedule, result.steps, train_set.datasets[0].dihedral
                     if hasattr(train_set, "datasets") else train_set.dihedral, model.spec.size))
        return result

    monkeypatch.setattr(train_module, "train", spying_train)
    config = SimulationConfig(budget=20, batch=10, initial=10, seeds=(0,), epochs=1, batch_size=16,
                              input_size=20, **_recipe(args))
    run_job(simulate_job(load_simulation_data(files[0]), [Arm("random", "random")], config))
    assert seen == [("onecycle", 6, True, 20), ("onecycle", 6, True, 20)]
    assert "schedule" not in SimulationConfig().run_fields()  # runs saved before keep their keys
    with pytest.raises(ProjectError, match="schedule"):
        SimulationConfig(schedule="steps")


def test_the_metric_follows_the_test_split_s_balance_unless_named():
    from atl_desktop.commands.simulate import _metric

    assert _metric("auto", [0, 0, 1, 1, 2, 2]) == "accuracy"
    assert _metric("auto", [0, 0, 0, 0, 1, 1]) == "balanced_accuracy"  # 4 against 2: above 1.5
    assert _metric("auto", [0, 0, 0, 1, 1]) == "accuracy"  # 3 against 2: the ordinary scatter
    assert _metric("accuracy", [0, 0, 0, 0, 1]) == "accuracy"
