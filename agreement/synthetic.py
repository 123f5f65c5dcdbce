"""Synthetic review data, bulk-loaded with ``db.bulk.bulk_insert`` (executemany on SQLite, COPY on PostgreSQL).

Used by the agreement benchmarks and tests: ``n_items`` items, each labelled by
``n_annotators`` simulated annotators who report a planted true label with probability
``accuracy`` (else a uniformly random label), plus one judge verdict per item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from safereview.db.bulk import bulk_insert
from safereview.db.collections import ensure_collection, taxonomy_of
from safereview.db.models import ITEM_CONTENT_FIELDS, utcnow
from safereview.workflow.auth import unusable_hash

# The columns of a synthetic item row, in the order the loaders here, the benchmarks and
# the bulk-insert tests build their tuples (every Item column but id and import_batch_id).
ITEM_COLUMNS = ("collection_id", "external_id", *ITEM_CONTENT_FIELDS, "priority", "slots_taken", "created_at")
# The columns of a synthetic verdict row (the benchmarks' simulated judges).
VERDICT_COLUMNS = (
    "item_id",
    "dimension",
    "judge_id",
    "judge_version",
    "label",
    "status",
    "probability",
    "rationale",
    "raw_output",
    "intent",
    "created_at",
)


@dataclass
class Synthetic:
    collection: str
    collection_id: int
    dimension: str
    labels: list[str]
    item_ids: np.ndarray
    truth: np.ndarray  # planted label codes per item
    annotator_codes: np.ndarray  # (items, annotators)
    judge_codes: np.ndarray
    user_ids: list[int]


def _max_id(conn: sa.Connection, table: str) -> int:
    return int(conn.exec_driver_sql(f'SELECT COALESCE(MAX(id), 0) FROM "{table}"').scalar() or 0)


def _insert_rows(conn: sa.Connection, table: str, columns: list[str], rows: list[tuple]) -> None:
    """Rows in database form, with explicit ids (the id sequence follows on PostgreSQL)."""
    bulk_insert(conn, SQLModel.metadata.tables[table], columns, rows)


def _now_value(conn: sa.Connection) -> Any:
    """The stored form of "now" for raw inserts (SQLite keeps DateTime as text)."""
    now = utcnow()
    if conn.dialect.name == "postgresql":
        return now
    return now.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def bulk_load(
    engine: sa.Engine,
    n_items: int,
    n_annotators: int,
    *,
    taxonomy: str | dict = "vlsu",
    dimension: str = "joint",
    collection: str = "synthetic",
    accuracy: float = 0.8,
    judge_accuracy: float = 0.75,
    judge_id: str = "synthetic-judge",
    seed: int = 0,
    task_types: tuple[str, ...] = ("a", "b", "c"),
) -> Synthetic:
    """Create a collection with ``n_items`` items × ``n_annotators`` annotations and judge verdicts."""
    with Session(engine) as s:
        col = ensure_collection(s, collection, taxonomy)
        spec = taxonomy_of(s, col)
        s.commit()
        col_id = int(col.id)  # type: ignore[arg-type]
    dim = next(d for d in spec["dimensions"] if d["name"] == dimension)
    labels = list(dim["labels"])
    rng = np.random.default_rng(seed)
    v = len(labels)
    truth = rng.choice(v, size=n_items, p=np.linspace(2, 1, v) / np.linspace(2, 1, v).sum())
    noise = rng.integers(0, v, size=(n_items, n_annotators))
    ann = np.where(rng.random((n_items, n_annotators)) < accuracy, truth[:, None], noise)
    judge = np.where(rng.random(n_items) < judge_accuracy, truth, rng.integers(0, v, size=n_items))
    label_json = [json.dumps({dimension: lab}) for lab in labels]

    with engine.begin() as conn:
        now = _now_value(conn)
        u0 = _max_id(conn, "user")
        user_ids = list(range(u0 + 1, u0 + 1 + n_annotators))
        _insert_rows(
            conn,
            "user",
            ["id", "username", "display_name", "password_hash", "role", "disabled", "created_at"],
            [
                (uid, f"{collection}-ann{k}", "", unusable_hash(), "annotator", False, now)
                for k, uid in enumerate(user_ids)
            ],
        )
        i0 = _max_id(conn, "item")
        item_ids = np.arange(i0 + 1, i0 + 1 + n_items, dtype=np.int64)
        tt = [task_types[k % len(task_types)] for k in range(n_items)]
        _insert_rows(
            conn,
            "item",
            ["id", *ITEM_COLUMNS],
            [
                (
                    int(iid),
                    col_id,
                    f"x{k}",
                    tt[k],
                    "",
                    "",
                    "m",
                    "image+text",
                    "text",
                    "[]",
                    "[]",
                    False,
                    "{}",
                    "h",
                    0.0,
                    n_annotators,
                    now,
                )
                for k, iid in enumerate(item_ids.tolist())
            ],
        )
        a0 = _max_id(conn, "annotation")
        rows = []
        aid = a0
        item_list = item_ids.tolist()
        for k in range(n_annotators):
            uid = user_ids[k]
            col_codes = ann[:, k].tolist()
            for iid, c in zip(item_list, col_codes, strict=True):
                aid += 1
                rows.append((aid, iid, uid, label_json[c], "[]", "", False, "import", 1, now, now))
        _insert_rows(
            conn,
            "annotation",
            [
                "id",
                "item_id",
                "user_id",
                "labels",
                "categories",
                "rationale",
                "flagged",
                "source",
                "version",
                "created_at",
                "updated_at",
            ],
            rows,
        )
        del rows
        v0 = _max_id(conn, "verdict")
        _insert_rows(
            conn,
            "verdict",
            [
                "id",
                "item_id",
                "dimension",
                "judge_id",
                "judge_version",
                "label",
                "status",
                "rationale",
                "raw_output",
                "intent",
                "created_at",
            ],
            [
                (v0 + 1 + k, iid, dimension, judge_id, "1", labels[c], "ok", "", "", "", now)
                for k, (iid, c) in enumerate(zip(item_list, judge.tolist(), strict=True))
            ],
        )
    return Synthetic(collection, col_id, dimension, labels, item_ids, truth, ann, judge, user_ids)
