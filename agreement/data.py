"""Read annotations into numpy arrays, fast: the connection, scope and rating readers.

Item attributes are read by :mod:`agreement.items`, verdicts, adjudications and the audit
sample by :mod:`agreement.verdicts`, on the same helpers.

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


def fetch_one_binary(conn: Connection, sql: str, params: dict[str, Any] | None = None) -> Any:
    """PostgreSQL: the first column of the first row, sent in binary (a bytea arrives as bytes)."""
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(driver_sql(conn, sql), params or {}, binary=True)
        row = cur.fetchone()
        return row[0] if row else None
    finally:
        cur.close()


def int8_array(blob: bytes | None) -> np.ndarray:
    """A PostgreSQL ``bigint[]`` in its binary form (``array_send``) as an int64 array.

    The form: dimensions, a has-nulls flag, the element type, (length, lower bound) per
    dimension, then each element as a 4-byte length and 8 big-endian bytes. NULL (an
    aggregate over no rows) and an empty array give an empty array; nulls are refused.
    """
    if not blob:
        return np.zeros(0, dtype=np.int64)
    head = np.frombuffer(blob, dtype=">i4", count=3)
    ndim, has_nulls = int(head[0]), int(head[1])
    if ndim == 0:
        return np.zeros(0, dtype=np.int64)
    if ndim != 1 or has_nulls:
        raise ValueError("expected a one-dimensional bigint array without nulls")
    cells = np.frombuffer(blob, dtype=np.dtype([("n", ">i4"), ("v", ">i8")]), offset=12 + 8 * ndim)
    if len(cells) and int(cells["n"][0]) != 8:
        raise ValueError("expected 8-byte bigint elements")
    return cells["v"].astype(np.int64)


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


def code_case(expr: str, labels: Sequence[str]) -> tuple[str, dict[str, Any]]:
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

    def reliability_matrix(self) -> np.ndarray:
        """(raters, units) codes as floats, NaN where a rater gave no rating: the ``reliability_data``
        of the ``krippendorff`` package (rows ``rater_names``, columns ``item_ids``)."""
        matrix = np.full((len(self.rater_names), self.n_units), np.nan)
        matrix[self.rater, self.unit] = self.code
        return matrix

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


# per set of collections: None when they hold every item, else their items' (min id, max id, count)
_ITEM_RANGES: ContextVar[dict[tuple[int, ...], tuple[int, int, int] | None] | None] = ContextVar(
    "_ITEM_RANGES", default=None
)


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


def holds_every_item(conn: Connection, collection_ids: Sequence[int]) -> bool:
    """Whether no collection outside ``collection_ids`` has an item (one index probe per collection).

    Then every item, and every annotation or verdict (their item ids are foreign keys), belongs
    to the collections and a read needs no collection filter at all.
    """
    cols, cparams = _in_list("c", list(collection_ids))
    other = fetch(
        conn,
        f"SELECT c.id FROM collection c WHERE c.id NOT IN ({cols}) "
        "AND (SELECT i.id FROM item i WHERE i.collection_id = c.id LIMIT 1) IS NOT NULL LIMIT 1",
        cparams,
    )
    return not other


def _item_range(conn: Connection, collection_ids: Sequence[int]) -> tuple[int, int, int] | None:
    """None when the collections hold every item, else (min id, max id, count) of their items."""
    cache = _ITEM_RANGES.get()
    key = tuple(collection_ids)
    if cache is not None and key in cache:
        return cache[key]
    found: tuple[int, int, int] | None = None
    if not holds_every_item(conn, collection_ids):
        cols, cparams = _in_list("c", list(collection_ids))
        lo, hi, n = fetch(
            conn, f"SELECT MIN(id), MAX(id), COUNT(*) FROM item WHERE collection_id IN ({cols})", cparams
        )[0]
        found = (int(lo or 0), int(hi or 0), int(n))
    if cache is not None:
        cache[key] = found
    return found


def item_filter(conn: Connection, collection_ids: Sequence[int], column: str) -> tuple[str, dict[str, Any]]:
    """SQL condition restricting ``column`` (an item id) to the collections' items.

    When the collections hold every item (one collection in the database, or a report over
    all of them) the condition is ``1 = 1``: no look-up and no test per row. When their items
    have contiguous ids (the normal case after bulk import) it is a range test; otherwise an
    ``IN`` subquery. The unary ``+`` keeps SQLite scanning the table in order instead of
    walking an index and fetching rows at random.
    """
    if not collection_ids:
        return "1 = 0", {}
    found = _item_range(conn, collection_ids)
    if found is None:
        return "1 = 1", {}
    lo, hi, n = found
    plus = "" if is_postgres(conn) else "+"
    if n == 0:
        return "1 = 0", {}
    if hi - lo + 1 == n:
        return f"{plus}{column} BETWEEN :id_lo AND :id_hi", {"id_lo": lo, "id_hi": hi}
    cols, cparams = _in_list("c", list(collection_ids))
    return f"{plus}{column} IN (SELECT id FROM item WHERE collection_id IN ({cols}))", cparams


def packed_triples(
    conn: Connection,
    select_sql: tuple[str, str, str],
    where: str,
    params: dict[str, Any],
    max_item: int,
    max_user: int,
    n_codes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(item, user, code) triples packed into one integer each and aggregated in SQL.

    Fetching millions of rows costs a Python tuple per row (and COPY a message per row). One
    aggregate costs almost nothing on the client: on SQLite a ``group_concat`` string parsed
    by numpy's C parser; on PostgreSQL ``array_send(array_agg(...))``, the array's binary
    form as one bytea read by ``np.frombuffer`` (a tenth less server time than a
    ``string_agg`` of the numbers as text). Returns None when the ids do not fit 62 bits (the
    caller then fetches plain rows). Codes may be -2 and -1.
    """
    code_bits = max(int(n_codes + 2).bit_length(), 1)
    user_bits = max(int(max_user).bit_length(), 1)
    if int(max_item).bit_length() + user_bits + code_bits > 62:
        return None
    item_expr, user_expr, code_expr = select_sql
    if is_postgres(conn):  # integer columns are 32-bit; packed values need up to 62 bits
        item_expr = f"CAST({item_expr} AS BIGINT)"
    packed = f"(({item_expr} << {user_bits}) | ({user_expr})) * {1 << code_bits} + (({code_expr}) + 2)"
    if is_postgres(conn):
        flat = int8_array(fetch_one_binary(conn, f"SELECT array_send(array_agg({packed})) FROM {where}", params))
    else:  # SQLite integers are 64-bit already (a CAST per row costs)
        rows = fetch(conn, f"SELECT group_concat({packed}) FROM {where}", params)
        text = rows[0][0] if rows else None
        flat = np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, dtype=np.int64)
    code = (flat & ((1 << code_bits) - 1)) - 2
    rest = flat >> code_bits
    return rest >> user_bits, rest & ((1 << user_bits) - 1), code


