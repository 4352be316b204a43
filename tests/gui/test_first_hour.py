"""What a new user meets in the window: one open round at a time (the engine's rule), the
Batch box showing the open round, class names that stay readable, and the way out of the demo."""

from __future__ import annotations

from PySide6.QtGui import QFont, QFontMetrics

from atl_desktop.gui import messages
from atl_desktop.gui.tiles import fit_one_line, wrap_list
from atl_desktop.loop.rounds import DISCARDED, open_round
from atl_desktop.store import Project
from tests.gui.test_labelling import query


def test_a_query_while_a_round_is_open_asks_to_discard_it(qtbot, open_window, project_path, monkeypatch):
    window = open_window(project_path)
    view = query(qtbot, window, batch=3)
    first = view.round_id
    asked: list[str] = []
    answer = {"yes": False}

    def ask(parent, title, text, yes, no="Cancel"):
        asked.append(text)
        return answer["yes"]

    monkeypatch.setattr(messages, "ask", ask)
    assert not window.start_query("entropy", 3)  # kept labelling: nothing started
    assert f"Round {first} is still open" in asked[-1]
    assert open_round(window.ws.project).id == first
    answer["yes"] = True
    assert window.start_query("entropy", 3)
    qtbot.waitUntil(lambda: view.round_id not in (None, first), timeout=5000)
    qtbot.waitUntil(lambda: not window.runner.is_running(), timeout=5000)
    rounds = window.ws.project.rounds()
    assert rounds[0].metrics.get(DISCARDED) and rounds[0].finished is not None
    assert open_round(window.ws.project).id == view.round_id == rounds[-1].id


def test_the_batch_and_strategy_boxes_show_the_open_round(qtbot, open_window, project_path):
    with Project.open(project_path) as p:
        ids = p.image_ids()[:5]
        round_id = p.start_round("margin", {"batch": 5, "chosen": ids})
        p.set_setting("last_query", [{"image_id": i, "score": 0.5, "reason": "r", "top": []} for i in ids])
        p.set_setting("last_query_round", round_id)
    window = open_window(project_path)
    view = window.query_view
    assert view.batch_box.value() == 5
    assert view.round_id == round_id
    assert view.strategy_box.currentText() == "margin"
    view.set_strategies({"typiclust": "", "margin": "", "entropy": ""})  # the registry, read later
    assert view.strategy_box.currentText() == "margin"


def test_long_class_names_keep_both_ends_and_short_ones_stay_whole(qapp):
    metrics = QFontMetrics(QFont())
    text = "14% mucus, 12% cancer_associated_stroma"
    width = metrics.horizontalAdvance("14% mucus, 12% cancer_assoc")
    line = fit_one_line(metrics, text, width)
    assert metrics.horizontalAdvance(line) <= width
    first, second = line.split(", ")
    assert first == "14% mucus"  # fits: never cut
    assert second.startswith("12% can") and second.endswith("ma") and "…" in second
    assert fit_one_line(metrics, "21% adipose", 500) == "21% adipose"
    # Two lines to spare: each runner-up whole on its own line; one line: cut as above.
    assert wrap_list(metrics, text, width, 1) == [line]
    wide = metrics.horizontalAdvance("12% cancer_associated_stroma") + 4
    assert wrap_list(metrics, text, wide, 2) == ["14% mucus", "12% cancer_associated_stroma"]


def test_the_demo_says_how_to_start_your_own_project(open_window, project_path, tmp_path, monkeypatch):
    from atl_desktop.demo import install_demo

    monkeypatch.setenv("ATL_DESKTOP_DATA", str(tmp_path / "data"))
    own = open_window(project_path)
    assert not own.panel.demo_note.isVisible()
    demo = open_window(install_demo("digits"))
    assert demo.panel.demo_note.isVisible() and "New project" in demo.panel.demo_note.text()
    asked = []
    monkeypatch.setattr(type(demo), "ask_new_project", lambda self: asked.append(self))
    demo.panel.demo_note.linkActivated.emit("new")
    assert asked == [demo]
