"""GAAL and ASAL in `atl simulate`: synthetic labels counted against the budget and answered by
the stand-in oracle, ASAL's pool rows, and the GAN and oracle kept for a rerun."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from atl_desktop import simulate_gan
from atl_desktop.active.gan import GanConfig
from atl_desktop.active.gansampling import SyntheticBatch
from atl_desktop.active.strategies import synthesise
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


def test_gaal_and_asal_arms_spend_the_budget_and_report_their_oracle(data, tmp_path, monkeypatch):
    made = []  # GAAL's batches, as the strategy returned them

    def keep(*args, **kwargs):
        batch = synthesise(*args, **kwargs)
        made.append(batch)
        return batch

    monkeypatch.setattr(simulate_gan, "synthesise", keep)
    arms = [Arm("gaal", "gaal", params={"steps": 3}), Arm("asal", "asal", params={"steps": 3})]
    summary = run_job(simulate_job(data, arms, CONFIG, tmp_path, gan=GAN))
    gaal = summary["arms"]["gaal"]["rounds"]["0"]
    assert [r["labels"] for r in gaal] == [20, 24, 28] and [r["synthetic"] for r in gaal] == [0, 4, 8]
    assert len(made) == 2 and all(len(b.probs) == 4 for b in made)
    for record, batch in zip(gaal[1:], made, strict=True):
        # The round records its batch's mean entropy, -sum p ln p of the batch's probabilities.
        by_hand = [-sum(float(p) * np.log(float(p)) for p in row if p > 0) for row in batch.probs]
        assert batch.entropy.tolist() == pytest.approx(by_hand, abs=1e-5)
        assert record["synthetic_entropy"] == float(batch.entropy.mean())
        assert record["oracle_agreement"] * 4 == pytest.approx(round(record["oracle_agreement"] * 4))  # of 4
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


class FixedOracle(torch.nn.Module):
    """Answers classes 0, 1, 2, 3 for the four images it is shown."""

    def __init__(self):
        super().__init__()
        from atl_desktop.models.registry import backbone_info

        self.spec = backbone_info("smallcnn").spec

    def forward(self, x):
        return torch.eye(10)[:4] * 5.0


@pytest.mark.parametrize("oracle", ["classifier", "nearest"])
def test_gaal_labels_its_images_by_the_oracle_and_measures_agreement_by_hand(oracle, monkeypatch):
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.25, 0.75]])
    entropy = np.array([0.0, np.log(2), np.log(2), -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))])
    batch = SyntheticBatch(np.zeros((4, 16, 16), np.uint8), np.zeros((4, 8), np.float32), probs,
                           np.zeros(4), entropy)
    monkeypatch.setattr(simulate_gan, "synthesise", lambda *args, **kwargs: batch)
    nearest_rows = np.array([[2], [1], [0], [3]])  # pool rows labelled 0, 1, 7, 7
    features = SimpleNamespace(space=SimpleNamespace(transform=lambda x: x),
                               exact=SimpleNamespace(search=lambda f, k: SimpleNamespace(indices=nearest_rows)))
    sim = SimpleNamespace(gan=None, gan_config=GanConfig(image_size=16), oracle=FixedOracle(), features=features,
                          pool_labels=np.array([7, 1, 0, 7]), device=torch.device("cpu"), info={"oracle": oracle})
    from atl_desktop.models.registry import backbone_info

    images, info = simulate_gan.gaal_labelled(sim, None, 4, np.random.default_rng(0), {},
                                              backbone_info("smallcnn").spec)
    # The classifier says 0 1 2 3, the nearest pool images 0 1 7 7: they agree on 2 of 4.
    assert info["oracle_agreement"] == 0.5
    assert info["synthetic_entropy"] == pytest.approx((2 * np.log(2) + 0.5623351446) / 4, abs=1e-9)
    assert images.labels == ([0, 1, 2, 3] if oracle == "classifier" else [0, 1, 7, 7])


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
