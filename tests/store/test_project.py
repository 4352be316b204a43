import hashlib
import shutil
import sqlite3

import pytest

from atl_desktop.store import ClassError, NewerProjectError, NewImage, Project, ProjectError, schema
from atl_desktop.store.schema import MIGRATIONS, SCHEMA_VERSION, migrate


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


@pytest.fixture
def project(tmp_path):
    with Project.create(tmp_path / "p.atl") as p:
        yield p


def test_create_makes_file_and_folder_and_refuses_existing(tmp_path):
    p = Project.create(tmp_path / "demo")  # suffix added
    assert p.path.name == "demo.atl" and p.path.is_file() and p.data_dir.is_dir()
    p.close()
    with pytest.raises(ProjectError, match="already exists"):
        Project.create(tmp_path / "demo.atl")


def test_open_refuses_missing_and_non_project_files(tmp_path):
    with pytest.raises(ProjectError, match="No project"):
        Project.open(tmp_path / "nothing.atl")
    junk = tmp_path / "junk.atl"
    junk.write_text("hello")
    with pytest.raises(ProjectError, match="not an ATL Desktop project"):
        Project.open(junk)


def test_label_history_is_append_only_and_current_label_is_newest(project):
    a, b = project.add_class("a"), project.add_class("b")
    img, new = project.add_image(sha256=_sha(1), location="x.png")
    assert new
    project.set_label(img, a, annotator="ann")
    project.set_label(img, b, annotator="bob", suggestion=a, suggestion_confidence=0.9, strategy="entropy")
    assert project.current_labels() == {img: b}
    history = project.label_history(img)
    assert [e.class_id for e in history] == [a, b]
    assert history[1].annotator == "bob" and history[1].suggestion_class_id == a
    assert history[1].strategy == "entropy"
    project.set_label(img, None)
    assert project.current_labels() == {}
    assert len(project.label_history(img)) == 3


def test_duplicate_content_is_merged(project):
    first = project.add_image(sha256=_sha(1), location="x.png")
    second = project.add_image(sha256=_sha(1), location="y.png")
    assert first == (first[0], True) and second == (first[0], False)
    assert len(project.images()) == 1


def test_add_images_merges_duplicates_in_the_batch_and_before_it(project, tmp_path):
    (tmp_path / "c.png").write_bytes(b"12345")
    old, _ = project.add_image(sha256=_sha(1), location="old.png")
    results = project.add_images([
        NewImage(_sha(2), "a.png", file_size=10, mtime=1.5, width=3, height=4, mode="L", bit_depth=8),
        NewImage(_sha(1), "b.png"),  # the content of "old.png"
        NewImage(_sha(3), "c.png", domain="source", split="val"),  # size and mtime read from the file
        NewImage(_sha(2), "d.png"),  # the content of "a.png", earlier in the batch
    ])
    a, c = results[0][0], results[2][0]
    assert results == [(a, True), (old, False), (c, True), (a, False)]
    assert len({old, a, c}) == 3
    records = {r.id: r for r in project.images()}
    assert len(records) == 3
    assert records[a].location == "a.png" and records[a].file_size == 10 and records[a].mtime == 1.5
    assert (records[a].width, records[a].height, records[a].mode, records[a].bit_depth) == (3, 4, "L", 8)
    assert records[c].file_size == 5 and records[c].mtime == (tmp_path / "c.png").stat().st_mtime
    assert (records[c].domain, records[c].split) == ("source", "val")


def test_add_images_over_several_insert_statements(project):
    images = [NewImage(_sha(i), f"{i}.png", file_size=1) for i in range(1200)]
    images.insert(600, NewImage(_sha(3), "again.png", file_size=1))  # equal to one inserted before it
    results = project.add_images(images)
    assert [new for _, new in results] == [True] * 600 + [False] + [True] * 600
    ids = [image_id for image_id, _ in results]
    assert ids[600] == ids[3] and len(set(ids)) == 1200
    locations = {r.id: r.location for r in project.images()}
    assert locations == {image_id: image.location for image, (image_id, new) in zip(images, results, strict=True) if new}


def test_add_images_refuses_a_bad_batch_whole(project):
    with pytest.raises(ProjectError, match="Unknown split"):
        project.add_images([NewImage(_sha(1), "a.png"), NewImage(_sha(2), "b.png", split="train")])
    assert project.images() == []


def test_bad_values_are_refused_with_a_message(project):
    with pytest.raises(ProjectError, match="Unknown domain"):
        project.add_image(sha256=_sha(1), location="x", domain="elsewhere")
    with pytest.raises(ProjectError, match="Unknown split"):
        project.add_image(sha256=_sha(1), location="x", split="train")
    with pytest.raises(ProjectError, match="no such image or class"):
        project.set_label(12345, None)
    with pytest.raises(ProjectError, match="Unknown label kind"):
        img, _ = project.add_image(sha256=_sha(2), location="x")
        project.set_label(img, None, kind="guess")


