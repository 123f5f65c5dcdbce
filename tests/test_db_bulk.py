"""db.bulk on SQLite and PostgreSQL: dialect insert, bulk insert (executemany / COPY), placeholders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from safereview.agreement.synthetic import ITEM_COLUMNS
from safereview.db.bulk import bulk_insert, driver_sql, insert_for, sqlite_cache
from safereview.db.collections import ensure_collection
from safereview.db.models import Annotation, Gold, GoldSnapshot, Item, User, utcnow


def _collection(engine: sa.Engine) -> int:
    with Session(engine) as s:
        col = ensure_collection(s, "c", "vlsu")
        s.commit()
        return int(col.id)  # type: ignore[arg-type]


def test_driver_sql_rewrites_named_placeholders_only_for_psycopg(engine: sa.Engine) -> None:
    sql = "SELECT CAST(:a AS TEXT)::text, '12:30', x.y FROM t WHERE b = :b_1 AND c LIKE '5%'"
    if engine.dialect.name == "postgresql":
        assert driver_sql(engine, sql) == (
            "SELECT CAST(%(a)s AS TEXT)::text, '12:30', x.y FROM t WHERE b = %(b_1)s AND c LIKE '5%%'"
        )
    else:
        assert driver_sql(engine, sql) == sql
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        cur = raw.cursor()  # type: ignore[union-attr]
        cur.execute(driver_sql(conn, "SELECT :a || '%', :b"), {"a": "x", "b": 2})
        assert tuple(cur.fetchone()) == ("x%", 2)
        cur.close()


def test_insert_for_gives_the_dialects_on_conflict_insert(engine: sa.Engine) -> None:
    t = User.__table__  # type: ignore[attr-defined]
    row = {"username": "u", "password_hash": "!x", "role": "annotator", "display_name": "", "disabled": False}
    with Session(engine) as s:
        for _ in range(2):
            s.execute(insert_for(s)(t).values(created_at=utcnow(), **row).on_conflict_do_nothing())
        s.commit()
        assert len(s.exec(select(User)).all()) == 1


def test_bulk_insert_processes_values_and_writes_constants(engine: sa.Engine) -> None:
    cid = _collection(engine)
    item_t = Item.__table__  # type: ignore[attr-defined]
    cols = ["external_id", "task_type", "category", "subcategory", "model", "input_modalities", "output_modalities"]
    cols += ["prompt", "response", "refused", "meta", "content_hash"]
    prompt = '[{"modality":"text","text":"p"}]'
    rows = [(f"x{i}", "t", "", "", "m", "text", "", prompt, "[]", False, "{}", "h") for i in range(3)]
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as conn:
        bulk_insert(
            conn,
            item_t,
            cols,
            iter(rows),
            const={"collection_id": cid, "priority": 0.5, "slots_taken": 0, "created_at": now, "import_batch_id": None},
        )
        users = [("ann", "", "!h", "annotator", False, now)]
        bulk_insert(
            conn,
            User.__table__,  # type: ignore[attr-defined]
            ["username", "display_name", "password_hash", "role", "disabled", "created_at"],
            users,
            process=True,
        )
    with Session(engine) as s:
        items = s.exec(select(Item).order_by(Item.id)).all()
        assert [i.external_id for i in items] == ["x0", "x1", "x2"]
        assert items[0].prompt == [{"modality": "text", "text": "p"}] and items[0].meta == {}
        assert {(i.collection_id, i.priority, i.created_at) for i in items} == {(cid, 0.5, now.astimezone(UTC))}
        uid = s.exec(select(User.id)).one()
        ann = {"item_id": items[0].id, "user_id": uid, "labels": {"joint": "safe"}, "blind_labels": None}
        ann |= {"categories": ["a"], "rationale": "", "flagged": False, "source": "import", "version": 1}
        ann |= {"created_at": now, "updated_at": now}
    with engine.begin() as conn:
        ann_t = Annotation.__table__  # type: ignore[attr-defined]
        bulk_insert(conn, ann_t, list(ann), [tuple(ann.values())], process=True)
    with Session(engine) as s:
        a = s.exec(select(Annotation)).one()
        assert (a.labels, a.blind_labels, a.categories, a.created_at) == (
            {"joint": "safe"},
            None,
            ["a"],
            now.astimezone(UTC),
        )
        assert s.execute(sa.text("SELECT COUNT(*) FROM annotation WHERE blind_labels IS NULL")).scalar_one() == 1


def test_bulk_insert_with_ids_moves_the_sequence_and_reads_arrow_tables(engine: sa.Engine) -> None:
    cid = _collection(engine)
    with Session(engine) as s:
        snap = GoldSnapshot(method="majority")
        s.add(snap)
        s.commit()
        sid = snap.id
    with engine.begin() as conn:
        bulk_insert(
            conn,
            Item.__table__,  # type: ignore[attr-defined]
            ["id", *ITEM_COLUMNS],
            [(41, cid, "a", "", "", "", "", "", "", "[]", "[]", False, "{}", "h", 0.0, 0, utcnow())],
            process=("created_at",),
        )
        table = pa.table(
            {
                "item_id": [41],
                "dimension": ["joint"],
                "label": [""],
                "method": ["majority"],
                "n_annotators": [2],
                "agreement": [None],
                "posterior": [0.5],
                "judge_label": [None],
            },
            schema=pa.schema(
                [
                    ("item_id", pa.int64()),
                    ("dimension", pa.string()),
                    ("label", pa.string()),
                    ("method", pa.string()),
                    ("n_annotators", pa.int64()),
                    ("agreement", pa.float64()),
                    ("posterior", pa.float64()),
                    ("judge_label", pa.string()),
                ]
            ),
        )
        gold_t = Gold.__table__  # type: ignore[attr-defined]
        with sqlite_cache(conn, 8):
            bulk_insert(conn, gold_t, table.column_names, table, const={"snapshot_id": sid})

    with Session(engine) as s:
        s.add(Item(collection_id=cid, external_id="b", content_hash="h"))
        s.commit()
        assert sorted(s.exec(select(Item.id)).all()) == [41, 42]
        g = s.exec(select(Gold)).one()
        # an empty string stays empty, a null stays NULL
        assert (g.snapshot_id, g.item_id, g.label, g.agreement, g.judge_label) == (sid, 41, "", None, None)
    with pytest.raises(TypeError):
        insert_for(object())


def test_sqlite_cache_raises_the_page_cache_and_restores_it(tmp_path: Path) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with eng.begin() as conn:
        before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
        with sqlite_cache(conn, 8):
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -8 * 1024
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == before
        with pytest.raises(RuntimeError), sqlite_cache(conn, 16):
            raise RuntimeError("a failed write restores it too")
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == before
    eng.dispose()
