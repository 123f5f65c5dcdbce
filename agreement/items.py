"""Item attributes for slicing statistics (collection, task type, category, model, modality),
read as dense integer codes with one small table of distinct combinations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection

from safereview.agreement.data import AgreementError, connection, fetch, is_postgres, item_filter

ITEM_COLUMNS = ("collection", "task_type", "category", "subcategory", "model", "modality", "external_id")


_ATTRS = ("collection_id", "task_type", "category", "subcategory", "model", "input_modalities", "output_modalities")


@dataclass
class ItemAttributes:
    """Item attributes dictionary-coded, aligned on sorted ``ids``.

    Attributes repeat a lot, so each item carries only ``combo``, the index of its attribute
    combination, and ``values[attribute][combo]`` is its value (``collection`` as the name,
    ``modality`` as ``<input_modalities>-><output_modalities>``). ``external_id`` (unique per
    item) is a pyarrow string array, or None when not requested.
    """

    ids: np.ndarray
    combo: np.ndarray
    values: dict[str, list[Any]]
    external_id: Any = None


def _combos_sqlite(conn: Connection, cond: str, params: dict[str, Any]) -> tuple[list[tuple], np.ndarray, np.ndarray]:
    """SQLite: the distinct combinations once, then per item a packed (id, combination) integer.

    SQLite deduplicates the few combinations cheaply in a temporary b-tree but would sort a
    million rows for a GROUP BY; the CROSS JOIN keeps the item scan outside (rowid order).
    """
    attrs = ", ".join(_ATTRS)
    on = " AND ".join(f"k.{a} = i.{a}" for a in _ATTRS)
    combos_sql = (
        f"WITH k AS (SELECT {attrs}, ROW_NUMBER() OVER (ORDER BY {attrs}) - 1 AS k "
        f"FROM (SELECT DISTINCT {attrs} FROM item i WHERE {cond}) d)"
    )
    combos = fetch(conn, f"{combos_sql} SELECT {attrs} FROM k ORDER BY k", params)
    max_item = fetch(conn, "SELECT COALESCE(MAX(id), 0) FROM item")[0][0]
    bits = max(len(combos).bit_length(), 1)
    if not combos:
        empty = np.zeros(0, dtype=np.int64)
        return combos, empty, empty
    if int(max_item).bit_length() + bits <= 62:
        text = (
            fetch(
                conn,
                f"{combos_sql} SELECT group_concat((i.id << {bits}) | k.k) FROM item i CROSS JOIN k "
                f"ON {on} WHERE {cond}",
                params,
            )[0][0]
            or ""
        )
        packed = np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, dtype=np.int64)
        packed.sort()
        return combos, packed >> bits, packed & ((1 << bits) - 1)
    rows = fetch(
        conn,
        f"SELECT i.id, k.k FROM item i JOIN ({combos_sql} SELECT * FROM k) k ON {on} WHERE {cond} ORDER BY i.id",
        params,
    )
    return combos, np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.int64)


def _combos_postgres(conn: Connection, cond: str, params: dict[str, Any]) -> tuple[list[tuple], np.ndarray, np.ndarray]:
    """PostgreSQL: one hash-aggregated pass, each combination with the list of its item ids.

    A DISTINCT (or a join back to it) is planned as a sort of every item row when the table
    has no statistics yet (right after a bulk import, or with autovacuum off): 6-7 s per
    million items against under 1 s for this single GROUP BY.
    """
    attrs = ", ".join(_ATTRS)
    rows = fetch(
        conn,
        f"SELECT {attrs}, string_agg(i.id::text, ',') FROM item i WHERE {cond} GROUP BY {attrs} ORDER BY {attrs}",
        params,
    )
    parts = [np.fromstring(r[-1], dtype=np.int64, sep=",") for r in rows]
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return [], empty, empty
    ids = np.concatenate(parts)
    which = np.repeat(np.arange(len(parts), dtype=np.int64), [len(p) for p in parts])
    order = np.argsort(ids, kind="stable")
    return [tuple(r[:-1]) for r in rows], ids[order], which[order]


def _external_id_array(conn: Connection, cond: str, params: dict[str, Any], ids: np.ndarray) -> Any:
    """External ids aligned to ``ids`` as a pyarrow string array.

    One row with three aggregates (ids, byte lengths, the ids' text run together) becomes an
    arrow array straight from buffers: no Python string or tuple per item. Falls back to
    plain rows if the lengths do not add up (e.g. a database encoding other than UTF-8).
    """
    import pyarrow as pa

    if is_postgres(conn):
        sql = (
            "SELECT string_agg(i.id::text, ','), string_agg(octet_length(i.external_id)::text, ','), "
            "string_agg(i.external_id, '') FROM item i WHERE {cond}"
        )
    else:
        sql = (
            "SELECT group_concat(i.id), group_concat(length(CAST(i.external_id AS BLOB))), "
            "group_concat(i.external_id, '') FROM item i WHERE {cond}"
        )
    id_text, len_text, joined = fetch(conn, sql.format(cond=cond), params)[0]
    if not id_text:
        return pa.array([], type=pa.string())
    got = np.fromstring(id_text, dtype=np.int64, sep=",")
    lengths = np.fromstring(len_text or "", dtype=np.int64, sep=",")
    blob = (joined or "").encode("utf-8")
    if len(lengths) == len(got) and int(lengths.sum()) == len(blob) and len(blob) < 2**31:
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        arr = pa.StringArray.from_buffers(len(got), pa.py_buffer(offsets), pa.py_buffer(blob))
        arr.validate(full=True)
        order = np.argsort(got, kind="stable")
        if np.array_equal(got[order], ids):
            return arr.take(pa.array(order))
    rows = fetch(conn, f"SELECT i.external_id FROM item i WHERE {cond} ORDER BY i.id", params)
    return pa.array([r[0] for r in rows], type=pa.string())


def item_attributes(bind: Any, collection_ids: Sequence[int], *, external_id: bool = True) -> ItemAttributes:
    """Every item of the collections with its attributes, dictionary-coded (see :class:`ItemAttributes`)."""
    with connection(bind) as conn:
        cond, params = item_filter(conn, collection_ids, "i.id")
        names = dict(fetch(conn, "SELECT id, name FROM collection"))
        combos, ids, which = (_combos_postgres if is_postgres(conn) else _combos_sqlite)(conn, cond, params)
        ext = _external_id_array(conn, cond, params, ids) if external_id else None
    table = {a: [c[j] for c in combos] for j, a in enumerate(_ATTRS)}
    values: dict[str, list[Any]] = {c: table[c] for c in ("task_type", "category", "subcategory", "model")}
    values["collection"] = [names.get(x, "") for x in table["collection_id"]]
    values["modality"] = [
        f"{a}->{b}" for a, b in zip(table["input_modalities"], table["output_modalities"], strict=True)
    ]
    return ItemAttributes(ids, which, values, ext)


def load_items(
    bind: Any, collection_ids: Sequence[int], columns: Sequence[str] = ITEM_COLUMNS
) -> dict[str, np.ndarray]:
    """Item attributes for slicing, as object arrays aligned on sorted ``id``.

    ``modality`` is ``<input_modalities>-><output_modalities>``; ``collection`` the name.
    """
    bad = [c for c in columns if c not in ITEM_COLUMNS]
    if bad:
        raise AgreementError(f"unknown slice {bad[0]!r}; choose from {', '.join(ITEM_COLUMNS)}")
    items = item_attributes(bind, collection_ids, external_id="external_id" in columns)
    out: dict[str, np.ndarray] = {"id": items.ids}
    for c in columns:
        if c == "external_id":
            out[c] = np.array(items.external_id.to_pylist(), dtype=object)
        else:
            out[c] = (
                np.array(items.values[c], dtype=object)[items.combo]
                if len(items.values[c])
                else np.array([], dtype=object)
            )
    return out
