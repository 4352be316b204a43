"""The pool browser: a 100,000-image project shows at once, filters, sorting by score,
labelling a selection (one undoable step) and sending it to the query view."""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import QItemSelectionModel

from atl_desktop.gui.poolmodel import LABEL_NONE, PAGE, PoolQuery
from atl_desktop.store import Project

BIG = 100_000


def add_many_images(path, n: int) -> None:
    """n more image rows (all showing the first image's pixels), every 10th labelled by carol,
    in one transaction: far faster than importing."""
    with Project.open(path) as project:
        first = project.image(project.image_ids()[0])
        class_ids = [c.id for c in project.classes()]
        now = time.time()
        with project.transaction() as db:
            start = db.execute("SELECT MAX(id) FROM images").fetchone()[0] + 1
            db.executemany(
                "INSERT INTO images (id, sha256, location, stored, original_path, width, height,"
                " mode, bit_depth, domain, split, added) VALUES (?, ?, ?, 'ref', NULL, 24, 24,"
                " 'RGB', 8, 'target', ?, ?)",
                ((start + k, f"{k:064x}", first.location, "pool" if k % 50 else "test", now)
                 for k in range(n)))
            db.executemany(
                "INSERT INTO label_events (image_id, class_id, kind, annotator, time)"
                " VALUES (?, ?, 'human', 'carol', ?)",
                ((start + k, class_ids[k % len(class_ids)], now) for k in range(0, n, 10)))


def test_a_100000_image_pool_shows_its_first_page_at_once(qtbot, open_window, project_path):
    add_many_images(project_path, BIG)
    window = open_window(project_path)
    browser = window.pool_browser
    model = browser.model
    assert model.rowCount() == PAGE  # one page read, not 100,000 rows
    assert model.canFetchMore()
    assert model.total() == BIG + 8
    assert browser.count_label.text() == f"{BIG + 8:,} images"
    window.tabs.setCurrentWidget(browser)
    qtbot.waitUntil(lambda: browser.thumbs.cached() > 0, timeout=5000)
    browser.thumbs.wait_idle()
    qtbot.wait(50)
    # Only the tiles in view were decoded, off the GUI thread: far fewer than one page.
    assert 0 < browser.thumbs.cached() < PAGE // 2
    browser.grid.scrollToBottom()  # the view asks for the next page when it gets near the end
    qtbot.waitUntil(lambda: model.rowCount() >= 2 * PAGE, timeout=5000)
    assert model.rowCount() < 10 * PAGE  # still nowhere near 100,000 rows

    _choose(browser.who_box, "human:carol")
    _choose(browser.split_box, "test")
    browser.apply_filters()
    # Every 10th of the added images is carol's; every 50th is in the test split: k % 50 == 0.
    assert model.total() == BIG // 50
    rows = [model.row_data(r) for r in range(model.rowCount())]
    assert all(r.who == "human:carol" and r.record.split == "test" for r in rows)

    _choose(browser.who_box, None)
    _choose(browser.split_box, None)
    _choose(browser.label_box, LABEL_NONE)
    browser.apply_filters()
    assert model.total() == BIG + 8 - BIG // 10
    assert all(model.row_data(r).label_id is None for r in range(model.rowCount()))
    assert browser.stack.currentWidget() is browser.grid

    _choose(browser.domain_box, "source")  # there are no source images
    browser.apply_filters()
    assert model.rowCount() == 0 and browser.stack.currentWidget() is browser.empty
    assert "No image matches these filters" in browser.empty.text()


