"""SQL plumbing shared by every module that writes many rows or talks to the DB-API driver.

The choice between the two back ends (SQLite, PostgreSQL through psycopg 3) is made here
and nowhere else:

- :func:`insert_for` gives the dialect's ``insert`` construct (the one with
  ``on_conflict_do_nothing`` / ``on_conflict_do_update``).
- :func:`bulk_insert` sends rows straight through the driver: one streamed ``executemany``
  on SQLite, ``COPY … FROM STDIN`` on PostgreSQL. No per-row SQLAlchemy parameter handling
  (which dominated bulk-import time), and no ORM objects.
- :func:`sqlite_cache` raises SQLite's page cache on one connection for a bulk write.
- :func:`driver_sql` turns SQL written with ``:name`` placeholders into the form the
  DB-API driver takes (psycopg wants ``%(name)s``; sqlite3 reads ``:name`` itself).

This module imports nothing from the workflow, agreement, import or judge code.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine

__all__ = ["bulk_insert", "dialect_of", "driver_sql", "insert_for", "is_postgres", "sqlite_cache"]

COPY_CSV_BLOCK = 8 << 20  # bytes per write of a pre-rendered CSV COPY


def dialect_of(bind: Any) -> Dialect:
    """The dialect of an Engine, a Connection or a Session."""
    if isinstance(bind, Engine | Connection):
        return bind.dialect
    get_bind = getattr(bind, "get_bind", None)
    if get_bind is not None:  # Session (SQLModel or SQLAlchemy)
        return get_bind().dialect
    raise TypeError(f"expected an Engine, a Connection or a Session, got {type(bind).__name__}")


def is_postgres(bind: Any) -> bool:
    return dialect_of(bind).name == "postgresql"


def insert_for(bind: Any) -> Callable[..., Any]:
    """The ``insert`` function of ``bind``'s dialect (Engine, Connection or Session).

    Both supported back ends have ``INSERT … ON CONFLICT``; use it as
    ``insert_for(session)(table).values(...).on_conflict_do_nothing(...)``.
    """
    name = dialect_of(bind).name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"no dialect insert for {name!r}: safereview runs on SQLite and PostgreSQL")
    return insert


# ``:name`` not preceded by another colon (``::jsonb`` casts) or a word character (``a:b``),
# and starting like an identifier (a ``'12:30'`` literal stays as it is). Also used where
# the parameters are bound another way (``dataio.export``'s ADBC reads).
NAMED_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def driver_sql(bind: Any, sql: str) -> str:
    """``sql`` written with ``:name`` placeholders, in the paramstyle of ``bind``'s DB-API driver.

    For a raw cursor's ``execute(sql, params)`` with a dict of parameters: on PostgreSQL
    ``:name`` becomes ``%(name)s`` (and a literal ``%`` becomes ``%%``); sqlite3 takes the
    SQL as written.
    """
    if is_postgres(bind):
        return NAMED_PLACEHOLDER.sub(r"%(\1)s", sql.replace("%", "%%"))
    return sql


def _processor(table: sa.Table, column: str, dialect: Dialect) -> Callable[[Any], Any] | None:
    return table.c[column].type.dialect_impl(dialect).bind_processor(dialect)


def _is_arrow(rows: Any) -> bool:
    return hasattr(rows, "column_names") and hasattr(rows, "num_rows")


def bulk_insert(
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]] | Any,
    *,
    const: Mapping[str, Any] | None = None,
    process: bool | Collection[str] = False,
) -> None:
    """Insert ``rows`` into ``table`` in the caller's transaction, as fast as each back end allows.

    ``rows`` are sequences of values in ``columns`` order (any iterable, consumed once), or
    a pyarrow Table holding ``columns`` by name (PostgreSQL then gets CSV rendered by
    pyarrow in C, with no Python work per value).

    - Values are passed as they are: in database form (JSON already serialised, ...) unless
      ``process`` names them (``True`` = every column). Processed values go through their
      column type's bind processor, so the stored values equal those of
      ``conn.execute(table.insert(), rows)``: JSON serialised by the column type, aware
      datetimes normalised to UTC; None stays SQL NULL, also in JSON columns.
    - ``const`` columns have one value for every row; it is processed once (on SQLite an
      integer, float or None is written into the SQL text: one bound value less per row).
    - PostgreSQL: when ``columns`` include ``id``, the table's id sequence is moved past the
      largest id afterwards, so later inserts do not collide with the ones given here.
    """
    dialect = conn.dialect
    prep = dialect.identifier_preparer
    const = dict(const or {})
    const_vals = tuple(
        (p(v) if (p := _processor(table, c, dialect)) is not None and v is not None else v) for c, v in const.items()
    )
    col_sql = ", ".join(prep.quote(c) for c in [*columns, *const])
    target = f"{prep.format_table(table)} ({col_sql})"
    pg = dialect.name == "postgresql"
    if not pg and dialect.name != "sqlite":
        raise NotImplementedError(f"bulk_insert: unsupported database {dialect.name!r}")
    if not conn.in_transaction():
        conn.begin()

    if _is_arrow(rows):
        if pg:
            _copy_arrow_csv(conn, target, rows, columns, const)
            _advance_id_sequence(conn, table, columns)
            return
        rows = zip(*[rows.column(c).to_pylist() for c in columns], strict=True)
    elif process:
        wanted = set(columns) if process is True else set(process)
        procs = [(i, p) for i, c in enumerate(columns) if c in wanted and (p := _processor(table, c, dialect))]
        if procs:
            rows = _processed(rows, procs)

    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    if pg:
        # COPY is several times faster than INSERT; psycopg renders each value in C and the
        # server parses it by column type (JSON text into jsonb).
        with dbapi.cursor() as cur, cur.copy(f"COPY {target} FROM STDIN") as cp:  # type: ignore[attr-defined]
            write = cp.write_row
            if const_vals:
                for r in rows:
                    write((*r, *const_vals))
            else:
                for r in rows:
                    write(r)
        _advance_id_sequence(conn, table, columns)
        return

    if dialect.paramstyle not in ("qmark", "named"):  # pragma: no cover - sqlite3 is qmark
        raise NotImplementedError(f"bulk_insert: unsupported driver paramstyle {dialect.paramstyle}")
    inline = all(_sql_literal(v) is not None for v in const_vals)
    marks = ["?"] * len(columns)
    if inline:
        values_sql = ", ".join([*marks, *(_sql_literal(v) or "" for v in const_vals)])
    else:
        values_sql = ", ".join(marks + ["?"] * len(const_vals))
        rows = ((*r, *const_vals) for r in rows)
    cur = dbapi.cursor()
    try:
        cur.executemany(f"INSERT INTO {target} VALUES ({values_sql})", rows)
    finally:
        cur.close()


@contextlib.contextmanager
def sqlite_cache(conn: Connection, mib: int) -> Iterator[None]:
    """A larger SQLite page cache on ``conn`` for a bulk write, restored after (the pooled
    connection as it was). With SQLite's default 2 MB, inserts into the indexes of a large
    table re-read pages from disk. Nothing happens on PostgreSQL."""
    if conn.dialect.name != "sqlite":
        yield
        return
    old = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size=-{int(mib) * 1024}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={int(old)}")


def _processed(rows: Iterable[Sequence[Any]], procs: list[tuple[int, Callable[[Any], Any]]]) -> Iterable[list[Any]]:
    for r in rows:
        out = list(r)
        for i, p in procs:
            v = out[i]
            if v is not None:
                out[i] = p(v)
        yield out


def _sql_literal(v: Any) -> str | None:
    """A constant written into SQLite's SQL text: None, integers and finite floats only."""
    if v is None:
        return "NULL"
    if type(v) is int:
        return str(v)
    if type(v) is float and math.isfinite(v):
        return repr(v)
    return None


