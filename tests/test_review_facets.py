"""The review page's facet lists (task types, categories, models) by skip scan."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session
from workflow_support import make_collection

from safereview.review_app.data import FACET_COLUMNS, facets


def test_facets_are_the_distinct_values_of_one_collection(engine: sa.Engine) -> None:
    a = make_collection(
        engine,
        "a",
        n_items=300,
        task_types=("image-text", "text-image", "image-text", ""),
        categories=[f"C{k}" for k in range(37)],
        models=("m1", "m2", "m1", "m3 with spaces", "Ünïcode"),
    )
    make_collection(engine, "b", n_items=50, task_types=("zzz-other",), categories=("Other",), models=("mb",))
    with Session(engine) as s:
        got = facets(s, a)
        for name, col in FACET_COLUMNS.items():
            plain = s.execute(sa.text(f"SELECT DISTINCT {col} FROM item WHERE collection_id = :c"), {"c": a})
            assert got[name] == sorted(v for v in plain.scalars() if v), name
        assert facets(s, 999_999) == {"task_types": [], "categories": [], "models": []}
    assert got["task_types"] == ["image-text", "text-image"] and len(got["categories"]) == 37
    assert "zzz-other" not in got["task_types"] and "mb" not in got["models"]


def test_facet_lists_seek_the_collection_index(sqlite_url: str) -> None:
    """Each step of the skip scan is an index seek on (collection_id, facet), not a scan."""
    from safereview.db.engine import init_db

    engine = init_db(sqlite_url)
    make_collection(engine, "a", n_items=20)
    with engine.connect() as conn:
        for col in FACET_COLUMNS.values():
            plan = " | ".join(
                str(r[-1])
                for r in conn.exec_driver_sql(
                    f"EXPLAIN QUERY PLAN SELECT MIN({col}) FROM item WHERE collection_id = 1 AND {col} > 'x'"
                )
            )
            assert f"ix_item_collection_{col}" in plan and "SCAN item" not in plan, plan
    engine.dispose()
