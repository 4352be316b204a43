"""More like this: streamed exact top-k by cosine, the LSH path, and the project job."""

import numpy as np
import pytest

from atl_desktop.active import similar
from atl_desktop.active.similar import SimilarIndex, cosine_top_k
from atl_desktop.jobs import run_job
from atl_desktop.store import Project, ProjectError
from tests.conftest import TESTDATA


def test_cosine_top_k_by_hand_across_blocks(monkeypatch):
    monkeypatch.setattr(similar, "BLOCK_ROWS", 2)  # four blocks: the running top-k is exercised
    x = np.array([[1, 0], [0, 1], [1, 1], [-1, 0], [2, 0.2], [3, 2.9], [0, -1]], dtype=np.float32)
    rows, sims = cosine_top_k(x, np.array([1.0, 0.0]), 3)
    # cos to (1, 0): 1, 0, .7071, -1, .9950, .7190, 0 -> rows 0, 4, 5
    assert rows.tolist() == [0, 4, 5]
    assert sims == pytest.approx([1.0, 2 / np.hypot(2, 0.2), 3 / np.hypot(3, 2.9)], rel=1e-6)
    allowed = np.array([False, True, True, True, False, True, True])
    rows, _ = cosine_top_k(x, np.array([1.0, 0.0]), 2, allowed)
    assert rows.tolist() == [5, 2]


def test_the_lsh_path_finds_the_exact_neighbours_of_clustered_points():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    x = (np.repeat(centres, 30, axis=0) + 0.01 * rng.normal(size=(600, 16))).astype(np.float32)
    index = SimilarIndex(x, exact_limit=100)  # 600 rows: above the limit, so LSH
    assert index.lsh is not None
    rows, sims = index.search(x[35], 5)
    exact, _ = cosine_top_k(x, x[35], 5)
    assert set(rows.tolist()) == set(exact.tolist())
    assert sims[0] == pytest.approx(1.0, abs=1e-4)


def test_similar_job_returns_unlabelled_pool_images_nearest_first(tmp_path):
    from atl_desktop.data.importers import ImportOptions, import_source
    from atl_desktop.loop.session import similar_job

    with Project.create(tmp_path / "p.atl") as p:
        run_job(import_source(p, TESTDATA / "pathmnist_270.npz",
                              ImportOptions(domain="target", split="pool", labels="truth")))
        ids = p.image_ids()
        p.set_label(ids[1], p.classes()[0].id)
        found = run_job(similar_job(p, ids[0], k=5))
        assert len(found) == 5
        got = [f.image_id for f in found]
        assert ids[0] not in got and ids[1] not in got  # not itself, nothing labelled
        assert [f.similarity for f in found] == sorted((f.similarity for f in found), reverse=True)
        with pytest.raises(ProjectError):
            run_job(similar_job(p, ids[0], k=0))
