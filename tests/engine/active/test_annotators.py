"""Several annotators: Cohen's kappa and confusion between two annotators worked out by
hand, cross-checked with the stopping signal's kappa; consistency on a repeat set."""

from __future__ import annotations

import math

import numpy as np

from atl_desktop.active.annotators import (
    REPEAT,
    REPEAT_UNDONE,
    agreement,
    kappa_from_confusion,
    labels_by_annotator,
    repeat_candidates,
    summarise,
)
from atl_desktop.active.calibration import cohen_kappa
from atl_desktop.store import Project


def _project(tmp_path, n_images: int = 10) -> Project:
    project = Project.create(tmp_path / "p.atl")
    for name in ("a", "b"):
        project.add_class(name)
    for k in range(n_images):
        project.add_image(sha256=f"{k:064x}", location=f"img{k}.png", stored="ref", width=4, height=4,
                          mode="L", bit_depth=8)
    return project


def test_kappa_by_hand():
    # rows alice, columns bob: p_o = 7/10; marginals (5, 5) and (6, 4): p_e = (30 + 20) / 100 = 0.5
    assert math.isclose(kappa_from_confusion(np.array([[4, 1], [2, 3]])), (0.7 - 0.5) / (1 - 0.5))
    assert kappa_from_confusion(np.array([[3, 0], [0, 0]])) == 1.0  # one class everywhere: full agreement
    assert math.isnan(kappa_from_confusion(np.zeros((2, 2))))


def test_two_annotators_agreement_and_confusion(tmp_path):
    with _project(tmp_path) as project:
        a, b = (c.id for c in project.classes())
        ids = project.image_ids()
        alice = [a, a, a, a, a, b, b, b, b, b]
        bob = [a, a, a, a, b, a, a, b, b, b]
        for image_id, x, y in zip(ids, alice, bob, strict=True):
            project.set_label(image_id, x, annotator="alice")
            project.set_label(image_id, y, annotator="bob")
        project.set_label(ids[0], None, annotator="carol")  # carol cleared one: she labelled nothing
        labels = labels_by_annotator(project.label_history())
        assert "human:carol" not in {k for k, v in labels.items() if v}
        pair = agreement(labels, "human:alice", "human:bob", [a, b])
        assert pair.n == 10 and pair.class_ids == (a, b)
        assert pair.confusion == ((4, 1), (2, 3))
        assert pair.disagreements == (ids[4], ids[5], ids[6])
        assert math.isclose(pair.observed, 0.7) and math.isclose(pair.kappa, 0.4)
        positions = {a: 0, b: 1}
        assert math.isclose(pair.kappa, cohen_kappa([positions[x] for x in alice], [positions[y] for y in bob]))

        summary = summarise(project)
        # Bob labelled last everywhere, except image 0 whose newest event is carol's clearing.
        assert summary.labelled == {"human:bob": 9}
        assert summary.given == {"human:alice": 10, "human:bob": 10}
        flipped = summary.agreement("human:bob", "human:alice")
        assert flipped.first == "human:bob" and flipped.confusion == ((4, 2), (1, 3))


def test_consistency_on_the_repeat_set(tmp_path):
    with _project(tmp_path) as project:
        a, b = (c.id for c in project.classes())
        i1, i2, i3, i4 = project.image_ids()[:4]
        for image_id, cls in ((i1, a), (i2, b), (i3, a)):
            project.set_label(image_id, cls, annotator="alice")
        project.set_label(i1, a, annotator="alice", strategy=REPEAT)  # same answer
        project.set_label(i2, a, annotator="alice", strategy=REPEAT)  # changed her mind
        project.set_label(i3, b, annotator="alice")  # an ordinary relabel...
        project.set_label(i3, b, annotator="alice", strategy=REPEAT)  # ...then the same again
        project.set_label(i4, a, annotator="bob", strategy=REPEAT)  # nothing earlier to compare with
        checks = summarise(project).consistency
        assert set(checks) == {"human:alice"}
        alice = checks["human:alice"]
        assert (alice.n, alice.same, alice.changed) == (3, 2, (i2,))
        assert math.isclose(alice.share, 2 / 3)
        project.set_label(i2, b, annotator="alice", strategy=REPEAT_UNDONE)  # undo restores her answer
        alice = summarise(project).consistency["human:alice"]
        assert (alice.n, alice.same, alice.changed) == (2, 2, ())


def test_repeat_candidates_are_the_annotators_own_labels_fresh_first(tmp_path):
    with _project(tmp_path) as project:
        a, _ = (c.id for c in project.classes())
        ids = project.image_ids()
        for image_id in ids[:6]:
            project.set_label(image_id, a, annotator="alice")
        project.set_label(ids[5], a, annotator="bob")  # bob's label stands on image 5 now
        project.set_label(ids[0], a, annotator="alice", strategy=REPEAT)  # already repeated
        rng = np.random.default_rng(0)
        assert sorted(repeat_candidates(project, "alice", 4, rng)) == sorted(ids[1:5])
        assert sorted(repeat_candidates(project, "alice", 10, rng)) == sorted(ids[:5])
        assert repeat_candidates(project, "nobody", 3, rng) == []
