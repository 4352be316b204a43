"""The embedding-first loop in the window: suggestions follow every label, with no button."""

from __future__ import annotations

from atl_desktop.jobs import run_job
from atl_desktop.loop.session import query_job
from atl_desktop.store import Project
from tests.conftest import TESTDATA


def _labelled_project(tmp_path):
    from atl_desktop.data.importers import ImportOptions, import_source

    path = tmp_path / "live.atl"
    with Project.create(path) as p:
        run_job(import_source(p, TESTDATA / "pathmnist_270.npz",
                              ImportOptions(domain="target", split="pool", labels="truth")))
        given = {}
        for image_id, class_id in sorted(p.truth().items()):
            if list(given.values()).count(class_id) < 1:
                given[image_id] = class_id
        for image_id, class_id in given.items():
            p.set_label(image_id, class_id)
    return path


def test_suggestions_are_refitted_after_a_label(qtbot, open_window, tmp_path):
    window = open_window(_labelled_project(tmp_path), query_factory=query_job)
    assert window.start_query("margin", 5)
    view = window.query_view
    qtbot.waitUntil(lambda: view.model.rowCount() == 5, timeout=60000)
    qtbot.waitUntil(lambda: not window.runner.is_running(), timeout=60000)
    qtbot.waitUntil(lambda: not view._live_busy, timeout=10000)
    before = {t.image_id: t.top for t in view.model.tiles()}
    assert all(before.values())  # the head's suggestions are shown from the start
    truth = window.ws.project.truth()
    first = view.model.tiles()[0].image_id
    key = str(1 + [c.id for c in window.ws.project.classes()].index(truth[first]))
    qtbot.keyClick(view.grid, key)
    qtbot.waitUntil(lambda: any(t.top != before[t.image_id] for t in view.model.tiles()[1:]), timeout=10000)
    assert view.model.tiles()[0].top == before[first]  # a labelled tile keeps what it showed


def test_the_model_menu_learns_an_encoder_as_a_job(qtbot, open_window, tmp_path, monkeypatch):
    from atl_desktop.gui import mainwindow
    from atl_desktop.transfer.selfsup import SelfSupConfig, is_encoder_only, pretrain_project

    monkeypatch.setattr(mainwindow, "default_pretrain_job", lambda project, device=None: pretrain_project(
        project, SelfSupConfig(backbone="smallcnn", image_size=16, steps=2, batch_size=8)))
    window = open_window(_labelled_project(tmp_path))
    window.pretrain_action.trigger()
    qtbot.waitUntil(lambda: not window.runner.is_running(), timeout=60000)
    assert is_encoder_only(window.ws.project.latest_checkpoint())
    assert "Encoder learnt" in window.statusBar().currentMessage()


def test_m_shows_more_images_like_the_current_one(qtbot, open_window, tmp_path):
    window = open_window(_labelled_project(tmp_path))
    project = window.ws.project
    labelled = set(project.current_labels())
    start = next(i for i in project.image_ids() if i not in labelled)
    view = window.query_view
    view.show_chosen([start])
    qtbot.keyClick(view.grid, "m")
    qtbot.waitUntil(lambda: not window.runner.is_running() and
                    any(t.reason.startswith(f"like image {start}") for t in view.model.tiles()), timeout=60000)
    shown = [t.image_id for t in view.model.tiles()]
    assert len(shown) == 24 and start not in shown and not labelled & set(shown)
    assert window.tabs.currentWidget() is view


def test_a_round_opened_by_atl_query_is_shown_with_live_suggestions(qtbot, open_window, tmp_path):
    path = _labelled_project(tmp_path)
    with Project.open(path) as p:
        result = run_job(query_job(p, strategy="margin", batch=4))
    view = open_window(path).query_view
    assert [t.image_id for t in view.model.tiles()] == [it.image_id for it in result.items]
    assert view.round_id == result.round_id
    qtbot.waitUntil(lambda: all(t.top for t in view.model.tiles()), timeout=20000)
