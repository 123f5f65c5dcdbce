"""The review queue: leases on overlap slots, borderline-first with a random audit stratum.

See ``docs/workflow.md`` for the sampling design and exactly what ``sampling_prob`` records.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from db.models import Assignment, User


@dataclass(frozen=True)
class QueueFilter:
    """Which items a reviewer wants: one collection, optionally narrowed (empty = all)."""

    collection_id: int
    task_types: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class Progress:
    """Counts for one collection; ``slots_total`` = n_items × overlap_target."""

    collection_id: int
    n_items: int
    overlap_target: int
    slots_total: int
    mine_done: int
    mine_skipped: int
    everyone_done: int
    slots_leased: int
    items_fully_covered: int
    extra: dict = field(default_factory=dict)


def next_item(session_or_engine: Session | sa.Engine, user: User, flt: QueueFilter, *,
              now: datetime | None = None, rng: random.Random | None = None,
              lease_minutes: float | None = None) -> Assignment | None:
    """The user's current lease, or a newly claimed slot, or None when nothing is left.

    With an Engine the function runs (and retries) its own transaction; with a Session the
    caller commits.
    """
    raise NotImplementedError


def release(session: Session, user: User, assignment_id: int) -> Assignment:
    """Give a leased slot back (status "released"); the item may be offered to the user again."""
    raise NotImplementedError


def skip(session: Session, user: User, assignment_id: int) -> Assignment:
    """Give a leased slot back and never offer the item to this user again (status "skipped")."""
    raise NotImplementedError


def progress(session: Session, user: User, collection_id: int, *, max_age_s: float = 5.0) -> Progress:
    """Progress counts; collection-wide counts may be up to ``max_age_s`` old (per-process cache)."""
    raise NotImplementedError


def reclaim_expired(session: Session, *, now: datetime | None = None) -> int:
    """Release every expired lease and return its slot; returns how many were reclaimed."""
    raise NotImplementedError
