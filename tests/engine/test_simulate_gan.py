"""GAAL and ASAL in `atl simulate`: synthetic labels counted against the budget and answered by
the stand-in oracle, ASAL's pool rows, and the GAN and oracle kept for a rerun."""

import numpy as np
import pytest

from atl_desktop.cli import main
from atl_desktop.jobs import run_job
from atl_desktop.simulate import Arm, SimData, SimulationConfig, simulate_job
from atl_desktop.simulate_gan import GanSimConfig
from atl_desktop.store import ProjectError
from tests.conftest import TESTDATA

GAN = GanSimConfig(steps=20, width=8, latent_dim=8, dims=8, oracle_epochs=1, batch_size=16)
CONFIG = SimulationConfig(budget=28, batch=4, initial=20, seeds=(0,), epochs=1, max_steps=2, stop_set=30,
                          batch_size=16)


@pytest.fixture(scope="module")
def data():
    with np.load(TESTDATA / "usps_900.npz", allow_pickle=False) as f:
        return SimData(f["x_train"][:120], f["y_train"][:120], f["x_test"][:60], f["y_test"][:60],
                       tuple(str(c) for c in f["classes"]))


def test_gaal_and_asal_arms_spend_the_budget_and_report_their_oracle(data, tmp_path):
    arms = [Arm("gaal", "gaal", params={"steps": 3}), Arm("asal", "asal", params={"steps": 3})]
    summary = run_job(simulate_job(data, arms, CONFIG, tmp_path, gan=GAN))
    gaal = summary["arms"]["gaal"]["rounds"]["0"]
    assert [r["labels"] for r in gaal] == [20, 24, 28] and [r["synthetic"] for r in gaal] == [0, 4, 8]
    assert all(0.0 <= r["oracle_agreement"] <= 1.0 for r in gaal[1:])
    assert gaal[1]["synthetic_entropy"] >= 0.0
    asal = summary["arms"]["asal"]["rounds"]["0"]
    assert [r["labels"] for r in asal] == [20, 24, 28] and "synthetic" not in asal[0]
    info = summary["gan"]
    assert info["oracle"] == "classifier" and 0.0 <= info["oracle_test_accuracy"] <= 1.0
    assert info["gan"]["image_size"] == 16 and info["gan"]["channels"] == 1  # USPS: 16 px grey
    runs = tmp_path / "runs"
    assert len(list(runs.glob("gan-*.safetensors"))) == 1 and len(list(runs.glob("oracle-*.safetensors"))) == 1
    again = run_job(simulate_job(data, arms, CONFIG, tmp_path, gan=GAN))  # every run reused
    assert again["arms"]["gaal"]["rounds"] == summary["arms"]["gaal"]["rounds"]
    assert again["gan"]["oracle_test_accuracy"] == info["oracle_test_accuracy"]  # the same oracle, reloaded


def test_gan_arms_refuse_pseudo_labels():
    with pytest.raises(ProjectError, match="not combined with gaal"):
        Arm("gaal+ceal", "gaal", pseudo=True)


def test_atl_simulate_runs_asal(tmp_path, capsys):
    with np.load(TESTDATA / "usps_900.npz", allow_pickle=False) as f:
        np.savez(tmp_path / "usps.npz", x_train=f["x_train"][:100], y_train=f["y_train"][:100],
                 x_test=f["x_test"][:40], y_test=f["y_test"][:40], classes=f["classes"])
    code = main(["simulate", str(tmp_path / "usps.npz"), "--strategies", "asal", "--budget", "24", "--batch", "4",
                 "--initial", "20", "--seeds", "1", "--epochs", "1", "--gan-steps", "5", "--out",
                 str(tmp_path / "out"), "--quiet"])
    assert code == 0
    assert "asal" in capsys.readouterr().out and (tmp_path / "out" / "simulation.json").is_file()
