"""Read-only transactions: on SQLite they take no write lock and refuse writes; PostgreSQL is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from safereview.db.engine import init_db, read_only


def test_sqlite_reader_does_not_wait_for_a_writer_and_cannot_write(tmp_path: Path) -> None:
    from safereview.agreement import data

    engine = init_db(f"sqlite:///{tmp_path / 'ro.db'}")
    writer = engine.connect()
    writer.begin()  # BEGIN IMMEDIATE: holds the write lock until it ends
    writer.exec_driver_sql(
        "INSERT INTO taxonomy (name, version, spec, created_at) VALUES ('t', '1', '{}', '2026-01-01')"
    )
    try:
        # a writing transaction would wait here for busy_timeout (30 s) and then fail
        with read_only(engine).connect() as reader:
            assert reader.exec_driver_sql("SELECT COUNT(*) FROM taxonomy").scalar() == 0  # not the uncommitted row
            with pytest.raises(sa.exc.OperationalError, match="readonly"):
                reader.exec_driver_sql("DELETE FROM taxonomy")
        with data.connection(engine) as conn:  # the statistics' reads go the same way
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM taxonomy").scalar() == 0
    finally:
        writer.commit()
        writer.close()
    with engine.begin() as conn:  # an ordinary transaction on a pooled connection may write again
        assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 0
        conn.exec_driver_sql("DELETE FROM taxonomy WHERE name = 't'")
    engine.dispose()


def test_read_only_is_the_engine_itself_on_postgresql(db_url: str) -> None:
    engine = init_db(db_url)
    ro = read_only(engine)
    assert (ro is engine) == (engine.dialect.name == "postgresql")
    with ro.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM item").scalar() == 0
    engine.dispose()
