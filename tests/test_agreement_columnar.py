"""The columnar ratings read gives exactly the reliability matrix of the row-by-row read.

A realistic fixture on SQLite and PostgreSQL: three collections (two with interleaved item
ids), three dimensions in one JSON dict per annotation, missing ratings, ties, labels outside
the taxonomy, absent dimensions, JSON nulls and numbers, blind labels on some annotations
only, the same label dict written as different texts (key order, spacing), and a lead and an
annotator with the same display name. Each scope x dimension x field is read three ways: the
columnar path (packed string, label-text dictionary on SQLite), the plain row-by-row SQL path,
and an independent Python oracle that parses the JSON itself.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from safereview.agreement import data
from safereview.agreement.alpha import krippendorff_alpha
from safereview.db.collections import ensure_collection
from safereview.db.models import Annotation, Collection, Item, User

LABELS = ["safe", "borderline", "unsafe"]
DIMS = ["image", "text", "joint"]
TAXONOMY = {"name": "multi", "dimensions": [{"name": d, "labels": LABELS, "ordered": True} for d in DIMS]}
# what an annotation may hold for a dimension besides a taxonomy label
ODD_VALUES: list[Any] = ["maybe", None, 2, {"nested": "safe"}, True]


def _label_value(rng: np.random.Generator) -> Any:
    u = rng.random()
    if u < 0.9:
        return LABELS[int(rng.choice(3, p=[0.5, 0.2, 0.3]))]
    return ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]


def _labels_dict(rng: np.random.Generator) -> dict[str, Any]:
    out = {}
    for d in DIMS:
        if rng.random() < 0.93:  # else the dimension is absent
            out[d] = _label_value(rng)
    return out


def build(engine: sa.Engine) -> None:
    rng = np.random.default_rng(7)
    with Session(engine) as s:
        cols = {name: ensure_collection(s, name, TAXONOMY) for name in ("alpha", "beta", "gamma")}
        users = [User(username=f"ann{k}", display_name=f"Ann {k}", password_hash="!x") for k in range(4)]
        # a lead who also labels, with an annotator's display name
        users.append(User(username="lead", display_name="Ann 1", role="lead", password_hash="!x"))
        s.add_all(users)
        s.flush()
        # alpha and beta interleaved (non-contiguous ids), gamma contiguous at the end
        order = [("alpha", 30), ("beta", 20), ("alpha", 30), ("beta", 20), ("gamma", 40)]
        n_seen: dict[str, int] = {}
        for name, n in order:
            for _ in range(n):
                k = n_seen.get(name, 0)
                n_seen[name] = k + 1
                item = Item(collection_id=cols[name].id, external_id=f"{name}{k}", content_hash="x")
                s.add(item)
                s.flush()
                for u in users:
                    if rng.random() < 0.3:  # missing rating
                        continue
                    blind = _labels_dict(rng) if rng.random() < 0.3 else None
                    s.add(Annotation(item_id=item.id, user_id=u.id, labels=_labels_dict(rng), blind_labels=blind))
        s.commit()
    # the same dicts as other texts: compact, keys reordered (SQLite keeps the text; jsonb does not)
    cast = "CAST(:v AS jsonb)" if engine.dialect.name == "postgresql" else ":v"
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT id, labels FROM annotation ORDER BY id")).all()
        for k, (aid, labels) in enumerate(rows[::3]):
            value = labels if isinstance(labels, dict) else json.loads(labels)
            text = (
                json.dumps(value, separators=(",", ":"))
                if k % 2
                else json.dumps(dict(reversed(list(value.items()))), indent=1)
            )
            conn.execute(sa.text(f"UPDATE annotation SET labels = {cast} WHERE id = :id"), {"v": text, "id": aid})


def oracle(
    engine: sa.Engine, collections: list[str], dimension: str, field_name: str
) -> tuple[np.ndarray, list[str], np.ndarray, int]:
    """(item ids, rater names, reliability matrix, invalid count), the JSON parsed in Python."""
    with Session(engine) as s:
        col_ids = [c.id for c in s.exec(select(Collection)).all() if c.name in collections]
        rows = s.exec(
            select(Annotation.item_id, Annotation.user_id, getattr(Annotation, field_name))
            .join(Item, Item.id == Annotation.item_id)
            .where(Item.collection_id.in_(col_ids))  # type: ignore[attr-defined]
        ).all()
        names = {u.id: u.username for u in s.exec(select(User)).all()}
    ratings, invalid = {}, 0
    for item_id, user_id, value in rows:
        got = (value or {}).get(dimension) if isinstance(value, dict) else None
        if got is None:
            continue
        if isinstance(got, str) and got in LABELS:
            ratings[(item_id, user_id)] = LABELS.index(got)
        else:
            invalid += 1
    items = sorted({i for i, _ in ratings})
    users = sorted({u for _, u in ratings})
    matrix = np.full((len(users), len(items)), np.nan)
    for (i, u), code in ratings.items():
        matrix[users.index(u), items.index(i)] = code
    return np.array(items, dtype=np.int64), [names[u] for u in users], matrix, invalid


SCOPES = [["alpha"], ["beta"], ["gamma"], ["alpha", "beta"], ["alpha", "beta", "gamma"]]


@pytest.mark.parametrize("sample_rows", [7, 2000])
def test_columnar_read_equals_row_read_and_oracle(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, sample_rows: int
) -> None:
    """7 sampled rows: the dictionary lists a few texts and most rows take the JSON path."""
    monkeypatch.setattr(data, "TEXT_SAMPLE_ROWS", sample_rows)
    build(engine)
    checked = 0
    for names in SCOPES:
        sc = data.scope(engine, names)
        for dim in DIMS:
            for field_name in ("labels", "blind_labels"):
                kw: dict[str, Any] = {"ordered": True, "field_name": field_name}
                col = data.load_ratings(engine, sc.collection_ids, dim, LABELS, **kw)
                rows = data.load_ratings(engine, sc.collection_ids, dim, LABELS, read="rows", **kw)
                items, raters, matrix, invalid = oracle(engine, names, dim, field_name)
                for r in (col, rows):
                    assert r.item_ids.tolist() == items.tolist()
                    assert r.rater_names == raters
                    assert np.array_equal(r.reliability_matrix(), matrix, equal_nan=True)
                    assert r.n_invalid == invalid
                    assert np.array_equal(r.counts(), rows.counts())
                assert len(items) > 5 and np.isnan(matrix).any() and invalid > 0
                a = krippendorff_alpha(col.counts(), "ordinal", resamples=200, seed=3).as_dict()
                b = krippendorff_alpha(rows.counts(), "ordinal", resamples=200, seed=3).as_dict()
                assert a == b
                checked += 1
    assert checked == len(SCOPES) * len(DIMS) * 2


def test_collection_filter_forms(engine: sa.Engine) -> None:
    """No filter when the selection holds every item, else a range or the IN subquery."""
    build(engine)
    ids = {n: data.scope(engine, [n]).collection_ids[0] for n in ("alpha", "beta", "gamma")}
    with data.connection(engine) as conn:
        assert data.item_filter(conn, list(ids.values()), "a.item_id") == ("1 = 1", {})
        assert "IN (SELECT id FROM item" in data.item_filter(conn, [ids["alpha"]], "a.item_id")[0]
        assert "BETWEEN" in data.item_filter(conn, [ids["gamma"]], "a.item_id")[0]
        assert data.item_filter(conn, [], "a.item_id") == ("1 = 0", {})


def test_label_text_dictionary_on_sqlite(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dictionary is taken when the sample's texts repeat, and its codes come from SQL."""
    from safereview.db.engine import init_db

    monkeypatch.setattr(data, "TEXT_SAMPLE_ROWS", 10)
    engine = init_db(sqlite_url)
    build(engine)
    with data.connection(engine) as conn:
        sql, params = data.text_dictionary_case(
            conn, "a.labels", "annotation a WHERE 1 = 1", {"dimkey": '$."joint"'}, LABELS
        )
        assert "WHEN :txt0 THEN" in sql
        texts = {k: v for k, v in params.items() if k.startswith("txt")}
        for key, text in texts.items():
            value = json.loads(text).get("joint")
            code = LABELS.index(value) if value in LABELS else (-2 if value is None else -1)
            assert f"WHEN :{key} THEN {code} " in sql + " "
    engine.dispose()


def test_bigint_array_binary_form(engine: sa.Engine) -> None:
    """PostgreSQL's array_send form decoded by numpy: empty, NULL and 62-bit values."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's binary array form")
    values = [0, 1, 2**62 - 1, 123_456_789_012]
    with data.connection(engine) as conn:
        got = data.int8_array(
            data.fetch_one_binary(
                conn, "SELECT array_send(CAST(:v AS bigint[]))", {"v": "{" + ",".join(map(str, values)) + "}"}
            )
        )
        assert got.dtype == np.int64 and got.tolist() == values
        assert data.int8_array(data.fetch_one_binary(conn, "SELECT array_send(CAST('{}' AS bigint[]))")).size == 0
        assert data.int8_array(data.fetch_one_binary(conn, "SELECT array_agg(1) WHERE 1 = 0")).size == 0
