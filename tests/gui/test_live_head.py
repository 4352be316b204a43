"""The embedding-first loop in the window: suggestions follow every label, with no button."""

from __future__ import annotations

from atl_desktop.jobs import run_job
from atl_desktop.session import query_job
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
