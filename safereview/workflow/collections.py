"""Review settings of a collection: overlap k, blind review, uniform share of the sampling design,
the reason asked for a change after the reveal, media protection and break reminders, archived.

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
REVEAL_REASON = ("required", "optional")  # a reason for changing a blind label after the reveal
MAX_BREAK_SETTING = 10_000


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
    reveal_reason: str | None = None,
    protect_media: bool | None = None,
    break_minutes: int | None = None,
    break_unsafe_items: int | None = None,
    archived: bool | None = None,
) -> Collection:
    """Change the given settings (None leaves one as it is); the message names a bad field.

    ``actor`` is checked for ``manage_collections`` (the CLI passes its system principal);
    a lead may change the reviewer-facing defaults alone (reveal reason, media protection,
    break reminders: ``set_review_defaults``).
    """
    structural = (overlap_target, blind, audit_share, archived)
    require(actor, "manage_collections" if any(v is not None for v in structural) else "set_review_defaults")
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
    if reveal_reason is not None and reveal_reason not in REVEAL_REASON:
        raise InvalidInput(f"reveal reason: one of {', '.join(REVEAL_REASON)}, not {reveal_reason!r}")
    for field, value in (("break minutes", break_minutes), ("break after unsafe items", break_unsafe_items)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BREAK_SETTING
        ):
            raise InvalidInput(f"{field}: a whole number from 0 (no reminder) to {MAX_BREAK_SETTING}, not {value!r}")
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
        ("reveal_reason", reveal_reason),
        ("protect_media", protect_media),
        ("break_minutes", break_minutes),
        ("break_unsafe_items", break_unsafe_items),
        ("archived", archived),
    ):
        if value is not None:
            setattr(col, name, value)
    session.add(col)
    session.flush()
    return col