def _copy_arrow_csv(
    conn: Connection, target: str, table: Any, columns: Sequence[str], const: Mapping[str, Any]
) -> None:
    """COPY a pyarrow Table as CSV that pyarrow writes in C: no per-value Python formatting.

    In COPY's CSV format an unquoted empty field is NULL, which is how pyarrow writes nulls;
    pyarrow quotes every string, so an empty string stays an empty string.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n = table.num_rows
    out = pa.table({**{c: table.column(c) for c in columns}, **{c: pa.repeat(v, n) for c, v in const.items()}})
    buf = io.BytesIO()
    pacsv.write_csv(out, buf, write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    with dbapi.cursor() as cur, cur.copy(f"COPY {target} FROM STDIN WITH (FORMAT csv)") as cp:  # type: ignore[attr-defined]
        view = buf.getbuffer()
        for start in range(0, len(view), COPY_CSV_BLOCK):
            cp.write(view[start : start + COPY_CSV_BLOCK])


def _advance_id_sequence(conn: Connection, table: sa.Table, columns: Sequence[str]) -> None:
    if "id" not in columns:
        return
    quoted = conn.dialect.identifier_preparer.format_table(table)
    literal = "'" + quoted.replace("'", "''") + "'"
    conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence({literal}, 'id'), (SELECT MAX(id) FROM {quoted}))")
