"""Which failed write transactions are run again (``workflow.tx.is_transient``), on real errors of both back ends.

A lock conflict or the duplicate lease of a second browser tab may succeed on a second try;
any other constraint or database error would only fail again, so it must surface at once
instead of after five retries.
"""

from __future__ import annotations

import random
import sqlite3

import pytest
import sqlalchemy as sa
from workflow_support import make_collection, make_user

from safereview.db.engine import session_scope
from safereview.db.models import utcnow
from safereview.workflow.tx import is_transient, retry_transient


def _error_of(engine: sa.Engine, sql: str, params: dict | None = None) -> sa.exc.DBAPIError:
    with pytest.raises(sa.exc.DBAPIError) as caught, engine.begin() as conn:
        conn.execute(sa.text(sql), params or {})
    return caught.value


def _item_and_user(engine: sa.Engine) -> tuple[int, int]:
    cid = make_collection(engine, n_items=2)
    user = make_user(engine, "ann")
    with session_scope(engine) as s:
        item = s.execute(sa.text("SELECT MIN(id) FROM item WHERE collection_id = :c"), {"c": cid}).scalar_one()
    return int(item), int(user.id)  # type: ignore[arg-type]


LEASE = (
    "INSERT INTO assignment (item_id, user_id, status, stratum, leased_at) "
    "VALUES (:item, :user, 'leased', 'sample', :now)"
)


def test_a_duplicate_lease_is_transient_and_other_constraints_are_not(engine: sa.Engine) -> None:
    item, user = _item_and_user(engine)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.text(LEASE), {"item": item, "user": user, "now": now})
    duplicate_lease = _error_of(engine, LEASE, {"item": item, "user": user, "now": now})
    assert isinstance(duplicate_lease, sa.exc.IntegrityError)
    assert is_transient(duplicate_lease)

    no_such_item = _error_of(engine, LEASE, {"item": 10**9, "user": user, "now": now})  # foreign key
    missing_status = _error_of(
        engine,
        "INSERT INTO assignment (item_id, user_id, status, stratum, leased_at) VALUES (:i, :u, NULL, 'sample', :n)",
        {"i": item + 1, "u": user, "n": now},
    )
    duplicate_name = _error_of(engine, 'INSERT INTO "user" (username, role) SELECT username, role FROM "user"')
    for exc in (no_such_item, missing_status, duplicate_name):
        assert isinstance(exc, sa.exc.IntegrityError), exc
        assert not is_transient(exc), exc


def test_sqlite_lock_is_transient_and_a_missing_table_is_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "locks.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    impatient = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        holder.execute("BEGIN IMMEDIATE")
        locked = _error_of(impatient, "INSERT INTO t VALUES (1)")
        holder.execute("ROLLBACK")
        assert isinstance(locked, sa.exc.OperationalError) and "locked" in str(locked)
        assert is_transient(locked)
        missing = _error_of(impatient, "INSERT INTO nowhere VALUES (1)")
        assert isinstance(missing, sa.exc.OperationalError)
        assert not is_transient(missing)
    finally:
        impatient.dispose()
        holder.close()


@pytest.mark.postgres
def test_postgres_conflicts_are_transient_and_a_timeout_is_not(pg_url: str) -> None:
    eng = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with eng.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1, 0)"))
        first = eng.connect()
        try:
            first.execute(sa.text("SELECT x FROM t WHERE id = 1 FOR UPDATE"))
            busy = _error_of(eng, "SELECT x FROM t WHERE id = 1 FOR UPDATE NOWAIT")
            assert getattr(busy.orig, "sqlstate", None) == "55P03"
            assert is_transient(busy)
            first.rollback()

            # a serialisation failure: a REPEATABLE READ transaction updates a row changed since its snapshot
            second = eng.connect().execution_options(isolation_level="REPEATABLE READ")
            second.begin()
            second.execute(sa.text("SELECT x FROM t"))
            with first.begin():
                first.execute(sa.text("UPDATE t SET x = 1 WHERE id = 1"))
            with pytest.raises(sa.exc.DBAPIError) as caught:
                second.execute(sa.text("UPDATE t SET x = 2 WHERE id = 1"))
            second.rollback()
            second.close()
            assert getattr(caught.value.orig, "sqlstate", None) == "40001"
            assert is_transient(caught.value)
        finally:
            first.close()
        timeout = _error_of(eng, "SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)")
        assert isinstance(timeout, sa.exc.OperationalError) and timeout.orig.sqlstate == "57014"  # type: ignore[union-attr]
        assert not is_transient(timeout)
    finally:
        eng.dispose()


def test_retry_runs_a_transient_failure_again_and_raises_any_other_at_once(engine: sa.Engine) -> None:
    item, user = _item_and_user(engine)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.text(LEASE), {"item": item, "user": user, "now": now})
    calls: list[str] = []

    def lease_then_succeed() -> str:
        calls.append("try")
        if len(calls) < 3:  # the duplicate lease of a second tab, twice
            with engine.begin() as conn:
                conn.execute(sa.text(LEASE), {"item": item, "user": user, "now": now})
        return "done"

    assert retry_transient(lease_then_succeed, random.Random(0)) == "done"
    assert len(calls) == 3

    calls.clear()

    def foreign_key_failure() -> str:
        calls.append("try")
        with engine.begin() as conn:
            conn.execute(sa.text(LEASE), {"item": 10**9, "user": user, "now": now})
        return "never"

    with pytest.raises(sa.exc.IntegrityError):
        retry_transient(foreign_key_failure, random.Random(0))
    assert calls == ["try"]

    calls.clear()

    def always_transient() -> str:
        calls.append("try")
        with engine.begin() as conn:
            conn.execute(sa.text(LEASE), {"item": item, "user": user, "now": now})
        return "never"

    with pytest.raises(sa.exc.IntegrityError):
        retry_transient(always_transient, random.Random(0), attempts=4)
    assert len(calls) == 4
