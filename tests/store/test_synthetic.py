"""Generated (synthetic) images: stored as flagged pool images with their latent codes."""

import hashlib
import sqlite3

from atl_desktop.store import Project
from atl_desktop.store.schema import MIGRATIONS, migrate


def _png_like(i: int) -> bytes:
    return b"\x89PNG fake " + bytes([i])


def _add(project: Project, i: int, latent, generator: int, **kwargs) -> int:
    data = _png_like(i)
    return project.add_synthetic_image(data, sha256=hashlib.sha256(data).hexdigest(), generator_id=generator,
                                       latent=latent, width=16, height=16, mode="L", **kwargs)


def test_synthetic_images_keep_latent_flag_and_label_after_reopening(tmp_path):
    path = tmp_path / "p.atl"
    latent = [0.5, -1.25, 3.0, 1e-3]
    with Project.create(path) as project:
        a = project.add_class("a")
        real, _ = project.add_image(sha256="0" * 64, location="real.png")
        gen = project.add_generator(file="generators/x.safetensors", sha256="f" * 64, architecture="dcgan",
                                    config={"latent_dim": 4}, metrics={"steps": 3})
        image = _add(project, 1, latent, gen, strategy="gaal", score=0.7)
        round_id = project.start_round("gaal", {"chosen": [image]})
        project.set_synthetic_round([image], round_id)
        project.set_label(image, a, round=round_id, strategy="gaal")
    with Project.open(path) as project:
        record = project.image(image)
        assert record.synthetic == 1 and record.stored == "media" and record.domain == "target"
        assert (project.data_dir / record.location).read_bytes() == _png_like(1)
        meta = project.synthetic_record(image)
        # float32 round trip: 1e-3 is not exact in float32, the others are.
        assert meta.latent[:3] == (0.5, -1.25, 3.0) and abs(meta.latent[3] - 1e-3) < 1e-9
        assert (meta.generator_id, meta.round_id, meta.strategy) == (gen, round_id, "gaal")
        assert abs(meta.score - 0.7) < 1e-12
        assert project.synthetic_record(real) is None and project.image(real).synthetic == 0
        assert project.image_ids("target", "pool", synthetic=False) == [real]
        assert project.image_ids("target", "pool", synthetic=True) == [image]
        assert project.image_ids("target", "pool") == [real, image]
        assert project.current_labels("target", "pool") == {image: a}
        assert project.latest_generator().config == {"latent_dim": 4}
        assert project.counts()["synthetic"] == 1
        assert project.integrity_ok()


def test_the_same_generated_image_twice_is_one_image(tmp_path):
    with Project.create(tmp_path / "p.atl") as project:
        gen = project.add_generator(file="g", sha256="f" * 64, architecture="dcgan")
        first = _add(project, 1, [1.0], gen)
        assert _add(project, 1, [2.0], gen) == first
        assert project.synthetic_record(first).latent == (1.0,)


def test_version_2_file_gains_the_synthetic_flag(tmp_path):
    path = tmp_path / "old.atl"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, "old.atl", target=2)
    db.execute("INSERT INTO images (sha256, location, stored, domain, split, added)"
               " VALUES ('a', 'x.png', 'ref', 'target', 'pool', 0)")
    db.close()
    with Project.open(path) as project:
        assert project.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert project.images()[0].synthetic == 0 and project.generators() == []
