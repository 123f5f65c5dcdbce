"""The schema migrates on both back ends and protects the event log."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.collections import ensure_collection
from safereview.db.engine import init_db, schema_revision
from safereview.db.models import Annotation, AnnotationEvent, Item, User


def test_init_is_idempotent(db_url: str) -> None:
    first = init_db(db_url)
    assert schema_revision(first) is not None
    again = init_db(db_url)
    assert schema_revision(again) == schema_revision(first)
    names = set(sa.inspect(again).get_table_names())
    assert {"item", "verdict", "annotation", "annotationevent", "assignment", "gold", "calibration"} <= names


def test_event_log_is_append_only(engine: sa.Engine) -> None:
    with Session(engine) as s:
        col = ensure_collection(s, "c", "vlsu")
        item = Item(collection_id=col.id, external_id="a", content_hash="x")
        user = User(username="u", password_hash="h")
        s.add_all([item, user])
        s.flush()
        ann = Annotation(item_id=item.id, user_id=user.id, labels={"joint": "safe"})
        s.add(ann)
        s.flush()
        s.add(
            AnnotationEvent(
                annotation_id=ann.id,
                item_id=item.id,
                actor_id=user.id,
                action="create",
                version=1,
                after={"labels": {"joint": "safe"}},
            )
        )
        s.commit()
    stmts = ["UPDATE annotationevent SET action = 'x'", "DELETE FROM annotationevent"]
    if engine.dialect.name == "postgresql":
        stmts.append("TRUNCATE annotationevent CASCADE")  # row triggers do not fire on TRUNCATE
    for stmt in stmts:
        with pytest.raises(sa.exc.DatabaseError), engine.begin() as conn:
            conn.exec_driver_sql(stmt)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT action FROM annotationevent").scalar_one() == "create"


def test_sqlite_runs_in_wal_with_foreign_keys(sqlite_url: str) -> None:
    eng = init_db(sqlite_url)
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with pytest.raises(sa.exc.IntegrityError), Session(eng) as s:
        s.add(Item(collection_id=999, external_id="orphan", content_hash="x"))
        s.commit()


def test_migrations_match_the_models(engine: sa.Engine) -> None:
    """A model change without its migration (or the reverse) fails here, on both back ends."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_head_revision_read_from_the_files_is_alembics(tmp_path: Path) -> None:
    """init_db skips Alembic when the stored revision is the head it reads from the migration
    files; that must be the head Alembic itself sees, and a CLI run on an up-to-date database
    must not import Alembic at all (its import and check cost ~0.3 s per command)."""
    import subprocess
    import sys

    from alembic.script import ScriptDirectory

    from safereview.db.engine import alembic_config, head_revision

    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert head_revision() == ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    probe = (
        "import sys; from safereview.db.engine import init_db, schema_revision; "
        f"e = init_db({url!r}); print('alembic' in sys.modules)"
    )
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    again = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert first.stdout.strip() == "True"  # a new database: migrated by Alembic
    assert again.stdout.strip() == "False"  # already at the head: one SELECT, no Alembic
