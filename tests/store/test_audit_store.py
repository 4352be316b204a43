"""The audit sample in the store: migration 5, marking, held-out labels, release."""

import hashlib
import sqlite3

from atl_desktop.store import Project
from atl_desktop.store.schema import SCHEMA_VERSION, migrate


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _project_with_labels(path):
    p = Project.create(path)
    a = p.add_class("a")
    ids = [p.add_image(sha256=_sha(i), location=f"{i}.png")[0] for i in range(6)]
    for i in ids[:4]:
        p.set_label(i, a)
    return p, a, ids


def test_a_version_4_file_gains_the_audit_table_and_keeps_its_labels(tmp_path):
    path = tmp_path / "old.atl"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, path.name, target=4)
    db.execute("INSERT INTO classes (name, position) VALUES ('a', 0)")
    db.execute("INSERT INTO images (sha256, location, stored, domain, split, added)"
               " VALUES ('abc', 'a.png', 'ref', 'target', 'pool', 0)")
    db.execute("INSERT INTO label_events (image_id, class_id, kind, time) VALUES (1, 1, 'human', 0)")
    db.close()
    with Project.open(path) as p:
        assert p.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert p.audit_images() == [] and p.current_labels(for_training=True) == {1: 1}
        assert p.counts()["audit"] == {"drawn": 0, "held_out": 0, "labelled": 0}


def test_held_out_audit_labels_are_not_training_labels_until_released(tmp_path):
    p, a, ids = _project_with_labels(tmp_path / "p.atl")
    with p:
        p.mark_audit([ids[1], ids[5]], seed=7)
        p.mark_audit([ids[1]], seed=8)  # drawn once: the first draw is kept
        records = p.audit_images()
        assert [(r.image_id, r.seed, r.released) for r in records] == [(ids[1], 7, None), (ids[5], 7, None)]
        assert set(p.current_labels()) == set(ids[:4])
        assert set(p.current_labels(for_training=True)) == {ids[0], ids[2], ids[3]}
        assert p.counts()["audit"] == {"drawn": 2, "held_out": 2, "labelled": 1}
        assert p.release_audit([ids[5]]) == [ids[5]]
        assert p.audit_ids(held_out=True) == {ids[1]} and p.audit_ids(held_out=False) == {ids[5]}
        assert p.release_audit() == [ids[1]]
        assert set(p.current_labels(for_training=True)) == set(ids[:4])
        p.unrelease_audit([ids[1]])
        assert ids[1] not in p.current_labels(for_training=True)


def test_marking_expires_a_pending_pseudo_label_on_the_image(tmp_path):
    p, a, ids = _project_with_labels(tmp_path / "p.atl")
    with p:
        p.add_pseudo_labels([(ids[4], a, 0.99, 0.01), (ids[5], a, 0.98, 0.02)])
        p.mark_audit([ids[5]])
        assert [x.image_id for x in p.pseudo_labels("pending")] == [ids[4]]
