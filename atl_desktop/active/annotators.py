"""Several annotators: who labelled what, how far two annotators agree on the images both
labelled, and how consistent each one is with themself on images shown again.

Everything is read from the append-only label history. An annotator is named as the
pool browser names them ("human:alice", "import:labels.csv"); their label of an image
is the newest event they gave it (a cleared label counts as none). Agreement between
two annotators is Cohen's kappa, (p_o - p_e) / (1 - p_e), with p_e from the two
annotators' own class frequencies (Cohen 1960), and the confusion between their labels.

Consistency uses a *repeat set*: already-labelled images shown to the same annotator
again, without their earlier answer. A label given that way carries the strategy
REPEAT, and is compared with the same annotator's label of the image just before it.
The newer answer becomes the image's label, as any relabelling does; undoing it
appends an event marked REPEAT_UNDONE, and the answer stops counting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from atl_desktop.store import LabelEvent, Project

REPEAT = "repeat"  # LabelEvent.strategy of a label given in a consistency check
REPEAT_UNDONE = "repeat-undone"  # the event that undid such a label: the answer no longer counts


def who(event: LabelEvent) -> str:
    """The annotator's name as the pool browser's filter shows it."""
    return f"{event.kind}:{event.annotator}" if event.annotator else event.kind


def kappa_from_confusion(confusion: np.ndarray) -> float:
    """Cohen's kappa of a square table of counts (rows: one rater, columns: the other).
    With every item in one and the same class (p_e = 1) the raters agree fully: 1."""
    confusion = np.asarray(confusion, dtype=np.float64)
    n = confusion.sum()
    if n == 0:
        return float("nan")
    observed = np.trace(confusion) / n
    chance = float(confusion.sum(axis=1) @ confusion.sum(axis=0)) / n**2
    return 1.0 if chance >= 1.0 else float((observed - chance) / (1.0 - chance))


@dataclass(frozen=True)
class Agreement:
    """Two annotators on the images both labelled; confusion rows are `first`'s labels."""

    first: str
    second: str
    image_ids: tuple[int, ...]
    class_ids: tuple[int, ...]  # the classes of the confusion's rows and columns, in order
    confusion: tuple[tuple[int, ...], ...]
    disagreements: tuple[int, ...]  # image ids labelled differently

    @property
    def n(self) -> int:
        return len(self.image_ids)

    @property
    def observed(self) -> float:
        return 1.0 - len(self.disagreements) / self.n if self.n else float("nan")

    @property
    def kappa(self) -> float:
        return kappa_from_confusion(np.asarray(self.confusion))


@dataclass(frozen=True)
class Consistency:
    """One annotator's repeat answers against their own earlier ones."""

    annotator: str
    n: int
    same: int
    changed: tuple[int, ...]  # image ids answered differently the second time

    @property
    def share(self) -> float:
        return self.same / self.n if self.n else float("nan")


@dataclass(frozen=True)
class AnnotatorSummary:
    labelled: dict[str, int]  # annotator -> images whose current label they gave
    given: dict[str, int]  # annotator -> images they labelled at all (their newest answer)
    agreements: list[Agreement]  # every pair with images in common, most shared first
    consistency: dict[str, Consistency]

    def agreement(self, first: str, second: str) -> Agreement | None:
        for pair in self.agreements:
            if (pair.first, pair.second) == (first, second):
                return pair
            if (pair.first, pair.second) == (second, first):
                return _swapped(pair)
        return None


def labels_by_annotator(events: Iterable[LabelEvent]) -> dict[str, dict[int, int]]:
    """annotator -> {image id: their newest label}, images they cleared left out."""
    newest: dict[str, dict[int, int | None]] = {}
    for event in sorted(events, key=lambda e: e.id):
        newest.setdefault(who(event), {})[event.image_id] = event.class_id
    return {name: {i: c for i, c in labels.items() if c is not None} for name, labels in newest.items()}


