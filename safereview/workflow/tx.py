"""Write transactions that queue politely on SQLite.

SQLite has one writer at a time. When several threads of one process (Streamlit sessions,
bench threads) collide, SQLite's busy handler makes the losers sleep 1, 2, 5, 10, 15, 20,
25, 50, 100 ms between retries, which turns a 2 ms transaction into a 100 ms tail.
:func:`write_scope` makes threads of the same process wait on a lock instead, so the next
one starts the moment the previous commits. Other processes still coordinate through
SQLite's own lock; PostgreSQL needs none of this and gets a plain ``session_scope``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.engine import is_sqlite, session_scope

T = TypeVar("T")

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


# PostgreSQL: serialization failure, deadlock, lock not available; class 08 is a lost connection
_PG_TRANSIENT_STATES = {"40001", "40P01", "55P03"}
# a second browser tab of the same reviewer inserted the same lease first
_LEASE_CONSTRAINT = "uq_assignment_item_user"
_SQLITE_LEASE_COLUMNS = "assignment.item_id, assignment.user_id"


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write transaction may succeed when run again from the start.

    True for lock and serialisation conflicts, a connection lost mid-transaction, and the
    duplicate lease a second tab races in (the retry then finds that lease). False for every
    other constraint or database error, which a retry would only repeat: it surfaces at once.
    """
    if not isinstance(exc, (sa.exc.OperationalError, sa.exc.IntegrityError)):
        return False
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None)
    message = str(orig if orig is not None else exc)
    if isinstance(exc, sa.exc.IntegrityError):
        constraint = getattr(getattr(orig, "diag", None), "constraint_name", None)
        return constraint == _LEASE_CONSTRAINT or f"UNIQUE constraint failed: {_SQLITE_LEASE_COLUMNS}" in message
    if connection_lost(exc):
        return True
    if state is not None:  # PostgreSQL (psycopg)
        return state in _PG_TRANSIENT_STATES
    return "locked" in message or "busy" in message  # SQLite


def connection_lost(exc: BaseException) -> bool:
    """Whether a write failed because the connection went away (PostgreSQL SQLSTATE class 08,
    or no answer at all). Unlike a lock conflict this is ambiguous when it happens at COMMIT:
    the server may have committed before the client heard, so a retry must first look for
    its own write (``workflow.annotations`` does)."""
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None)
    if state is not None:
        return state.startswith("08")
    if exc.connection_invalidated:
        return True
    return "sqlite" not in type(orig).__module__  # psycopg without a SQLSTATE: no answer from the server


def retry_transient(run: Callable[[], T], rng: random.Random, attempts: int = 5) -> T:
    """``run()`` (one whole transaction) again after a short, jittered pause while it fails
    transiently (:func:`is_transient`); any other error is raised at once."""
    for attempt in range(attempts):
        try:
            return run()
        except (sa.exc.OperationalError, sa.exc.IntegrityError) as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            time.sleep(0.005 * (attempt + 1) * (1 + rng.random()))
    raise AssertionError("unreachable")


def write_with_retry(
    engine: sa.Engine,
    write: Callable[[Session], T],
    stored: Callable[[Session], T | None],
    *,
    rng: random.Random | None = None,
) -> T:
    """``write(session)`` as one write transaction (:func:`write_scope`), run again while it
    fails transiently (:func:`retry_transient`).

    A connection lost at COMMIT leaves the outcome unknown: the server may have committed.
    After one, each retry first asks ``stored(session)`` for the very write it was making and
    returns that when it is there, instead of writing again or reporting the conflict its own
    unheard commit caused.
    """
    rng = rng or random.Random()
    maybe_committed = False

    def attempt() -> T:
        nonlocal maybe_committed
        try:
            with write_scope(engine) as session:
                found = stored(session) if maybe_committed else None
                return found if found is not None else write(session)
        except sa.exc.OperationalError as exc:
            maybe_committed = maybe_committed or connection_lost(exc)
            raise

    return retry_transient(attempt, rng)
