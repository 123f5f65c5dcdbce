"""Engines and sessions for SQLite (embedded default) and PostgreSQL (team deployment).

SQLite gets WAL, foreign keys, a busy timeout and ``BEGIN IMMEDIATE`` write transactions so
several processes (app replicas, CLI) can share one file without "database is locked"
surprises mid-transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from safereview.db.urls import normalise_url, sqlite_path


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine with the project's connection settings."""
    url = normalise_url(url)
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            if path is not None:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # pysqlite's own transaction handling is off (isolation_level=None). A writing
            # transaction takes the write lock up front, so it never fails half-way on a lock
            # upgrade; a read-only one (see read_only) takes no lock, so it neither waits for
            # writers nor holds them up (WAL), and query_only makes any write in it an error.
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("PRAGMA query_only = 1")
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("PRAGMA query_only = 0")
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


READ_ONLY = "safereview_read_only"  # execution option: a transaction that only reads


def read_only(engine: Engine) -> Engine:
    """The same engine (same pool) for transactions that only read.

    On SQLite they start with a plain ``BEGIN`` instead of ``BEGIN IMMEDIATE``: a lead's
    agreement report over a million labels then reads its snapshot without holding the
    write lock, so annotators' submits go on meanwhile. PostgreSQL needs nothing (MVCC).
    """
    return engine.execution_options(**{READ_ONLY: True}) if is_sqlite(engine) else engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def migrations_dir() -> Path:
    return Path(__file__).parent / "migrations"


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def init_db(url: str) -> Engine:
    """Create or upgrade the schema to the newest migration and return an engine.

    When the database is already at the newest revision (every CLI command after the first)
    the check is one SELECT and Alembic is not even imported (~0.3 s saved per command).

    Several processes may start on a fresh database at once (app replicas, a CLI import beside
    the app): the migration runs under a lock so the second waits for the first, then finds
    the schema at the head and does nothing. SQLite's ``BEGIN IMMEDIATE`` is that lock
    already; PostgreSQL takes a transaction-level advisory lock keyed to the schema.
    """
    engine = make_engine(url)
    if _stored_revision(engine) == head_revision():
        return engine
    from alembic import command

    cfg = alembic_config(url)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(_PG_MIGRATION_LOCK))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return engine


# Held until the migration's transaction ends; keyed to the schema the tables go into, so
# databases with one schema per tenant (or per test) migrate side by side.
_PG_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('safereview.migrate:' || current_schema()))"


@functools.cache
def head_revision() -> str:
    """The newest migration's id, read from the migration files (the one no other revises).

    ``tests/test_schema.py`` checks it against Alembic's own view of the scripts.
    """
    import re

    revises: dict[str, str | None] = {}
    for path in (migrations_dir() / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev = re.search(r'^revision\s*=\s*["\']([^"\']+)["\']', text, re.M)
        down = re.search(r'^down_revision\s*=\s*(?:["\']([^"\']+)["\']|None)', text, re.M)
        if rev:
            revises[rev.group(1)] = down.group(1) if down else None
    heads = set(revises) - {d for d in revises.values() if d}
    if len(heads) != 1:
        raise RuntimeError(f"migrations: expected one head revision, found {sorted(heads)}")
    return heads.pop()


def _stored_revision(engine: Engine) -> str | None:
    """The revision in ``alembic_version``, or None (no table yet, or unreadable)."""
    try:
        with read_only(engine).connect() as conn:  # SQLite: no write lock for a look
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except sa.exc.DBAPIError:
        return None


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None before ``init``."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