def test_labelling_a_selection_is_one_undoable_step(qtbot, open_window, project_path):
    window = open_window(project_path)
    browser, project = window.pool_browser, window.ws.project
    window.tabs.setCurrentWidget(browser)
    _select_rows(browser, [0, 2, 5])
    ids = browser.selected_ids()
    assert len(ids) == 3
    stroma = project.class_by_name("stroma")
    assert browser.label_selected(stroma.id)
    assert all(project.label_of(i) == stroma.id for i in ids)
    assert window.ws.stack.count() == 1
    qtbot.waitUntil(lambda: browser.model.row_data(0).label_id == stroma.id, timeout=2000)

    window.ws.stack.undo()
    assert all(project.label_of(i) is None for i in ids)

    _select_rows(browser, [1, 3])
    chosen = browser.selected_ids()
    browser.query_button.click()
    assert window.tabs.currentWidget() is window.query_view
    assert [t.image_id for t in window.query_view.model.tiles()] == chosen


def test_sorting_by_uncertainty_follows_the_cached_scores(qtbot, open_window, project_path):
    from atl_desktop.active.scores import entropy
    from atl_desktop.active.scoring import ScoringConfig, load_scores, scores_dir
    from atl_desktop.jobs import run_job
    from atl_desktop.loop.session import query_job
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    with Project.open(project_path) as project:
        model = build_model("smallcnn", 3, seed=1)
        save_checkpoint(project, model, classes=project.class_names())
        run_job(query_job(project, strategy="entropy", batch=2))  # scores the pool (cached)
        checkpoint = project.latest_checkpoint()
        ids = project.image_ids()
        table = load_scores(scores_dir(project.data_dir, checkpoint.sha256, ScoringConfig()), ids)
        expected = [ids[k] for k in np.argsort(-entropy(np.asarray(table.probs)), kind="stable")]

    window = open_window(project_path)
    browser = window.pool_browser
    _choose(browser.sort_box, "score")
    browser.apply_filters()
    qtbot.waitUntil(lambda: browser.model.query == PoolQuery(sort="score"), timeout=20000)
    shown = [browser.model.row_data(r).image_id for r in range(browser.model.rowCount())]
    assert shown == expected
    scores = [browser.model.row_data(r).score for r in range(browser.model.rowCount())]
    assert scores == sorted(scores, reverse=True)


def _choose(box, value) -> None:
    box.setCurrentIndex(box.findData(value))


def _select_rows(browser, rows) -> None:
    selection = browser.grid.selectionModel()
    selection.clearSelection()
    for row in rows:
        selection.select(browser.model.index(row), QItemSelectionModel.SelectionFlag.Select)


def test_thumbnail_size_applies_at_once(qtbot, open_window, project_path):
    window = open_window(project_path)
    browser = window.pool_browser
    window.tabs.setCurrentWidget(browser)
    qtbot.waitUntil(lambda: browser.thumbs.cached() > 0, timeout=5000)
    before = browser.grid.visualRect(browser.model.index(0)).width()
    browser.set_thumbnail_side(160)
    assert browser.thumbs.side == 160 and browser.thumbs.cached() == 0
    qtbot.waitUntil(lambda: browser.grid.visualRect(browser.model.index(0)).width() > before, timeout=2000)


def test_sorting_before_scoring_offers_to_score_the_pool(qtbot, open_window, project_path):
    from atl_desktop.models import build_model
    from atl_desktop.models.checkpoints import save_checkpoint

    with Project.open(project_path) as project:
        save_checkpoint(project, build_model("smallcnn", 3, seed=1), classes=project.class_names())
    window = open_window(project_path)
    browser = window.pool_browser
    window.tabs.setCurrentWidget(browser)
    _choose(browser.sort_box, "score")
    browser.apply_filters()
    qtbot.waitUntil(lambda: browser.model.query.sort == "score", timeout=20000)
    assert browser.score_button.isVisible() and "not scored them yet" in browser.count_label.text()
    assert browser.model.row_data(0).score is None
    with qtbot.waitSignal(window.runner.finished, timeout=60000):
        browser.score_button.click()
    qtbot.waitUntil(lambda: browser.model.row_data(0) is not None and browser.model.row_data(0).score is not None,
                    timeout=20000)
    assert not browser.score_button.isVisible()
    scores = [browser.model.row_data(r).score for r in range(browser.model.rowCount())]
    assert scores == sorted(scores, reverse=True)
