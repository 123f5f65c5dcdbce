"""Read annotations, verdicts, adjudications and audit samples into numpy arrays, fast.

Why not the ORM: agreement over a million items would build millions of objects. These
readers send SQL projections through the raw DB-API cursor and turn labels into integer
codes *inside the database* (``json_extract`` on SQLite, ``->>`` on PostgreSQL, with a
``CASE`` over the taxonomy's label list), so Python only sees small integers.

Every reader takes an Engine, a Connection or a Session.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection, Engine

from safereview.db.bulk import driver_sql
from safereview.db.taxonomy import unsafe_probability

UNSAFE_DEFAULT = ("unsafe",)


class AgreementError(ValueError):
    """Bad request for statistics (unknown collection or dimension, mismatching taxonomies)."""


@contextmanager
def connection(bind: Any) -> Iterator[Connection]:
    """A Connection from an Engine, Connection or (SQLModel/SQLAlchemy) Session.

    Given an Engine, the statistics only read: the connection is read-only (on SQLite it
    then holds no write lock while a million ratings stream out, see ``db.engine.read_only``).
    """
    if isinstance(bind, Connection):
        yield bind
    elif isinstance(bind, Engine):
        from safereview.db.engine import read_only

        with read_only(bind).connect() as conn:
            yield conn
    else:  # Session: use its connection so uncommitted rows of the caller are visible
        yield bind.connection()


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def fetch(conn: Connection, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """Rows as plain tuples through the DB-API cursor (``:name`` placeholders on both back ends)."""
    params = params or {}
    dbapi = conn.connection.dbapi_connection
    cur = dbapi.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(driver_sql(conn, sql), params)
        return cur.fetchall()
    finally:
        cur.close()


def int_matrix(rows: list[tuple], ncols: int) -> np.ndarray:
    """(N, ncols) int64 array from a list of integer tuples (flattened once, no per-row arrays)."""
    if not rows:
        return np.zeros((0, ncols), dtype=np.int64)
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=len(rows) * ncols)
    return flat.reshape(len(rows), ncols)


def _in_list(prefix: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    names = [f"{prefix}{i}" for i in range(len(values))]
    return ", ".join(f":{n}" for n in names), dict(zip(names, values, strict=True))


def label_expr(conn: Connection, column: str, key_param: str) -> str:
    """SQL text extracting one dimension's label (as text) from a JSON dict column."""
    if is_postgres(conn):
        return f"({column} ->> :{key_param})"
    return f"json_extract({column}, :{key_param})"


def _json_key(conn: Connection, dimension: str) -> str:
    if is_postgres(conn):
        return dimension
    return '$."' + dimension.replace('"', '""') + '"'


