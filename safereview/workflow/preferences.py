"""A reviewer's own settings, kept in the database: the last collection they worked in and
whether media start protected (blurred and greyscale) for them.

Stored per user (``UserPreference``), so a reload, another browser or another app replica
opens where the person left off. Only known keys with values of the right type are kept.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.models import UserPreference, utcnow
from safereview.workflow.errors import InvalidInput
from safereview.workflow.policies import require

# key -> accepted types (None clears a key back to the default)
KEYS: dict[str, tuple[type, ...]] = {
    "last_collection": (int,),
    "protect_media": (bool,),  # False: this reviewer sees media unblurred by default
}


def get(session: Session, user: Any) -> dict[str, Any]:
    """The user's preferences (an empty dict when none are stored)."""
    row = session.get(UserPreference, user.id)
    return dict(row.prefs) if row is not None and isinstance(row.prefs, dict) else {}


def set_preference(session: Session, user: Any, key: str, value: Any) -> dict[str, Any]:
    """Set (or with ``None`` clear) one preference of the user's own; returns them all."""
    require(user, "set_own_preferences")
    kinds = KEYS.get(key)
    if kinds is None:
        raise InvalidInput(f"preference: unknown key {key!r}; known: {', '.join(KEYS)}")
    if value is not None and (not isinstance(value, kinds) or (kinds == (int,) and isinstance(value, bool))):
        raise InvalidInput(f"preference {key}: expected {' or '.join(k.__name__ for k in kinds)}, not {value!r}")
    prefs = get(session, user)
    if value is None:
        prefs.pop(key, None)
    else:
        prefs[key] = value
    t = UserPreference.__table__  # type: ignore[attr-defined]
    now = utcnow()
    updated = session.execute(t.update().where(t.c.user_id == user.id).values(prefs=prefs, updated_at=now))
    if updated.rowcount == 0:  # type: ignore[attr-defined]
        try:
            with session.begin_nested():
                session.execute(sa.insert(t).values(user_id=user.id, prefs=prefs, updated_at=now))
        except sa.exc.IntegrityError:  # a second tab inserted first: last write wins, as for any preference
            session.execute(t.update().where(t.c.user_id == user.id).values(prefs=prefs, updated_at=now))
    return prefs