def test_failed_transaction_rolls_back_everything(project):
    with pytest.raises(RuntimeError):
        with project.transaction():
            project.add_image(sha256=_sha(1), location="x.png")
            project.add_class("a")
            raise RuntimeError("boom")
    assert project.images() == [] and project.classes() == []


def test_filters_by_domain_and_split_and_counts(project):
    a = project.add_class("a")
    s, _ = project.add_image(sha256=_sha(1), location="s", domain="source", split="pool")
    t, _ = project.add_image(sha256=_sha(2), location="t", domain="target", split="pool")
    u, _ = project.add_image(sha256=_sha(3), location="u", domain="target", split="test")
    project.set_label(s, a, kind="import")
    project.set_truth(u, a)
    assert project.image_ids(domain="target") == [t, u]
    assert project.current_labels(domain="target") == {}
    assert project.current_labels(domain="source") == {s: a}
    assert project.truth(split="test") == {u: a} and project.truth(split="pool") == {}
    counts = project.counts()
    assert counts["total"] == 3 and counts["labelled"] == 1 and counts["unlabelled"] == 2
    assert counts["images"] == {"source/pool": 1, "target/pool": 1, "target/test": 1}
    assert counts["by_class"] == {"a": 1} and counts["by_who"] == {"import": 1}


def test_class_edits_keep_history(project):
    a, b = project.add_class("a"), project.add_class("b")
    assert [c.key for c in project.classes()] == ["1", "2"]
    with pytest.raises(ClassError):
        project.add_class("a")
    with pytest.raises(ClassError):
        project.rename_class(b, "a")
    imgs = [project.add_image(sha256=_sha(i), location=str(i))[0] for i in range(3)]
    project.set_label(imgs[0], a)
    project.set_label(imgs[1], b)
    assert project.merge_classes(a, b) == [imgs[0]]
    assert project.current_labels() == {imgs[0]: b, imgs[1]: b}
    assert project.class_names() == ["b"] and project.class_index() == {b: 0}
    project.rename_class(b, "bee")
    assert project.delete_class(b) == [imgs[0], imgs[1]]
    assert project.current_labels() == {} and project.classes() == []
    # 2 labels given, 1 relabel by the merge, 2 clears by the delete: nothing overwritten
    assert len(project.label_history()) == 5


def test_restored_class_gets_its_place_back(project):
    ids = [project.add_class(n) for n in ("a", "b", "c")]
    record = project.classes()[1]
    project.delete_class(ids[1])
    assert project.class_names() == ["a", "c"]
    project.restore_class(record)
    assert project.classes() == [project.classes()[0], record, project.classes()[2]]
    assert project.class_names() == ["a", "b", "c"]


def test_pseudo_labels_accept_reject_and_undo(project):
    a, b = project.add_class("a"), project.add_class("b")
    i1, _ = project.add_image(sha256=_sha(1), location="1")
    i2, _ = project.add_image(sha256=_sha(2), location="2")
    p1, p2 = project.add_pseudo_labels([(i1, a, 0.99, 0.01), (i2, b, 0.98, 0.02)], round=None)
    assert {p.id for p in project.pseudo_labels()} == {p1, p2}
    assert project.counts()["pending_pseudo"] == 2
    project.accept_pseudo([p1], annotator="ann")
    project.reject_pseudo([p2], annotator="ann")
    assert project.current_labels() == {i1: a}
    assert project.label_history(i1)[-1].kind == "accepted-pseudo"
    assert project.rejected_pseudo() == {(i2, b)}
    project.undo_pseudo_decision([p1, p2])
    assert project.current_labels() == {} and len(project.pseudo_labels()) == 2
    # a new proposal expires the old pending ones
    project.add_pseudo_labels([(i1, b, 0.9, 0.1)])
    assert [p.class_id for p in project.pseudo_labels()] == [b]


