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
