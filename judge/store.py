"""Writing verdicts and cached responses: the one place judge output reaches the database."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from operator import attrgetter, itemgetter
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from safereview.db.bulk import insert_for
from safereview.db.models import Item, JudgeCache, Verdict, utcnow
from safereview.judge.protocols.base import Draft

DONE_STATUSES = ("ok", "rule", "unparseable")
VERDICT_FIELDS = (
    "label",
    "status",
    "probability",
    "probs",
    "score",
    "rationale",
    "raw_output",
    "intent",
    "judge_version",
)
# one C call per verdict: the importer compares every verdict of a re-imported file
_FIELDS_BY_KEY = itemgetter(*VERDICT_FIELDS)
_FIELDS_BY_ATTR = attrgetter(*VERDICT_FIELDS)


def verdict_key(row: Any) -> tuple[Any, ...]:
    """What makes two verdicts of one (item, dimension, judge) the same: every imported field.

    ``row`` is a mapping or an object with :data:`VERDICT_FIELDS`. Floats are compared to 9
    decimals and ``probs`` by content, so a re-import of the same file is recognised as
    unchanged whatever the database did to the numbers' last bits.
    """
    fields = _FIELDS_BY_KEY(row) if isinstance(row, dict) else _FIELDS_BY_ATTR(row)
    label, status, probability, probs, score, rationale, raw_output, intent, judge_version = fields
    return (
        label,
        status,
        None if probability is None else round(float(probability), 9),
        json.dumps(probs, sort_keys=True) if probs is not None else "",
        None if score is None else round(float(score), 9),
        rationale or "",
        raw_output or "",
        intent or "",
        judge_version or "",
    )


STORED_CHUNK = 900  # item ids per IN (...) look-up (under SQLite's old 999 bound values)


def stored_verdicts(
    bind: Session | sa.Connection, item_ids: Sequence[int], judge_ids: Sequence[str] | None = None
) -> dict[tuple[int, str, str], tuple[int, tuple[Any, ...]]]:
    """(item id, dimension, judge id) -> (row id, :func:`verdict_key`) of the stored verdicts of
    these items (of these judges only, when given): what both verdict imports compare with."""
    out: dict[tuple[int, str, str], tuple[int, tuple[Any, ...]]] = {}
    ids = sorted(set(item_ids))
    t = Verdict.__table__  # type: ignore[attr-defined]
    cols = [t.c.id, t.c.item_id, t.c.dimension, t.c.judge_id, *(t.c[f] for f in VERDICT_FIELDS)]
    for k in range(0, len(ids), STORED_CHUNK):
        stmt = sa.select(*cols).where(t.c.item_id.in_(ids[k : k + STORED_CHUNK]))
        if judge_ids is not None:
            stmt = stmt.where(t.c.judge_id.in_(list(judge_ids)))
        for row in bind.execute(stmt):
            out[(row.item_id, row.dimension, row.judge_id)] = (row.id, verdict_key(row))
    return out


def write_verdicts(
    session: Session, drafts: Sequence[Draft], *, judge_id: str, judge_version: str, import_batch_id: int | None = None
) -> int:
    """Insert or replace the verdicts of ``drafts`` for ``judge_id`` (key: item, dimension, judge).

    Replacing keeps one row per key, so a retried error or a re-imported file never
    duplicates verdicts. One ``INSERT … ON CONFLICT DO UPDATE`` executemany per call (SQLite
    and PostgreSQL both have it): building ORM objects cost more than the HTTP calls.
    Returns the number of rows written.
    """
    if not drafts:
        return 0
    now = utcnow()
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for d in drafts:  # the last draft for a key wins, as a sequence of updates would
        rows[(d.item_id, d.dimension)] = {
            "item_id": d.item_id,
            "dimension": d.dimension,
            "judge_id": judge_id,
            "judge_version": judge_version,
            "label": d.label,
            "status": d.status,
            "probability": d.probability,
            "probs": d.probs,
            "score": d.score,
            "rationale": d.rationale,
            "raw_output": d.raw_output,
            "intent": d.intent,
            "import_batch_id": import_batch_id,
            "created_at": now,
        }
    table = Verdict.__table__  # type: ignore[attr-defined]
    values = list(rows.values())
    stmt = insert_for(session)(table)
    update = {c: stmt.excluded[c] for c in values[0] if c not in ("item_id", "dimension", "judge_id")}
    update["calibration_id"] = sa.null()  # a new answer invalidates any calibrated link
    # executemany of one compiled statement (compiling a multi-row VALUES costs more)
    session.execute(
        stmt.on_conflict_do_update(index_elements=["item_id", "dimension", "judge_id"], set_=update), values
    )
    return len(values)


def missing_work(
    session: Session, judge_id: str, collection_ids: Sequence[int], dimensions: Sequence[str]
) -> tuple[list[tuple[int, tuple[str, ...]]], int]:
    """What this judge still has to do: (item id, dimensions without a finished verdict), in id order.

    Two queries over integer and short-string columns (the items' ids; this judge's finished
    (item, dimension) pairs in the collections), so a million-item collection plans in a
    few seconds without loading any prompt. Also returns how many items are already done.
    """
    ids = session.exec(
        select(Item.id)
        .where(Item.collection_id.in_(list(collection_ids)))  # type: ignore[union-attr]
        .order_by(Item.id)
    ).all()  # type: ignore[arg-type]
    done: dict[int, set[str]] = defaultdict(set)
    for item_id, dim in session.exec(
        select(Verdict.item_id, Verdict.dimension)
        .join(Item, Item.id == Verdict.item_id)  # type: ignore[arg-type]
        .where(
            Item.collection_id.in_(list(collection_ids)),
            Verdict.judge_id == judge_id,  # type: ignore[union-attr]
            Verdict.status.in_(DONE_STATUSES),
        )
    ).all():  # type: ignore[attr-defined]
        done[item_id].add(dim)
    todo: list[tuple[int, tuple[str, ...]]] = []
    for item_id in ids:
        have = done.get(item_id, ())
        missing = tuple(d for d in dimensions if d not in have)
        if missing:
            todo.append((int(item_id), missing))  # type: ignore[arg-type]
    return todo, len(ids) - len(todo)


def cache_get(session: Session, key: str) -> dict[str, Any] | None:
    row = session.get(JudgeCache, key)
    return None if row is None else row.response


def cache_put_many(session: Session, entries: dict[str, dict[str, Any]]) -> None:
    """Insert cache entries, ignoring keys another run stored meanwhile."""
    if not entries:
        return
    rows = [{"key": k, "response": v, "created_at": utcnow()} for k, v in entries.items()]
    stmt = insert_for(session)(JudgeCache).values(rows).on_conflict_do_nothing(index_elements=["key"])
    session.exec(stmt)  # type: ignore[call-overload]