def agreement(labels: dict[str, dict[int, int]], first: str, second: str,
              class_order: Sequence[int] = ()) -> Agreement:
    """Agreement of two annotators over the images both labelled."""
    a, b = labels.get(first, {}), labels.get(second, {})
    shared = sorted(set(a) & set(b))
    used = {a[i] for i in shared} | {b[i] for i in shared}
    order = [c for c in class_order if c in used] + sorted(used - set(class_order))
    position = {c: k for k, c in enumerate(order)}
    confusion = np.zeros((len(order), len(order)), dtype=np.int64)
    for image_id in shared:
        confusion[position[a[image_id]], position[b[image_id]]] += 1
    return Agreement(first, second, tuple(shared), tuple(order),
                     tuple(tuple(int(v) for v in row) for row in confusion),
                     tuple(i for i in shared if a[i] != b[i]))


def consistency(events: Iterable[LabelEvent]) -> dict[str, Consistency]:
    """Each annotator's repeat answers compared with their label just before."""
    previous: dict[tuple[str, int], int | None] = {}
    answers: dict[tuple[str, int], list[bool]] = {}  # (annotator, image) -> same answer, per repeat
    for event in sorted(events, key=lambda e: e.id):
        key = (who(event), event.image_id)
        earlier = previous.get(key)
        if event.strategy == REPEAT and event.class_id is not None and earlier is not None:
            answers.setdefault(key, []).append(earlier == event.class_id)
        elif event.strategy == REPEAT_UNDONE and answers.get(key):
            answers[key].pop()
        previous[key] = event.class_id
    by_annotator: dict[str, list[tuple[int, bool]]] = {}
    for (name, image_id), same in answers.items():
        by_annotator.setdefault(name, []).extend((image_id, s) for s in same)
    return {name: Consistency(name, len(pairs), sum(s for _, s in pairs),
                              tuple(i for i, s in pairs if not s))
            for name, pairs in sorted(by_annotator.items()) if pairs}


def summarise(project: Project) -> AnnotatorSummary:
    """Who labelled what, every pair's agreement and every annotator's consistency."""
    events = project.label_history()
    labels = labels_by_annotator(events)
    current: dict[int, LabelEvent] = {}
    for event in events:
        current[event.image_id] = event
    labelled: dict[str, int] = {}
    for event in current.values():
        if event.class_id is not None:
            labelled[who(event)] = labelled.get(who(event), 0) + 1
    order = [c.id for c in project.classes()]
    names = sorted(labels)
    pairs = [agreement(labels, a, b, order) for k, a in enumerate(names) for b in names[k + 1:]]
    pairs = sorted((p for p in pairs if p.n), key=lambda p: -p.n)
    return AnnotatorSummary(labelled, {name: len(v) for name, v in labels.items() if v}, pairs,
                            consistency(events))


def repeat_candidates(project: Project, annotator: str, n: int, rng: np.random.Generator) -> list[int]:
    """Up to n images whose current label `annotator` gave (a human), drawn at random,
    preferring images not shown again before."""
    name = f"human:{annotator}" if annotator else "human"
    events = project.label_history()
    current: dict[int, LabelEvent] = {}
    repeated: set[int] = set()
    for event in events:
        current[event.image_id] = event
        if event.strategy == REPEAT:
            repeated.add(event.image_id)
    mine = np.asarray(sorted(i for i, e in current.items() if e.class_id is not None and who(e) == name),
                      dtype=np.int64)
    fresh, seen = mine[~np.isin(mine, list(repeated))], mine[np.isin(mine, list(repeated))]
    chosen = list(rng.permutation(fresh)[:n]) + list(rng.permutation(seen)[:max(0, n - len(fresh))])
    return [int(i) for i in chosen]


def _swapped(pair: Agreement) -> Agreement:
    return Agreement(pair.second, pair.first, pair.image_ids, pair.class_ids,
                     tuple(zip(*pair.confusion, strict=True)) if pair.confusion else (), pair.disagreements)
