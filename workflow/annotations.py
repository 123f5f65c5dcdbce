"""Annotations: submit, reveal/finalize, edit with optimistic concurrency, undo, history.

Every change appends an ``AnnotationEvent`` (before/after snapshots of the annotation's
mutable fields); :func:`replay_events` rebuilds the current state from the log alone.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from db.models import Annotation, AnnotationEvent, User, Verdict


def submit(session: Session, user: User, assignment_id: int, labels: dict[str, str], *,
           categories: tuple[str, ...] | list[str] = (), rationale: str = "", flagged: bool = False,
           time_spent_s: float | None = None) -> Annotation:
    """Commit labels for the user's own active lease; marks the assignment done."""
    raise NotImplementedError


def finalize(session: Session, user: User, annotation_id: int, labels: dict[str, str], *,
             action: str, expected_version: int, judge_id: str | None = None) -> Annotation:
    """After the verdict is revealed: confirm or override; keeps ``blind_labels``."""
    raise NotImplementedError


def update(session: Session, user: User, annotation_id: int, expected_version: int, **changes: Any) -> Annotation:
    """Edit labels/categories/rationale/flagged of one's own annotation; :class:`Conflict` on a stale version."""
    raise NotImplementedError


def undo_last(session: Session, user: User) -> Annotation | None:
    """Revert the user's most recent change (appends an "undo" event); None if nothing to undo."""
    raise NotImplementedError


def history(session: Session, user: User, limit: int = 50, *, offset: int = 0) -> list[Annotation]:
    """The user's own annotations, most recently changed first."""
    raise NotImplementedError


def visible_annotations(session: Session, viewer: User, item_id: int) -> list[Annotation]:
    """Annotations of an item the viewer may see: annotators only their own; leads/admins all."""
    raise NotImplementedError


def verdicts_for(session: Session, viewer: User, item_id: int, *, revealed: bool) -> list[Verdict]:
    """Judge verdicts of an item if the viewer may see them now, else an empty list."""
    raise NotImplementedError


def events_for(session: Session, viewer: User, annotation_id: int) -> list[AnnotationEvent]:
    """The event log of one annotation (own, or any for leads/admins)."""
    raise NotImplementedError


def replay_events(session: Session) -> dict[int, dict[str, Any]]:
    """Rebuild every annotation's state (annotation id → snapshot) from the event log alone."""
    raise NotImplementedError
