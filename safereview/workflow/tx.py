"""Write transactions that queue politely on SQLite.

SQLite has one writer at a time. When several threads of one process (Streamlit sessions,
bench threads) collide, SQLite's busy handler makes the losers sleep 1, 2, 5, 10, 15, 20,
25, 50, 100 ms between retries, which turns a 2 ms transaction into a 100 ms tail.
:func:`write_scope` makes threads of the same process wait on a lock instead, so the next
one starts the moment the previous commits. Other processes still coordinate through
SQLite's own lock; PostgreSQL needs none of this and gets a plain ``session_scope``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.engine import is_sqlite, session_scope

_locks_guard = threading.Lock()
_locks: dict[int, threading.Lock] = {}


def _lock_for(engine: sa.Engine) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(id(engine))
        if lock is None:
            lock = _locks[id(engine)] = threading.Lock()
        return lock


@contextmanager
def write_scope(engine: sa.Engine) -> Iterator[Session]:
    """Like ``db.engine.session_scope`` (commit on success, roll back on error), serialised
    per engine within this process when the database is SQLite."""
    if not is_sqlite(engine):
        with session_scope(engine) as session:
            yield session
        return
    with _lock_for(engine), session_scope(engine) as session:
        yield session
