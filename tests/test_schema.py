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


def test_processes_starting_together_on_a_fresh_database_all_migrate_it(db_url: str, tmp_path: Path) -> None:
    """App replicas and a CLI command may all start on a new database at the same moment.
    Each must come up (one migrates, the others wait and find the head), never fail with a
    duplicate ``alembic_version`` table. Separate processes, released together by a file:
    threads of one process would serialise on Python's import lock instead."""
    import subprocess
    import sys
    import time

    go = tmp_path / "go"
    script = (
        "import pathlib, sys, time\n"
        "from safereview.db.engine import init_db\n"
        "print('ready', flush=True)\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.005)\n"
        f"init_db({db_url!r}).dispose()\n"
        "print('done', flush=True)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    go.touch()
    deadline = time.monotonic() + 120
    results = [proc.communicate(timeout=max(1.0, deadline - time.monotonic())) for proc in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == "done"
    from safereview.db.engine import head_revision

    engine = init_db(db_url)
    try:
        assert schema_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()


def test_item_lookups_use_the_unique_keys_after_0013(db_url: str) -> None:
    """Migration 0013 drops the ``item_id`` indexes that duplicate a unique key's leading
    column, keeps the rows, and look-ups by item still use an index; its downgrade restores them."""
    from alembic import command

    from safereview.db.engine import alembic_config, make_engine

    def item_indexes(eng: sa.Engine) -> set[str]:
        insp = sa.inspect(eng)
        return {
            ix["name"]
            for table in ("verdict", "assignment", "annotation")
            for ix in insp.get_indexes(table)
            if ix["column_names"] == ["item_id"]
        }

    def migrate(eng: sa.Engine, fn: object, target: str) -> None:
        cfg = alembic_config(db_url)
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            fn(cfg, target)  # type: ignore[operator]

    eng = make_engine(db_url)
    migrate(eng, command.upgrade, "0012")
    assert item_indexes(eng) == {"ix_verdict_item_id", "ix_assignment_item_id", "ix_annotation_item_id"}
    with Session(eng) as s:
        col = ensure_collection(s, "c", "vlsu")
        s.commit()
        cid = col.id
    with eng.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO item (collection_id, external_id, task_type, category, subcategory, model, "
                "input_modalities, output_modalities, prompt, response, refused, meta, content_hash, "
                "priority, slots_taken, created_at) VALUES (:c, 'a', '', '', '', '', 'text', 'text', "
                "'[]', '[]', false, '{}', 'h', 0, 0, CURRENT_TIMESTAMP)"
            ),
            {"c": cid},
        )
    eng.dispose()

    upgraded = init_db(db_url)
    assert item_indexes(upgraded) == set()
    with upgraded.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM item").scalar_one() == 1
        if upgraded.dialect.name == "sqlite":
            plan = " ".join(
                str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN SELECT id FROM verdict WHERE item_id = 1")
            )
            assert "USING" in plan and "INDEX" in plan, plan  # the unique key's index, not a table scan
    migrate(upgraded, command.downgrade, "0012")
    assert item_indexes(upgraded) == {"ix_verdict_item_id", "ix_assignment_item_id", "ix_annotation_item_id"}
    upgraded.dispose()
