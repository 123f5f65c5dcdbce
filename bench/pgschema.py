"""A PostgreSQL schema of its own for one benchmark run, dropped afterwards.

Every benchmark that runs on PostgreSQL works in a brand-new schema of the server named by
``SAFEREVIEW_BENCH_PG`` (else ``SAFEREVIEW_TEST_PG``), so runs never see each other's rows
and nothing is left behind. (The tests' ``fresh_pg_schema`` fixture does the same for the
suite; benchmarks do not import test fixtures.)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def server_url() -> str:
    """The PostgreSQL server to benchmark on, or "" when none is named."""
    return os.environ.get("SAFEREVIEW_BENCH_PG") or os.environ.get("SAFEREVIEW_TEST_PG", "")


def schema_url(base: str, schema: str) -> str:
    """``base`` with every connection's search_path set to ``schema``."""
    from safereview.db.engine import normalise_url

    url = normalise_url(base)
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


class Unreachable(RuntimeError):
    """The server could not be reached to make the schema (the run is skipped, not failed)."""


@contextmanager
def scratch_schema(base: str, prefix: str = "bench") -> Iterator[str]:
    """A URL whose search_path is a new, empty schema, dropped (with everything in it) on exit.

    Raises :class:`Unreachable` when the schema cannot be made; errors inside the block
    pass through unchanged.
    """
    import sqlalchemy as sa

    from safereview.db.engine import normalise_url

    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(normalise_url(base), isolation_level="AUTOCOMMIT")
    try:
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        except sa.exc.OperationalError as exc:
            raise Unreachable(f"PostgreSQL at {base} unreachable: {exc.orig}") from None
        try:
            yield schema_url(base, schema)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        admin.dispose()


def settle(engine) -> str:  # type: ignore[no-untyped-def]
    """After an untimed bulk load: write the load's pages out and vacuum, so that neither lands in a measurement.

    A million-row load leaves PostgreSQL a checkpoint spread over the next minutes (its
    fsyncs stall commits) and tables that autovacuum will soon visit for the inserted rows;
    SQLite a write-ahead log to fold back. A team's server during a shift is in neither
    state. Returns what was done (printed by the benchmark), or why it could not be.
    """
    import sqlalchemy as sa

    if engine.dialect.name == "postgresql":
        done = []
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            tables = conn.exec_driver_sql(
                "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema()"
            ).scalars()
            conn.exec_driver_sql(f"VACUUM (ANALYZE) {', '.join(tables)}")  # this run's schema only
            done.append("VACUUM (ANALYZE)")
            try:
                conn.exec_driver_sql("CHECKPOINT")
                done.append("CHECKPOINT")
            except sa.exc.DBAPIError as exc:  # needs superuser or pg_checkpoint
                done.append(f"no CHECKPOINT ({str(exc.orig).strip().splitlines()[0]})")
        return ", ".join(done)
    import sqlite3

    engine.dispose()  # the engine's connections would each hold a read transaction open
    conn = sqlite3.connect(engine.url.database, isolation_level=None)
    try:
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    return "PRAGMA wal_checkpoint(TRUNCATE)" + (" (busy: partly done)" if busy else "")
