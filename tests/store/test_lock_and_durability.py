"""One writer per project, and no returned label lost to SIGKILL."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from atl_desktop.store import Project, ProjectLockedError

HOLDER = textwrap.dedent(
    """
    import sys, time
    from atl_desktop.store import Project
    p = Project.open(sys.argv[1])
    print("ready", flush=True)
    time.sleep(60)
    """
)

LABELLER = textwrap.dedent(
    """
    import sys
    from atl_desktop.store import Project
    p = Project.open(sys.argv[1])
    ids = p.image_ids()
    classes = [c.id for c in p.classes()]
    print("ready", flush=True)
    n = 0
    while True:
        image = ids[n % len(ids)]
        label = classes[n % len(classes)]
        event = p.set_label(image, label, annotator="loop")
        # Printed only after set_label returned: the label must be durable now.
        print(event, image, label, flush=True)
        n += 1
    """
)


def _start(script: str, project_path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(project_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def _make_project(path, n_images=20):
    with Project.create(path) as p:
        for name in ("a", "b", "c"):
            p.add_class(name)
        with p.transaction():
            for i in range(n_images):
                p.add_image(sha256=f"{i:064x}", location=f"{i}.png")
    return path


def test_second_writer_is_told_who_holds_the_project(tmp_path):
    path = _make_project(tmp_path / "p.atl")
    holder = _start(HOLDER, path)
    try:
        with pytest.raises(ProjectLockedError, match=f"process {holder.pid}"):
            Project.open(path)
        with Project.open(path, readonly=True) as reader:  # readers are never locked out
            assert len(reader.image_ids()) == 20
    finally:
        holder.kill()
        holder.communicate()  # also closes the pipes
    # The killed holder's lock is stale: the OS released it, and it is taken over.
    with Project.open(path) as p:
        assert p.integrity_ok()


def test_labels_survive_sigkill_at_random_moments(tmp_path):
    path = _make_project(tmp_path / "p.atl")
    rng = random.Random(1234)
    returned: dict[int, tuple[int, int]] = {}
    for _ in range(20):
        proc = _start(LABELLER, path)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3:  # a line cut by the kill is incomplete: its label may be lost
                event, image, label = map(int, parts)
                returned[event] = (image, label)
        with Project.open(path) as p:
            assert p.integrity_ok()
            stored = {e.id: (e.image_id, e.class_id) for e in p.label_history()}
        missing = {e: v for e, v in returned.items() if stored.get(e) != v}
        assert not missing, f"labels lost after SIGKILL: {missing}"
    assert len(returned) > 20  # the loop really labelled between kills