# The label-text dictionary (SQLite): rows sampled, distinct texts listed at most, and the
# share of the sample they must cover to be worth their comparisons on the other rows.
TEXT_SAMPLE_ROWS = 2000
TEXT_DICTIONARY_MAX = 16
TEXT_DICTIONARY_MIN_SHARE = 0.5


def text_dictionary_case(
    conn: Connection, column: str, where: str, params: dict[str, Any], labels: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    """SQL for the label code in ``column``'s JSON (:func:`code_case`), on SQLite with common texts decided once.

    A label column holds few distinct JSON texts (``{"joint": "safe"}``, ...), and parsing
    one per row is most of the SQL's time. The texts most common in the first rows of
    ``where`` get their codes from the same SQL expression, evaluated once on each text, and
    the query compares whole texts (``CASE column WHEN :txt0 THEN 2 ...``, byte for byte)
    before parsing any other row's JSON: identical codes, a third less time per million rows.
    ``params`` must hold ``dimkey`` (the dimension's JSON key). Returns the plain per-row
    expression (:func:`code_case`) when the sample shows no texts common enough, and always on
    PostgreSQL (comparing jsonb values there costs more than ``->>``).
    """
    case_of, case_params = code_case(label_expr(conn, column, "dimkey"), list(labels))
    case_params = {**params, **case_params}
    if is_postgres(conn):
        return case_of, case_params
    sample = fetch(
        conn,
        f"SELECT t, COUNT(*) FROM (SELECT {column} AS t FROM {where} LIMIT {TEXT_SAMPLE_ROWS}) "
        "GROUP BY t ORDER BY COUNT(*) DESC",
        params,
    )
    total = sum(int(n) for _, n in sample)
    common = [(t, int(n)) for t, n in sample if isinstance(t, str) and t.startswith("{")][:TEXT_DICTIONARY_MAX]
    if not total or sum(n for _, n in common) < TEXT_DICTIONARY_MIN_SHARE * total:
        return case_of, case_params
    probe, _ = code_case(label_expr(conn, ":txt", "dimkey"), list(labels))
    whens, out = [], dict(case_params)
    for k, (text, _) in enumerate(common):
        try:  # malformed JSON: left to the per-row expression, which raises as it always did
            code = int(fetch(conn, f"SELECT {probe}", {**case_params, "txt": text})[0][0])
        except conn.dialect.dbapi.Error:  # type: ignore[union-attr]
            continue
        whens.append(f"WHEN :txt{k} THEN {code}")
        out[f"txt{k}"] = text
    if not whens:
        return case_of, case_params
    # "+": the column's NUMERIC affinity dropped, so each comparison is text against text as it is
    return f"CASE +{column} {' '.join(whens)} ELSE ({case_of}) END", out


def rating_triples(
    conn: Connection,
    collection_ids: Sequence[int],
    dimension: str,
    labels: Sequence[str],
    field_name: str = "labels",
    *,
    read: str = "columnar",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Every annotation's (item id, user id, code) of one dimension, as int64 arrays, and usernames.

    Codes are computed in SQL: 0..V-1 for taxonomy labels, -1 for other text, -2 where the
    dimension is absent. ``read="columnar"`` (the default) streams the whole selection as
    one packed string per query (:func:`packed_triples`), with the label-text dictionary on
    SQLite (:func:`text_dictionary_case`); ``read="rows"`` fetches one row per annotation, the
    plain reference the tests compare it with.
    """
    if field_name not in ("labels", "blind_labels"):
        raise AgreementError("field must be labels or blind_labels")
    if read not in ("columnar", "rows"):
        raise ValueError(f"read must be columnar or rows, got {read!r}")
    cond, fparams = item_filter(conn, collection_ids, "a.item_id")
    column = f"a.{field_name}"
    base = {**fparams, "dimkey": _json_key(conn, dimension)}
    users = {int(k): str(v) for k, v in fetch(conn, 'SELECT id, username FROM "user"')}
    where = f"annotation a WHERE {cond}"
    packed = None
    if read == "columnar":
        case, params = text_dictionary_case(conn, column, where, base, labels)
        max_item = fetch(conn, "SELECT COALESCE(MAX(id), 0) FROM item")[0][0]
        packed = packed_triples(
            conn, ("a.item_id", "a.user_id", case), where, params, int(max_item), max(users, default=1), len(labels)
        )
    else:
        case, lparams = code_case(label_expr(conn, column, "dimkey"), list(labels))
        params = {**base, **lparams}
    if packed is None:
        arr = int_matrix(fetch(conn, f"SELECT a.item_id, a.user_id, {case} FROM {where}", params), 3)
        packed = (arr[:, 0], arr[:, 1], arr[:, 2])
    return (*packed, users)


def load_ratings(
    bind: Any,
    collection_ids: Sequence[int],
    dimension: str,
    labels: Sequence[str],
    *,
    ordered: bool = False,
    field_name: str = "labels",
    unsafe_labels: Sequence[str] = UNSAFE_DEFAULT,
    read: str = "columnar",
) -> Ratings:
    """Human ratings of ``dimension`` in the collections (``field_name`` "labels" or "blind_labels").

    One query reads the ratings (:func:`rating_triples`); numpy turns ids into unit and rater
    indexes. ``read="rows"`` takes the row-by-row reference path instead (tests).
    """
    labels = list(labels)
    with connection(bind) as conn:
        items, user_col, code, users = rating_triples(conn, collection_ids, dimension, labels, field_name, read=read)
    n_invalid = int((code == -1).sum())
    valid = code >= 0
    if not valid.all():
        items, user_col, code = items[valid], user_col[valid], code[valid]
    item_ids, unit = dense_index(items)
    user_ids, rater = dense_index(user_col)
    names = [users.get(int(u), f"user{int(u)}") for u in user_ids]
    return Ratings(dimension, labels, ordered, item_ids, names, unit, rater, code, n_invalid, list(unsafe_labels))


def dense_index(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value): ``np.unique`` without the sort when the
    values span a compact integer range (ids usually do), and without a look-up table when
    they fill it (the index is then the offset)."""
    values = np.asarray(values, dtype=np.int64)
    if len(values) == 0:
        return values, values
    lo, hi = int(values.min()), int(values.max())
    if hi - lo <= 4 * len(values) + 1024:
        offset = values - lo
        present = np.bincount(offset, minlength=hi - lo + 1) > 0
        if present.all():
            return np.arange(lo, hi + 1, dtype=np.int64), offset
        position = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(np.int64) + lo, position[offset]
    uniq, inv = np.unique(values, return_inverse=True)
    return uniq.astype(np.int64), inv.astype(np.int64)
