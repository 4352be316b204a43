"""The embedding-first loop in simulation: heads on frozen embeddings, refitted every batch."""

import numpy as np
import pytest

from atl_desktop.jobs import run_job
from atl_desktop.simulate import (
    Arm,
    Embeddings,
    SimData,
    SimulationConfig,
    run_embedding_arm,
    second_stage_job,
    simulate_job,
)
from atl_desktop.store import ProjectError


def _blobs(n_per_class: int, seed: int):
    """Three well separated classes in 4-D: a linear head gets them all right."""
    rng = np.random.default_rng(seed)
    centres = np.array([[6, 0, 0, 0], [0, 6, 0, 0], [0, 0, 6, 0]], dtype=np.float64)
    x = np.concatenate([c + rng.normal(size=(n_per_class, 4)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(3), n_per_class)
    return x, y


def test_labels_grow_by_batches_and_the_head_learns():
    pool, y_pool = _blobs(30, 0)
    test, y_test = _blobs(20, 1)
    emb = Embeddings(pool, test, {})
    config = SimulationConfig(budget=12, batch=3, initial=0, seeds=(0,), metric="balanced_accuracy")
    arm = Arm("margin", "margin", head="logreg")
    records = run_job(run_embedding_arm(emb, y_pool, y_test, arm, config, 0, ("a", "b", "c")))
    assert [r["labels"] for r in records] == [3, 6, 9, 12]  # cold start: nothing to fit at 0
    # The first batch is the cold start's TypiClust (margin needs predictions): one per class
    # here, as the three clusters are the three classes.
    assert records[0]["balanced_accuracy"] == pytest.approx(1.0)
    assert records[-1]["accuracy"] == pytest.approx(1.0)
    # The last record names the labelled rows: what a second stage fine-tunes on.
    assert len(records[-1]["labelled_rows"]) == 12 and "labelled_rows" not in records[0]


def test_random_initial_labels_are_measured_at_round_zero():
    pool, y_pool = _blobs(10, 0)
    test, y_test = _blobs(5, 1)
    config = SimulationConfig(budget=8, batch=4, initial=4, seeds=(0,))
    records = run_job(run_embedding_arm(Embeddings(pool, test, {}), y_pool, y_test,
                                        Arm("random", "random", head="prototype"), config, 0, ("a", "b", "c")))
    assert [r["labels"] for r in records] == [4, 8]


def test_head_arms_refuse_ceal_and_unknown_heads():
    with pytest.raises(ProjectError, match="head"):
        Arm("x", "margin", head="svm")
    with pytest.raises(ProjectError, match="CEAL"):
        Arm("x", "margin", pseudo=True, head="logreg")


def test_simulation_with_a_self_supervised_encoder_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    y = np.repeat(np.arange(2), 20)
    x[y == 1] //= 4  # class 1 is dark: even a barely trained encoder separates it
    data = SimData(x[::2], y[::2], x[1::2], y[1::2], ("light", "dark"))
    config = SimulationConfig(budget=6, batch=2, initial=0, seeds=(0, 1), metric="balanced_accuracy",
                              selfsup={"backbone": "smallcnn", "steps": 2, "batch_size": 8})
    arms = [Arm("random", "random", head="logreg"), Arm("typiclust", "typiclust", head="logreg")]
    summary = run_job(simulate_job(data, arms, config, tmp_path))
    assert list(summary["arms"]) == ["random", "typiclust"]  # no fine-tuned baseline added
    assert summary["arms"]["typiclust"]["labels"] == [2, 4, 6]
    info = summary["embeddings"]
    assert info["encoder"] == "selfsup" and info["selfsup"]["steps"] == 2
    assert info["images_embedded"] == 40
    # Embeddings and runs are cached: a second run reads them and gives the same curves.
    again = run_job(simulate_job(data, arms, config, tmp_path))
    assert again["arms"]["typiclust"]["mean"] == summary["arms"]["typiclust"]["mean"]


def test_second_stage_fine_tunes_on_the_given_rows_only():
    """Only rows of class 1 are given: a fine-tune that learns from them predicts class 1
    everywhere (test accuracy 1 on class-1 images, 0 on class-0 ones); one that used the
    whole pool would not."""
    from atl_desktop.models.registry import build_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    y = np.repeat(np.arange(2), 20)
    config = SimulationConfig(epochs=1, min_steps=30, batch_size=8, lr=1e-2, input_size=16)
    for test_class, expected in ((1, 1.0), (0, 0.0)):
        data = SimData(x, y, x[:10], np.full(10, test_class), ("a", "b"))
        model = build_model("smallcnn", 2, seed=0, input_size=16)
        result = run_job(second_stage_job(model, data, np.arange(20, 30), config, 0))
        assert result["accuracy"] == pytest.approx(expected)
