"""GAAL's synthetic images in the query view: marked as synthetic, labelled like any image,
still marked after reopening."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from atl_desktop.gui.queryview import SYNTHETIC_COLOUR
from atl_desktop.jobs import Progress
from atl_desktop.store import Project
from atl_desktop.store.keys import LAST_QUERY


@dataclass(frozen=True)
class Item:
    image_id: int
    score: float
    reason: str
    top: list = field(default_factory=list)
    synthetic: bool = False


@dataclass(frozen=True)
class Result:
    round_id: int
    items: list


def synthetic_query_job(project, *, strategy, batch, checkpoint_id=None, params=None):
    """Stores `batch` generated-looking images as the GAAL query does, plus one real image."""
    generator = project.add_generator(file="generators/g.safetensors", sha256="0" * 64, architecture="dcgan")
    ids = []
    for k in range(batch):
        buffer = io.BytesIO()
        Image.fromarray(np.full((16, 16), 40 * k + 20, np.uint8), "L").save(buffer, format="PNG")
        data = buffer.getvalue()
        ids.append(project.add_synthetic_image(data, sha256=hashlib.sha256(data).hexdigest(),
                                               generator_id=generator, latent=[0.1 * k, -0.2],
                                               width=16, height=16, mode="L", strategy="gaal"))
    round_id = project.start_round("gaal", {"chosen": ids})
    project.set_synthetic_round(ids, round_id)
    yield Progress(1, 1, "synthesising")
    real = project.image_ids(synthetic=False)[0]
    items = [Item(i, 1.0, "SYNTHETIC: made by the GAN", [(0, 0.4), (1, 0.35)], True) for i in ids]
    return Result(round_id, [*items, Item(real, 0.5, "a real one", [(0, 0.9)])])


def _purple_pixels(widget) -> int:
    image = widget.grab().toImage()
    target = SYNTHETIC_COLOUR.rgb()
    return sum(image.pixel(x, y) == target for x in range(0, image.width(), 2) for y in range(0, image.height(), 2))


def test_synthetic_tiles_are_marked_labelled_and_kept(qtbot, open_window, project_path):
    window = open_window(project_path, query_factory=synthetic_query_job)
    view = window.query_view
    assert window.start_query("gaal", 2)
    qtbot.waitUntil(lambda: view.model.rowCount() == 3, timeout=5000)
    qtbot.waitUntil(lambda: not window.runner.is_running(), timeout=5000)
    tiles = view.model.tiles()
    assert [t.synthetic for t in tiles] == [True, True, False]
    assert "synthetic images made by the GAN" in view.summary.text()
    qtbot.waitUntil(lambda: _purple_pixels(view.grid.viewport()) > 50, timeout=5000)

    qtbot.keyClick(view.grid, "2")  # the expert labels the first synthetic image
    project = window.ws.project
    first = tiles[0].image_id
    assert project.current_labels() == {first: project.class_by_name("stroma").id}
    event = project.label_history(first)[-1]
    assert event.strategy == "gaal" and event.round_id == project.rounds()[-1].id
    window.close()

    with Project.open(project_path) as reopened:
        assert [item["synthetic"] for item in reopened.get_setting(LAST_QUERY)] == [True, True, False]
        assert reopened.image(first).synthetic == 1
    again = open_window(project_path).query_view
    assert [t.synthetic for t in again.model.tiles()] == [True, True, False]