def _code_case(expr: str, labels: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Label text -> code in SQL: 0..V-1 for taxonomy labels, -1 for other text, -2 for NULL."""
    names = {f"lab{i}": lab for i, lab in enumerate(labels)}
    whens = " ".join(f"WHEN :lab{i} THEN {i}" for i in range(len(labels)))
    return f"CASE {expr} {whens} ELSE (CASE WHEN {expr} IS NULL THEN -2 ELSE -1 END) END", names


# ---------------------------------------------------------------------------------------
# collections and taxonomies
# ---------------------------------------------------------------------------------------


@dataclass
class Scope:
    """The collections a statistic covers and the dimension's label scheme."""

    collection_ids: list[int]
    collection_names: dict[int, str]
    specs: dict[int, dict[str, Any]]

    def dimensions(self) -> list[str]:
        seen: list[str] = []
        for spec in self.specs.values():
            for d in spec["dimensions"]:
                if d["name"] not in seen:
                    seen.append(d["name"])
        return seen

    def dimension(self, name: str) -> dict[str, Any]:
        """The dimension spec, identical across the scope's taxonomies (else an error)."""
        found: dict[str, Any] | None = None
        for spec in self.specs.values():
            for d in spec["dimensions"]:
                if d["name"] != name:
                    continue
                if found is not None and list(d["labels"]) != list(found["labels"]):
                    raise AgreementError(f"dimension {name!r} has different labels in the selected collections")
                found = d
        if found is None:
            raise AgreementError(
                f"no dimension {name!r} in the selected collections; known: {', '.join(self.dimensions()) or 'none'}"
            )
        return found


def scope(bind: Any, collections: Sequence[str] | None = None) -> Scope:
    """Resolve collection names (None/empty = every non-archived collection)."""
    with connection(bind) as conn:
        rows = fetch(
            conn,
            "SELECT c.id, c.name, c.archived, t.spec FROM collection c "
            "JOIN taxonomy t ON t.id = c.taxonomy_id ORDER BY c.id",
        )
    import json

    by_name = {r[1]: r for r in rows}
    if collections:
        missing = [n for n in collections if n not in by_name]
        if missing:
            raise AgreementError(f"no collection named {', '.join(map(repr, missing))}")
        chosen = [by_name[n] for n in collections]
    else:
        chosen = [r for r in rows if not r[2]]
    specs = {r[0]: (r[3] if isinstance(r[3], dict) else json.loads(r[3])) for r in chosen}
    return Scope([r[0] for r in chosen], {r[0]: r[1] for r in chosen}, specs)


# ---------------------------------------------------------------------------------------
# ratings
# ---------------------------------------------------------------------------------------


@dataclass
class Ratings:
    """Tidy ratings of one dimension: parallel arrays (unit, rater, code) plus the index maps.

    ``unit`` indexes ``item_ids`` (sorted), ``rater`` indexes ``rater_names``; ``code``
    indexes ``labels`` (taxonomy order). Labels outside the taxonomy are dropped and
    counted in ``n_invalid``.
    """

    dimension: str
    labels: list[str]
    ordered: bool
    item_ids: np.ndarray
    rater_names: list[str]
    unit: np.ndarray
    rater: np.ndarray
    code: np.ndarray
    n_invalid: int = 0
    unsafe_labels: list[str] = field(default_factory=lambda: list(UNSAFE_DEFAULT))

    @property
    def n_units(self) -> int:
        return len(self.item_ids)

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    @property
    def level(self) -> str:
        return "ordinal" if self.ordered else "nominal"

    def counts(self) -> np.ndarray:
        from safereview.agreement.alpha import value_counts

        return value_counts(self.unit, self.code, self.n_units, self.n_labels)

    def select_units(self, mask: np.ndarray) -> Ratings:
        """The ratings of the units where ``mask`` (over ``item_ids``) is true, re-indexed."""
        new_index = np.cumsum(mask) - 1
        keep = mask[self.unit]
        return Ratings(
            self.dimension,
            self.labels,
            self.ordered,
            self.item_ids[mask],
            self.rater_names,
            new_index[self.unit[keep]],
            self.rater[keep],
            self.code[keep],
            0,
            self.unsafe_labels,
        )

    def add_rater(self, name: str, item_ids: np.ndarray, codes: np.ndarray) -> Ratings:
        """These ratings plus one more rater (e.g. the judge) on the items already present."""
        if len(self.item_ids) == 0 or len(item_ids) == 0:
            pos = np.zeros(0, dtype=np.int64)
            ok = np.zeros(0, dtype=bool)
            codes = codes[:0]
        else:
            pos = np.clip(np.searchsorted(self.item_ids, item_ids), 0, len(self.item_ids) - 1)
            ok = (self.item_ids[pos] == item_ids) & (codes >= 0)
        r = len(self.rater_names)
        return Ratings(
            self.dimension,
            self.labels,
            self.ordered,
            self.item_ids,
            [*self.rater_names, name],
            np.concatenate([self.unit, pos[ok]]),
            np.concatenate([self.rater, np.full(ok.sum(), r)]),
            np.concatenate([self.code, codes[ok]]),
            self.n_invalid,
            self.unsafe_labels,
        )


_ITEM_RANGES: ContextVar[dict[tuple[int, ...], tuple[Any, Any, Any]] | None] = ContextVar("_ITEM_RANGES", default=None)


@contextmanager
def item_ranges_reused() -> Iterator[None]:
    """Within the block, :func:`item_filter` looks up each set of collections' id range once.

    A gold snapshot reads the same collections five times in one transaction, and each
    look-up counts their items (0.1-0.2 s per million).
    """
    token = _ITEM_RANGES.set({})
    try:
        yield
    finally:
        _ITEM_RANGES.reset(token)


def item_filter(conn: Connection, collection_ids: Sequence[int], column: str) -> tuple[str, dict[str, Any]]:
    """SQL condition restricting ``column`` (an item id) to the collections' items.

    When the collections' items have contiguous ids (the normal case after bulk import) the
    condition is a range test that needs no look-up per row; otherwise an ``IN`` subquery.
    The unary ``+`` keeps SQLite scanning the table in order instead of walking an index
    and fetching rows at random.
    """
    cols, cparams = _in_list("c", list(collection_ids))
    if not collection_ids:
        return "1 = 0", {}
    cache = _ITEM_RANGES.get()
    key = tuple(collection_ids)
    if cache is not None and key in cache:
        lo, hi, n = cache[key]
    else:
        lo, hi, n = fetch(
            conn, f"SELECT MIN(id), MAX(id), COUNT(*) FROM item WHERE collection_id IN ({cols})", cparams
        )[0]
        if cache is not None:
            cache[key] = (lo, hi, n)
    plus = "" if is_postgres(conn) else "+"
    if n == 0:
        return "1 = 0", {}
    if int(hi) - int(lo) + 1 == int(n):
        return f"{plus}{column} BETWEEN :id_lo AND :id_hi", {"id_lo": int(lo), "id_hi": int(hi)}
    return f"{plus}{column} IN (SELECT id FROM item WHERE collection_id IN ({cols}))", cparams


def _packed_triples(
    conn: Connection,
    select_sql: tuple[str, str, str],
    where: str,
    params: dict[str, Any],
    max_item: int,
    max_user: int,
    n_codes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(item, user, code) triples packed into one integer each and concatenated in SQL.

    Fetching millions of rows through Python's sqlite3 costs a tuple per row; one
    ``group_concat`` string parsed by numpy costs almost nothing. Returns None when the
    ids do not fit 62 bits (the caller then fetches plain rows). Codes may be -2 and -1.
    """
    code_bits = max(int(n_codes + 2).bit_length(), 1)
    user_bits = max(int(max_user).bit_length(), 1)
    if int(max_item).bit_length() + user_bits + code_bits > 62:
        return None
    agg = "string_agg(({x})::text, ',')" if is_postgres(conn) else "group_concat({x})"
    item_expr, user_expr, code_expr = select_sql
    # BIGINT: PostgreSQL's integer columns are 32-bit and the packed value needs up to 62 bits
    packed = f"((CAST({item_expr} AS BIGINT) << {user_bits}) | ({user_expr})) * {1 << code_bits} + (({code_expr}) + 2)"
    rows = fetch(conn, f"SELECT {agg.format(x=packed)} FROM {where}", params)
    text = rows[0][0] if rows else None
    if not text:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    flat = np.fromstring(text, dtype=np.int64, sep=",")  # C parser; both back ends give "1,2,3"
    code = (flat & ((1 << code_bits) - 1)) - 2
    rest = flat >> code_bits
    return rest >> user_bits, rest & ((1 << user_bits) - 1), code


def load_ratings(
    bind: Any,
    collection_ids: Sequence[int],
    dimension: str,
    labels: Sequence[str],
    *,
    ordered: bool = False,
    field_name: str = "labels",
    unsafe_labels: Sequence[str] = UNSAFE_DEFAULT,
) -> Ratings:
    """Human ratings of ``dimension`` in the collections (``field_name`` "labels" or "blind_labels")."""
    if field_name not in ("labels", "blind_labels"):
        raise AgreementError("field must be labels or blind_labels")
    labels = list(labels)
    with connection(bind) as conn:
        cond, fparams = item_filter(conn, collection_ids, "a.item_id")
        expr = label_expr(conn, f"a.{field_name}", "dimkey")
        case, lparams = _code_case(expr, labels)
        params = {**fparams, **lparams, "dimkey": _json_key(conn, dimension)}
        users = dict(fetch(conn, 'SELECT id, username FROM "user"'))
        max_item = fetch(conn, "SELECT COALESCE(MAX(id), 0) FROM item")[0][0]
        where = f"annotation a WHERE {cond}"
        packed = _packed_triples(
            conn, ("a.item_id", "a.user_id", case), where, params, int(max_item), max(users, default=1), len(labels)
        )
        if packed is None:
            arr = int_matrix(fetch(conn, f"SELECT a.item_id, a.user_id, {case} FROM {where}", params), 3)
            packed = (arr[:, 0], arr[:, 1], arr[:, 2])
    items, user_col, code = packed
    n_invalid = int((code == -1).sum())
    valid = code >= 0
    if not valid.all():
        items, user_col, code = items[valid], user_col[valid], code[valid]
    item_ids, unit = dense_index(items)
    user_ids, rater = dense_index(user_col)
    names = [str(users.get(int(u), f"user{int(u)}")) for u in user_ids]
    return Ratings(dimension, labels, ordered, item_ids, names, unit, rater, code, n_invalid, list(unsafe_labels))


def dense_index(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value): ``np.unique`` without the sort when the
    values span a compact integer range (ids usually do)."""
    if len(values) == 0:
        return values.astype(np.int64), values.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo <= 4 * len(values) + 1024:
        present = np.bincount(values - lo, minlength=hi - lo + 1) > 0
        position = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(np.int64) + lo, position[values - lo].astype(np.int64)
    uniq, inv = np.unique(values, return_inverse=True)
    return uniq.astype(np.int64), inv.astype(np.int64)


# ---------------------------------------------------------------------------------------
# items, verdicts, adjudications, audit sample
# ---------------------------------------------------------------------------------------

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


def judges(bind: Any, collection_ids: Sequence[int], dimension: str) -> list[tuple[str, int]]:
    """Judge ids with verdicts on the dimension, most verdicts first."""
    with connection(bind) as conn:
        cond, params = item_filter(conn, collection_ids, "v.item_id")
        rows = fetch(
            conn,
            f"SELECT v.judge_id, COUNT(*) FROM verdict v WHERE v.dimension = :dim AND {cond} "
            "GROUP BY v.judge_id ORDER BY COUNT(*) DESC, v.judge_id",
            {**params, "dim": dimension},
        )
    return [(r[0], int(r[1])) for r in rows]


def default_judge(bind: Any, collection_ids: Sequence[int], dimension: str) -> str | None:
    """The judge with most verdicts on the dimension, preferring raw (uncalibrated) judges."""
    found = judges(bind, collection_ids, dimension)
    raw = [j for j, _ in found if "+cal" not in j]
    return raw[0] if raw else (found[0][0] if found else None)


@dataclass
class Verdicts:
    """One judge's verdicts on one dimension: item ids (sorted), codes (-1 = none/unknown)
    and P(unsafe) where the judge gave probabilities (NaN otherwise)."""

    judge_id: str
    item_ids: np.ndarray
    code: np.ndarray
    p_unsafe: np.ndarray

    def codes_for(self, item_ids: np.ndarray) -> np.ndarray:
        """Codes aligned to ``item_ids`` (-1 where the judge has no usable verdict)."""
        if len(self.item_ids) == 0:
            return np.full(len(item_ids), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.item_ids, item_ids), 0, len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == item_ids, self.code[pos], -1)

    def p_for(self, item_ids: np.ndarray) -> np.ndarray:
        if len(self.item_ids) == 0:
            return np.full(len(item_ids), np.nan)
        pos = np.clip(np.searchsorted(self.item_ids, item_ids), 0, len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == item_ids, self.p_unsafe[pos], np.nan)


def p_unsafe_of(label: str | None, probability: float | None, probs: Any, unsafe_labels: Sequence[str]) -> float:
    """:func:`safereview.db.taxonomy.unsafe_probability` as a float for arrays (NaN when unknown)."""
    p = unsafe_probability(label, probability, probs, unsafe_labels)
    return float("nan") if p is None else p


def load_verdicts(
    bind: Any,
    collection_ids: Sequence[int],
    dimension: str,
    labels: Sequence[str],
    judge_id: str,
    *,
    unsafe_labels: Sequence[str] = UNSAFE_DEFAULT,
    with_probs: bool = False,
) -> Verdicts:
    """One judge's verdicts on a dimension (codes computed in SQL; packed like the ratings)."""
    labels = list(labels)
    with connection(bind) as conn:
        cond, fparams = item_filter(conn, collection_ids, "v.item_id")
        case, lparams = _code_case("v.label", labels)
        params = {**fparams, **lparams, "judge": judge_id, "dim": dimension}
        where = f"verdict v WHERE v.judge_id = :judge AND v.dimension = :dim AND {cond}"
        if not with_probs:
            max_item = fetch(conn, "SELECT COALESCE(MAX(id), 0) FROM item")[0][0]
            packed = _packed_triples(conn, ("v.item_id", "0", case), where, params, int(max_item), 1, len(labels))
            if packed is not None:
                items, _, code = packed
                order = np.argsort(items, kind="stable")
                return Verdicts(judge_id, items[order], code[order], np.full(len(items), np.nan))
        extra = ", v.label, v.probability, v.probs" if with_probs else ""
        rows = fetch(conn, f"SELECT v.item_id, {case}{extra} FROM {where} ORDER BY v.item_id", params)
    if not with_probs:
        arr = int_matrix(rows, 2)
        return Verdicts(judge_id, arr[:, 0], arr[:, 1], np.full(len(arr), np.nan))
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    code = np.array([r[1] for r in rows], dtype=np.int64)
    p = np.array([p_unsafe_of(r[2], r[3], r[4], unsafe_labels) for r in rows], dtype=np.float64)
    return Verdicts(judge_id, ids, code, p)


def load_adjudications(bind: Any, collection_ids: Sequence[int], dimension: str) -> dict[int, dict[str, Any]]:
    """Newest adjudication per item on the dimension: item_id -> {label, user_id, at, rationale, id}."""
    with connection(bind) as conn:
        # the shared range test: an IN (SELECT id FROM item ...) made SQLite list every item first
        cond, params = item_filter(conn, collection_ids, "a.item_id")
        rows = fetch(
            conn,
            "SELECT a.item_id, a.label, a.user_id, a.at, a.rationale, a.id FROM adjudication a "
            f"WHERE a.dimension = :dim AND {cond} ORDER BY a.item_id, a.at, a.id",
            {**params, "dim": dimension},
        )
    out: dict[int, dict[str, Any]] = {}
    for item_id, label, user_id, at, rationale, adj_id in rows:  # ordered: the newest overwrites
        out[int(item_id)] = {"label": label, "user_id": user_id, "at": at, "rationale": rationale, "id": adj_id}
    return out


def _epoch(value: Any) -> float:
    """Seconds since the epoch from a datetime or SQLite's stored text (UTC)."""
    from datetime import UTC, datetime

    if value is None:
        return float("inf")
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def load_audit_sample(bind: Any, collection_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Items drawn into the random audit stratum and their inclusion probabilities pi_i.

    Follows the queue's sampling design (docs/workflow.md): an audit pull j took the audit
    route with probability ``audit_share`` and then drew uniformly among ``N_elig,j`` eligible
    items, recording ``sampling_prob_j = audit_share / N_elig,j``; so it picks a given
    eligible item with ``q_j = sampling_prob_j / audit_share``. Item i was eligible for every
    audit pull of its collection made up to the moment its k-th overlap slot was taken (its
    fill time; never, if it has fewer than k), except pulls by a reviewer who already held it:

        pi_i = 1 - prod_{j eligible for i} (1 - q_j)

    Assignments without ``sampling_prob`` are ignored; priority and imported assignments
    only count for fill times and "already held".
    """
    with connection(bind) as conn:
        cond, params = item_filter(conn, collection_ids, "s.item_id")
        pulls = fetch(
            conn,
            "SELECT i.collection_id, s.item_id, s.user_id, s.sampling_prob, s.leased_at, "
            "c.audit_share FROM assignment s JOIN item i ON i.id = s.item_id "
            "JOIN collection c ON c.id = i.collection_id WHERE s.stratum = 'audit' "
            f"AND s.sampling_prob IS NOT NULL AND s.sampling_prob > 0 AND {cond}",
            params,
        )
        if not pulls:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        held = fetch(
            conn,
            "SELECT s.item_id, s.user_id, s.leased_at, c.overlap_target FROM assignment s "
            "JOIN item i ON i.id = s.item_id JOIN collection c ON c.id = i.collection_id "
            "WHERE s.status IN ('leased', 'done') AND s.item_id IN (SELECT a.item_id FROM assignment a "
            f"WHERE a.stratum = 'audit' AND a.sampling_prob > 0) AND {cond}",
            params,
        )
    audit_items = {int(r[1]): int(r[0]) for r in pulls}
    holds: dict[int, list[tuple[int, float]]] = {}
    k_of: dict[int, int] = {}
    for item_id, user_id, at, k in held:
        if int(item_id) in audit_items:
            holds.setdefault(int(item_id), []).append((int(user_id), _epoch(at)))
            k_of[int(item_id)] = int(k)
    by_col: dict[int, list[tuple[float, int, float]]] = {}
    own_q: dict[int, float] = {}
    for col, item, user, prob, at, share in pulls:
        q = float(prob) / float(share) if share and float(share) > 0 else float(prob)
        own_q[int(item)] = max(own_q.get(int(item), 0.0), min(q, 1.0))
        by_col.setdefault(int(col), []).append((_epoch(at), int(user), float(np.log1p(-min(max(q, 0.0), 1 - 1e-12)))))
    cum: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    cum_user: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for col, rows in by_col.items():
        rows.sort()
        t = np.array([r[0] for r in rows])
        lg = np.array([r[2] for r in rows])
        cum[col] = (t, np.concatenate([[0.0], np.cumsum(lg)]))
        users = np.array([r[1] for r in rows])
        for u in np.unique(users):
            m = users == u
            cum_user[(col, int(u))] = (t[m], np.concatenate([[0.0], np.cumsum(lg[m])]))

    def upto(series: tuple[np.ndarray, np.ndarray], when: float) -> float:
        times, sums = series
        return float(sums[np.searchsorted(times, when, side="right")])

    ids = np.array(sorted(audit_items), dtype=np.int64)
    pi = np.empty(len(ids))
    for n, item_id in enumerate(ids.tolist()):
        col = audit_items[item_id]
        mine = sorted(holds.get(item_id, []), key=lambda h: h[1])
        k = k_of.get(item_id, 1)
        fill = mine[k - 1][1] if len(mine) >= k else float("inf")
        log_miss = upto(cum[col], fill)
        for user, since in mine:
            if since < fill and (col, user) in cum_user:
                series = cum_user[(col, user)]
                log_miss -= upto(series, fill) - upto(series, since)  # pulls while this reviewer held it
        # never below the chance of the pull that did draw it (guards odd histories, e.g. k lowered later)
        pi[n] = max(1.0 - np.exp(log_miss), own_q[item_id])
    return ids, pi
