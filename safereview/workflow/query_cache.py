"""Small per-process caches for the queue's collection-wide counts and id ranges.

Approximations only (how many items are eligible, a collection's id range, progress
counts): every durable fact is in the database, and a stale value here never changes who
may take which slot. Counts run on a side connection outside the caller's transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.bulk import driver_sql
from safereview.db.urls import sqlite_path

_log = logging.getLogger(__name__)


_cache_lock = threading.Lock()
_cache: dict[tuple[Any, ...], tuple[float, Any]] = {}
_computing: set[tuple[Any, ...]] = set()


def cached(key: tuple[Any, ...], ttl: float, compute: Any, *, background: bool = False) -> Any:
    """Per-process cache with stale-while-revalidate.

    When an entry expires, one thread recomputes it while the others keep using the stale
    value, so 20 reviewer threads never run the same collection-wide COUNT at once. With
    ``background=True`` even that thread returns the stale value and the recount runs in
    a daemon thread: a pull never waits for a full-collection scan except the very first
    time. ``compute`` must then use its own connection (see :func:`raw_rows`).
    """
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        if hit is not None and key in _computing:
            return hit[1]
        _computing.add(key)

    def refresh() -> Any:
        try:
            value = compute()
            with _cache_lock:
                _cache[key] = (time.monotonic(), value)
            return value
        finally:
            with _cache_lock:
                _computing.discard(key)

    def refresh_quietly() -> None:
        try:
            refresh()
        except Exception:  # a failed recount keeps the stale value; the next expiry retries
            _log.warning("background queue count %s failed", key[0], exc_info=True)

    if hit is not None and background:
        threading.Thread(target=refresh_quietly, name="safereview-queue-count", daemon=True).start()
        return hit[1]
    return refresh()


def clear_caches() -> None:
    """Forget cached counts and id ranges (tests; after bulk imports)."""
    with _cache_lock:
        _cache.clear()


def wait_idle(timeout: float = 10.0) -> bool:
    """True once no recount is running (tests drop their database only after this)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _cache_lock:
            if not _computing:
                return True
        time.sleep(0.02)
    return False


def bind_key(session: Session) -> str:
    bind = session.get_bind()
    return str(bind.url) if hasattr(bind, "url") else str(id(bind))


def side_runner(session: Session) -> tuple[Any, bool]:
    """``(run(sql, params) -> rows, may_run_in_background)`` for collection-wide counts.

    A side connection (:func:`raw_rows`) everywhere except in-memory SQLite, where
    another connection would see another, empty database.
    """
    engine = session.get_bind()
    assert isinstance(engine, sa.Engine)
    if engine.dialect.name == "sqlite" and sqlite_path(str(engine.url)) is None:
        return (lambda q, p: [tuple(r) for r in session.execute(sa.text(q), p).all()]), False
    return (lambda q, p: raw_rows(engine, q, p)), True


def raw_rows(engine: sa.Engine, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Run a read-only query on a DB-API connection of its own, outside any transaction.

    Used for collection-wide counts: on SQLite every SQLAlchemy transaction starts with
    ``BEGIN IMMEDIATE`` (the write lock), while an autocommit read under WAL blocks no
    writer; on PostgreSQL it keeps the scan out of the caller's short transaction.
    """
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(driver_sql(engine, sql), params)
        rows = [tuple(r) for r in cur.fetchall()]
        cur.close()
        if engine.dialect.name == "postgresql":
            raw.rollback()
        return rows
    finally:
        raw.close()
