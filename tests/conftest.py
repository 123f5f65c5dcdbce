"""Shared fixtures: the same storage tests run on SQLite and on PostgreSQL.

PostgreSQL tests use the server named by ``SAFEREVIEW_TEST_PG``; each test gets a fresh
schema that is dropped afterwards, so runs never see each other's rows. Without the
variable they skip (a laptop); with ``SAFEREVIEW_REQUIRE_PG=1`` (CI) a missing or
unreachable server is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from safereview.db.engine import init_db, normalise_url

PG_URL = os.environ.get("SAFEREVIEW_TEST_PG", "")
REQUIRE_PG = os.environ.get("SAFEREVIEW_REQUIRE_PG") == "1"


def _pg_admin_engine() -> sa.Engine:
    return sa.create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session", autouse=True)
def _require_pg_when_asked() -> None:
    if REQUIRE_PG and not PG_URL:
        pytest.fail("SAFEREVIEW_REQUIRE_PG=1 but SAFEREVIEW_TEST_PG is not set", pytrace=False)


def pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{normalise_url(PG_URL)}{sep}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def fresh_pg_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a brand-new schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except sa.exc.OperationalError as exc:  # server unreachable
        pytest.fail(f"PostgreSQL at SAFEREVIEW_TEST_PG unreachable: {exc}", pytrace=False)
    try:
        yield pg_schema_url(schema)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a brand-new schema."""
    if not PG_URL:
        pytest.skip("SAFEREVIEW_TEST_PG not set")
    with fresh_pg_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'safereview.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Parametrised over both back ends: every test using it runs twice."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def other_db_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A second, empty database of the same back end as ``db_url`` (to compare two runs)."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.db'}"
        return
    with fresh_pg_schema() as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = init_db(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def hf_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Hugging Face ``datasets`` offline, with its cache in a temporary folder (never ~/.cache).

    The package reads these variables when first imported, so one imported by an earlier test
    has its settings patched too."""
    folder = tmp_path / "hf-home"
    cache = folder / "datasets"
    monkeypatch.setenv("HF_HOME", str(folder))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    config = sys.modules.get("datasets.config")
    if config is not None:
        monkeypatch.setattr(config, "HF_DATASETS_CACHE", cache)
        monkeypatch.setattr(config, "HF_HUB_OFFLINE", True)
    return folder
