"""Every change the window makes, as a QUndoCommand that calls the store.

A command is applied once before it is pushed, so a change the store refuses
(a taken class name, say) raises to the caller and never enters the stack;
after that, redo and undo call the same store methods again. Each store call
commits at once, so the project file is always up to date. Labels are
append-only events, so undoing a label appends an event that restores the one
before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtGui import QUndoCommand, QUndoStack

from atl_desktop.active.annotators import REPEAT, REPEAT_UNDONE
from atl_desktop.store import ClassRecord, LabelEvent, Project, ProjectError
from atl_desktop.store.keys import SKIPPED_SETTING


def _latest_event(project: Project, image_id: int) -> LabelEvent | None:
    history = project.label_history(image_id)
    return history[-1] if history else None


def _restore(project: Project, image_id: int, event: LabelEvent | None, annotator: str,
             strategy: str | None = None) -> None:
    """Make `event` (or "no label") the image's current label again; `strategy`, when
    given, marks the restoring event instead of the earlier event's own strategy."""
    if event is None or event.class_id is None:
        project.set_label(image_id, None, annotator=annotator, strategy=strategy)
        return
    project.set_label(
        image_id, event.class_id, kind=event.kind, annotator=event.annotator,
        round=event.round_id, confidence=event.confidence,
        suggestion=event.suggestion_class_id,
        suggestion_confidence=event.suggestion_confidence,
        checkpoint_id=event.checkpoint_id, strategy=strategy or event.strategy,
    )


def skipped_images(project: Project) -> set[int]:
    return set(project.get_setting(SKIPPED_SETTING, []))


class StoreCommand(QUndoCommand):
    """Base: `apply` and `revert` do the work; errors on a later redo/undo are reported."""

    def __init__(self, project: Project, text: str, report: Callable[[str], None] | None):
        super().__init__(text)
        self.project = project
        self._report = report
        self._applied_before_push = False

    def apply(self) -> None:
        raise NotImplementedError

    def revert(self) -> None:
        raise NotImplementedError

    def redo(self) -> None:
        if self._applied_before_push:
            self._applied_before_push = False
            return
        self._guard(self.apply)

    def undo(self) -> None:
        self._guard(self.revert)

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except ProjectError as error:  # e.g. the file became read-only; tell, do not crash
            if self._report is not None:
                self._report(str(error))


def push(stack: QUndoStack, command: StoreCommand) -> None:
    """Apply `command` (raising if the store refuses) and put it on the undo stack."""
    command.apply()
    command._applied_before_push = True
    stack.push(command)


# ---- labels --------------------------------------------------------------------


class SetLabel(StoreCommand):
    def __init__(self, project, image_id: int, class_id: int | None, label_kwargs: dict[str, Any],
                 text: str = "Label image", report=None):
        super().__init__(project, text, report)
        self.image_id = image_id
        self.class_id = class_id
        self.label_kwargs = dict(label_kwargs)
        self._before: LabelEvent | None = None

    def apply(self) -> None:
        self._before = _latest_event(self.project, self.image_id)
        self.project.set_label(self.image_id, self.class_id, **self.label_kwargs)

    def revert(self) -> None:
        # An undone consistency answer is marked, so it no longer counts (annotators.consistency).
        undone = REPEAT_UNDONE if self.label_kwargs.get("strategy") == REPEAT else None
        _restore(self.project, self.image_id, self._before, self.label_kwargs.get("annotator", ""), undone)


class SetSkipped(StoreCommand):
    """"Unsure": the image stays unlabelled and is shown as skipped (kept in project settings)."""

    def __init__(self, project, image_id: int, skipped: bool, report=None):
        super().__init__(project, "Skip image" if skipped else "Unskip image", report)
        self.image_id = image_id
        self.skipped = skipped

    def _set(self, skipped: bool) -> None:
        current = skipped_images(self.project)
        current = current | {self.image_id} if skipped else current - {self.image_id}
        self.project.set_setting(SKIPPED_SETTING, sorted(current))

    def apply(self) -> None:
        self._set(self.skipped)

    def revert(self) -> None:
        self._set(not self.skipped)


# ---- classes -------------------------------------------------------------------


class AddClass(StoreCommand):
    def __init__(self, project, name: str, colour: str | None = None, key: str | None = None,
                 report=None):
        super().__init__(project, f"Add class {name}", report)
        self.name, self.colour, self.key = name, colour, key
        self.class_id: int | None = None

    def apply(self) -> None:
        # A deleted class of the same name comes back with its id, so redo reuses it.
        self.class_id = self.project.add_class(self.name, self.colour, self.key)
        record = next(c for c in self.project.classes() if c.id == self.class_id)
        self.colour, self.key = record.colour, record.key

    def revert(self) -> None:
        self.project.delete_class(self.class_id)


class RenameClass(StoreCommand):
    def __init__(self, project, record: ClassRecord, new_name: str, report=None):
        super().__init__(project, f"Rename class {record.name} to {new_name}", report)
        self.class_id, self.old, self.new = record.id, record.name, new_name

    def apply(self) -> None:
        self.project.rename_class(self.class_id, self.new)

    def revert(self) -> None:
        self.project.rename_class(self.class_id, self.old)


