"""Review settings of a collection: overlap k, blind review, uniform share of the sampling design, archived.

One function for the Collections page and ``safereview collections set``, so both validate
the same way and a lead's change lands the same whichever door it came through. Raising k
needs no other write: the queue compares ``slots_taken`` with the collection's current
target, so fully covered items reopen by themselves; lowering it leaves existing labels be.
"""

from __future__ import annotations

import math
from typing import Any

from sqlmodel import Session, select

from safereview.db.models import Collection
from safereview.workflow.errors import InvalidInput, NotFound
from safereview.workflow.policies import require

MAX_OVERLAP = 50


def get_collection(session: Session, collection: int | str) -> Collection:
    """A collection by id or by exact name (the one getter: CLI, judge, import and pages)."""
    if isinstance(collection, int) and not isinstance(collection, bool):
        col = session.get(Collection, collection)
    else:
        col = session.exec(select(Collection).where(Collection.name == collection)).first()
    if col is None:
        raise NotFound(f"no collection named {collection!r}")
    return col


def update_settings(
    session: Session,
    collection: int | str,
    *,
    actor: Any = None,
    overlap_target: int | None = None,
    blind: bool | None = None,
    audit_share: float | None = None,
    archived: bool | None = None,
) -> Collection:
    """Change the given settings (None leaves one as it is); the message names a bad field.

    ``actor`` is checked for ``manage_collections`` (the CLI passes its system principal).
    """
    require(actor, "manage_collections")
    if overlap_target is not None and (
        isinstance(overlap_target, bool)
        or not isinstance(overlap_target, int)
        or not 1 <= overlap_target <= MAX_OVERLAP
    ):
        raise InvalidInput(f"overlap: a whole number of annotators from 1 to {MAX_OVERLAP}, not {overlap_target!r}")
    if audit_share is not None:
        try:
            share = float(audit_share)
        except (TypeError, ValueError):
            raise InvalidInput(f"uniform share: a number from 0 to 1, not {audit_share!r}") from None
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise InvalidInput(f"uniform share: a number from 0 to 1, not {audit_share!r}")
        audit_share = share
    col = get_collection(session, collection)
    if audit_share is not None and col.design_frozen_at is not None and abs(audit_share - col.audit_share) > 1e-12:
        raise InvalidInput(
            f"uniform share: the sampling design froze at the first review ({col.design_frozen_at:%Y-%m-%d %H:%M} "
            "UTC) and cannot change: every estimate relies on the inclusion probabilities it fixed"
        )
    for name, value in (
        ("overlap_target", overlap_target),
        ("blind", blind),
        ("audit_share", audit_share),
        ("archived", archived),
    ):
        if value is not None:
            setattr(col, name, value)
    session.add(col)
    session.flush()
    return col