def test_checkpoints_rounds_settings(project):
    r = project.start_round("entropy", {"batch": 10})
    c1 = project.add_checkpoint(file="checkpoints/x.safetensors", sha256="x", backbone="smallcnn",
                                classes=["a", "b"], round=r, metrics={"acc": 0.5})
    c2 = project.add_checkpoint(file="checkpoints/y.safetensors", sha256="y", backbone="smallcnn",
                                classes=["a", "b"], parent_id=c1, config={"lr": 0.1})
    project.finish_round(r, {"acc": 0.7}, checkpoint_id=c2)
    assert project.latest_checkpoint().id == c2
    assert project.checkpoint(c2).parent_id == c1 and project.checkpoint(c2).config == {"lr": 0.1}
    (rnd,) = project.rounds()
    assert rnd.params == {"batch": 10} and rnd.metrics == {"acc": 0.7} and rnd.checkpoint_id == c2
    project.set_setting("active_checkpoint", c1)  # a rollback
    assert project.latest_checkpoint().id == c1
    c3 = project.add_checkpoint(file="checkpoints/z.safetensors", sha256="z", backbone="smallcnn",
                                classes=["a", "b"], parent_id=c1)
    assert project.latest_checkpoint().id == c3  # training after a rollback moves on from it
    assert project.get_setting("missing", 3) == 3


def test_relative_paths_survive_moving_the_project_with_its_images(tmp_path):
    folder = tmp_path / "study"
    (folder / "images").mkdir(parents=True)
    img = folder / "images" / "a.png"
    img.write_bytes(b"pixels")
    with Project.create(folder / "p.atl") as p:
        loc = p.relative_location(img)
        assert loc == "images/a.png"
        p.add_image(sha256=_sha(1), location=loc, original_path=str(img))
        media = p.store_media(b"copied", _sha(2), ".png")
        p.add_image(sha256=_sha(2), location=media, stored="media")
    moved = tmp_path / "elsewhere"
    shutil.move(folder, moved)
    with Project.open(moved / "p.atl") as p:
        ref, copy = p.images()
        assert p.image_path(ref) == moved / "images" / "a.png"
        assert p.image_path(copy).read_bytes() == b"copied"
        assert p.check_files() == {"missing": [], "changed": []}
        assert p.image_id_for_path(moved / "images" / "a.png") == ref.id
        (moved / "images" / "a.png").write_bytes(b"other pixels")
        assert p.check_files()["changed"] == [ref.id]
        (moved / "images" / "a.png").unlink()
        assert p.check_files()["missing"] == [ref.id]


def test_newer_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "future.atl"
    Project.create(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(NewerProjectError, match="newer version"):
            Project.open(path, readonly=readonly)
    assert path.read_bytes() == before


def test_version_1_file_is_migrated_with_its_data(tmp_path):
    path = tmp_path / "old.atl"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, path.name, target=1)
    db.execute("INSERT INTO classes (name, position) VALUES ('tumour', 0)")
    db.execute(
        "INSERT INTO images (sha256, location, stored, domain, split, added)"
        " VALUES ('abc', 'a.png', 'ref', 'target', 'pool', 0)"
    )
    db.execute("INSERT INTO label_events (image_id, class_id, kind, time) VALUES (1, 1, 'human', 0)")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()
    with pytest.raises(ProjectError, match="older project format"):
        Project.open(path, readonly=True)
    with Project.open(path) as p:
        assert p.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
        assert p.class_names() == ["tumour"] and p.current_labels() == {1: 1}
        assert p.pseudo_labels() == []
        assert p.integrity_ok()


def test_failed_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "old.atl"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, path.name, target=1)
    db.close()

    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration failed")

    monkeypatch.setattr(schema, "MIGRATIONS", [MIGRATIONS[0], broken])
    with pytest.raises(RuntimeError):
        Project.open(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half_done" not in tables
    db.close()


def test_readonly_handle_cannot_write(project):
    project.add_class("a")
    with Project.open(project.path, readonly=True) as reader:
        assert reader.class_names() == ["a"]
        with pytest.raises(ProjectError, match="read-only"):
            reader.add_class("b")


def test_another_connection_shares_the_lock(project):
    twin = project.another_connection()
    twin.add_class("a")
    twin.close()
    assert project.class_names() == ["a"]
    with pytest.raises(ProjectError):
        Project.open(project.path)  # the lock is still held by `project`


def test_labels_of_agrees_with_label_of_across_query_chunks(project):
    a, b = project.add_class("a"), project.add_class("b")
    ids = [i for i, _ in project.add_images(
        NewImage(_sha(i), f"{i}.png", file_size=1, mtime=0.0) for i in range(1203))]
    project.set_label(ids[0], a)
    project.set_label(ids[0], b)  # relabelled: the newest counts
    project.set_label(ids[700], a)  # in the second chunk of 500
    project.set_label(ids[1202], b)
    project.set_label(ids[1202], None)  # cleared again
    labels = project.labels_of(ids)
    assert labels == {i: project.label_of(i) for i in ids}
    assert labels[ids[0]] == b and labels[ids[700]] == a and labels[ids[1202]] is None
    assert sum(v is not None for v in labels.values()) == 2