class UpdateClass(StoreCommand):
    """Change a class's colour and/or shortcut key ("" clears the key)."""

    def __init__(self, project, record: ClassRecord, *, colour: str | None = None,
                 key: str | None = None, report=None):
        what = "colour" if key is None else "key"
        super().__init__(project, f"Change {what} of {record.name}", report)
        self.class_id = record.id
        self.new = {"colour": colour, "key": key}
        self.old = {
            "colour": record.colour if colour is not None else None,
            "key": (record.key or "") if key is not None else None,
        }

    def apply(self) -> None:
        self.project.update_class(self.class_id, **self.new)

    def revert(self) -> None:
        self.project.update_class(self.class_id, **self.old)


class _RemoveClass(StoreCommand):
    """Delete or merge: undo brings the class back and restores each image's label."""

    def __init__(self, project, record: ClassRecord, text: str, annotator: str, report=None):
        super().__init__(project, text, report)
        self.record = record
        self.annotator = annotator
        self._before: dict[int, LabelEvent | None] = {}

    def _remember(self) -> None:
        ids = self.project.images_with_label(self.record.id)
        self._before = {i: _latest_event(self.project, i) for i in ids}

    def revert(self) -> None:
        record = self.record
        with self.project.transaction():
            # Same id and position: the class order is the model's output order.
            self.project.restore_class(record)
            for image_id, event in self._before.items():
                _restore(self.project, image_id, event, self.annotator)


class DeleteClass(_RemoveClass):
    def __init__(self, project, record: ClassRecord, annotator: str, report=None):
        super().__init__(project, record, f"Delete class {record.name}", annotator, report)

    def apply(self) -> None:
        with self.project.transaction():
            self._remember()
            self.project.delete_class(self.record.id, annotator=self.annotator)


class MergeClasses(_RemoveClass):
    def __init__(self, project, source: ClassRecord, into: ClassRecord, annotator: str,
                 report=None):
        super().__init__(project, source, f"Merge {source.name} into {into.name}", annotator,
                         report)
        self.into_id = into.id

    def apply(self) -> None:
        with self.project.transaction():
            self._remember()
            self.project.merge_classes(self.record.id, self.into_id, annotator=self.annotator)


# ---- pseudo-labels ---------------------------------------------------------------


class DecidePseudo(StoreCommand):
    """Accept some pending pseudo-labels and reject others, in one step."""

    def __init__(self, project, accept: list[int], reject: list[int], annotator: str,
                 text: str, report=None):
        super().__init__(project, text, report)
        self.accept, self.reject, self.annotator = list(accept), list(reject), annotator

    def apply(self) -> None:
        with self.project.transaction():
            if self.accept:
                self.project.accept_pseudo(self.accept, annotator=self.annotator)
            if self.reject:
                self.project.reject_pseudo(self.reject, annotator=self.annotator)

    def revert(self) -> None:
        self.project.undo_pseudo_decision(self.accept + self.reject)


class RelabelPseudo(StoreCommand):
    """A wrong pseudo-label given the right class by hand: rejected, and labelled."""

    def __init__(self, project, pseudo_id: int, image_id: int, class_id: int,
                 label_kwargs: dict[str, Any], text: str, report=None):
        super().__init__(project, text, report)
        self.pseudo_id, self.image_id, self.class_id = pseudo_id, image_id, class_id
        self.label_kwargs = dict(label_kwargs)
        self._before: LabelEvent | None = None

    def apply(self) -> None:
        annotator = self.label_kwargs.get("annotator", "")
        with self.project.transaction():
            self._before = _latest_event(self.project, self.image_id)
            self.project.reject_pseudo([self.pseudo_id], annotator=annotator)
            self.project.set_label(self.image_id, self.class_id, **self.label_kwargs)

    def revert(self) -> None:
        with self.project.transaction():
            self.project.undo_pseudo_decision([self.pseudo_id])
            _restore(self.project, self.image_id, self._before,
                     self.label_kwargs.get("annotator", ""))


# ---- checkpoints -----------------------------------------------------------------


ACTIVE_CHECKPOINT = "active_checkpoint"  # read by Project.latest_checkpoint


class SetActiveCheckpoint(StoreCommand):
    """Roll back (or forward) to a checkpoint: scoring and training continue from it."""

    def __init__(self, project, checkpoint_id: int, report=None):
        super().__init__(project, f"Use checkpoint #{checkpoint_id}", report)
        self.checkpoint_id = checkpoint_id
        self._before = None

    def apply(self) -> None:
        self.project.checkpoint(self.checkpoint_id)  # raises if there is no such checkpoint
        self._before = self.project.get_setting(ACTIVE_CHECKPOINT)
        self.project.set_setting(ACTIVE_CHECKPOINT, self.checkpoint_id)

    def revert(self) -> None:
        # None (no choice before) makes the newest checkpoint the current one again.
        self.project.set_setting(ACTIVE_CHECKPOINT, self._before)


# ---- the audit sample ------------------------------------------------------------


class ReleaseAudit(StoreCommand):
    """Let the held-out audit images train the model; undo holds the same images out again."""

    def __init__(self, project, report=None):
        super().__init__(project, "Release the audit images", report)
        self.released: list[int] = []

    def apply(self) -> None:
        # The first time: every held-out image; a redo: the same ones as before.
        released = self.project.release_audit(self.released or None)
        if not released:
            raise ProjectError("No audit images are held out; nothing to release.")
        self.released = released

    def revert(self) -> None:
        self.project.unrelease_audit(self.released)
