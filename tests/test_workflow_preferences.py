"""A reviewer's preferences live in the database, are their own, and keep only known keys of the right type."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlmodel import Session
from workflow_support import make_user

from safereview.db.engine import session_scope
from safereview.workflow import preferences
from safereview.workflow.errors import Forbidden, InvalidInput
from safereview.workflow.principals import SystemPrincipal


def test_preferences_are_stored_per_user_and_validated(engine: sa.Engine) -> None:
    amy, bob = make_user(engine, "amy"), make_user(engine, "bob")
    with session_scope(engine) as s:
        assert preferences.get(s, amy) == {}
        preferences.set_preference(s, amy, "last_collection", 7)
    with session_scope(engine) as s:
        assert preferences.set_preference(s, amy, "protect_media", False) == {
            "last_collection": 7,
            "protect_media": False,
        }
    with Session(engine) as s:  # a new session (another browser, another replica) sees the same
        assert preferences.get(s, amy) == {"last_collection": 7, "protect_media": False}
        assert preferences.get(s, bob) == {}
    with session_scope(engine) as s:
        assert preferences.set_preference(s, amy, "protect_media", None) == {"last_collection": 7}
    for key, value, message in (
        ("theme", "dark", "unknown key 'theme'"),
        ("last_collection", "7", "expected int"),
        ("last_collection", True, "expected int"),
        ("protect_media", 1, "expected bool"),
    ):
        with pytest.raises(InvalidInput, match=message), session_scope(engine) as s:
            preferences.set_preference(s, amy, key, value)
    with pytest.raises(Forbidden), session_scope(engine) as s:  # a preference is a person's, not the system's
        preferences.set_preference(s, SystemPrincipal("test"), "protect_media", False)
