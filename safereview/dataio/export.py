"""Export items (with verdicts) and annotations to JSONL, CSV or Parquet.

Every row carries provenance columns (``exported_at``, ``safereview_version``,
``schema_revision``, the import batch and source file, the judge ids involved) so an
exported file can always be traced back to the database state it came from. Files are
written to a temporary name and renamed into place.

Exports stream, in bounded memory whatever the number of rows. All reads happen in one
read-only snapshot; each collection's rows are read in id order, a page of items or a
window of about ``CHUNK_ROWS`` annotations at a time, straight into Arrow columns by ADBC's
SQLite and PostgreSQL drivers, in chunks of exactly ``CHUNK_ROWS`` rows; every chunk
becomes an Arrow table and is written at once: Parquet through one ``ParquetWriter`` (a
row group per chunk), CSV through one ``CSVWriter`` (formula cells defused per chunk),
JSONL as a block of lines. The schema is fixed before the first row: the verdict columns
from the (judge, dimension) pairs present in the selected collections, the label columns
from the dimensions their annotations use, and every column with its own type, also when
it holds no value at all (an empty export has the same column types as a full one).

The work per chunk is column-wise. A reader thread fetches the rows (and the chunk's
verdicts, with one query) as Arrow arrays, one chunk ahead of the writer. The writer's
side runs in Arrow kernels, mostly without the GIL: Arrow's JSON reader decodes the
prompt and response parts (and the annotations' labels) of the whole chunk, verdicts
are scattered into their columns with numpy, timestamps are formatted by Arrow, JSON
lines are assembled from per-column fragments. A chunk holding anything this fast path
could render differently from the row-by-row rules (a part without a modality, a media
part without media, JSON that Arrow's reader refuses) goes through the row-by-row code
instead, so the output is the same either way.
"""

from __future__ import annotations

import gc
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from safereview.dataio.spreadsheet import defuse, escape_line_breaks
from safereview.db.bulk import NAMED_PLACEHOLDER, driver_sql
from safereview.db.engine import read_only
from safereview.db.models import Annotation, Collection, Item, utcnow

EXPORT_FORMATS = ("jsonl", "csv", "parquet")
CHUNK_ROWS = 50_000  # rows per database fetch and per written batch (Parquet row group)

_S, _I, _F, _B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
# The items export's columns before the verdict columns, with their types.
ITEM_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("collection", _S),
    ("item_id", _I),
    ("external_id", _S),
    ("task_type", _S),
    ("category", _S),
    ("subcategory", _S),
    ("model", _S),
    ("input_modalities", _S),
    ("output_modalities", _S),
    ("prompt_text", _S),
    ("prompt_media", _S),
    ("response_text", _S),
    ("response_media", _S),
    ("refused", _B),
    ("prompt_json", _S),
    ("response_json", _S),
    ("meta_json", _S),
    ("content_hash", _S),
    ("priority", _F),
    ("slots_taken", _I),
    ("created_at", _S),
    ("import_batch_id", _I),
    ("import_source", _S),
    ("import_format", _S),
    ("judge_ids", _S),
)
# The annotations export's columns before the label columns.
ANNOTATION_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("collection", _S),
    ("item_id", _I),
    ("external_id", _S),
    ("task_type", _S),
    ("category", _S),
    ("model", _S),
    ("annotator", _S),
    ("annotator_role", _S),
    ("categories", _S),
    ("rationale", _S),
    ("flagged", _B),
    ("verdict_action", _S),
    ("verdict_judge_id", _S),
    ("time_spent_s", _F),
    ("source", _S),
    ("version", _I),
    ("created_at", _S),
    ("updated_at", _S),
    ("import_batch_id", _I),
    ("import_source", _S),
)
PROVENANCE_COLUMNS = ("exported_at", "safereview_version", "schema_revision")


@dataclass
class ExportResult:
    path: Path
    format: str
    rows: int
    columns: list[str]


def _provenance(reader: _Reader) -> dict[str, Any]:
    """The provenance columns. The schema revision is read in the export's snapshot, as
    Alembic keeps it (``alembic_version``; empty before ``init``): the revision of the rows
    exported, with no second connection (which a SQLite database in memory cannot give
    while the export's transaction is open) and without importing Alembic."""
    from safereview import __version__

    exists = (
        "SELECT to_regclass('alembic_version') IS NOT NULL"
        if reader.pg
        else "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    )
    rows = reader.all("SELECT version_num FROM alembic_version") if reader.all(exists)[0][0] else []
    return {
        "exported_at": utcnow().isoformat(),
        "safereview_version": __version__,
        "schema_revision": str(rows[0][0]) if rows else "",
    }


# ---------------------------------------------------------------------------------------
# Reading: one snapshot, raw DB-API cursors, chunks
# ---------------------------------------------------------------------------------------


@contextmanager
def _snapshot(engine: sa.Engine) -> Iterator[_Reader]:
    """A reader whose every query runs in one read-only transaction, so the whole export sees
    one database state: on the Arrow connection (:func:`_arrow_connection`; SQLite: a plain
    BEGIN that takes no write lock, PostgreSQL: REPEATABLE READ READ ONLY), or, for SQLite
    in memory, in a read-only transaction of the ``sqlite3`` connection."""
    if engine.dialect.name == "sqlite":
        with read_only(engine).begin() as conn, _arrow_connection(conn) as arrow:
            yield _Reader(conn, arrow)
        return
    with engine.connect() as conn, _arrow_connection(conn) as arrow:
        yield _Reader(conn, arrow)


@contextmanager
def _arrow_connection(conn: sa.Connection) -> Iterator[Any]:
    """A second, read-only connection to the database of ``conn`` through ADBC (Apache
    Arrow's database connectivity), whose drivers hand query results over as Arrow columns
    built in C, without the GIL, and with no Python object per value.

    For 1M items, the ``sqlite3`` module's tuples and their conversion took the reader
    thread 4.1 s, ADBC's SQLite driver 2.5 s (verdicts 1.4 s → 0.4 s); on PostgreSQL
    ``COPY … (FORMAT csv)`` parsed by Arrow took 7 s of wall time and 4.3–4.9 s of CPU,
    ADBC's driver (binary COPY) 2.8 s and 1.6 s. Every read of the exported data goes
    through this connection, inside one transaction of its own, so the export still sees
    one snapshot. It opens the database ``conn`` has open: on PostgreSQL with the live
    psycopg connection's own parameters (SQLAlchemy's URL text loses some, a space in a
    password for one), text in UTF-8; on SQLite the file SQLite names for ``conn``. None
    for a SQLite database in memory: it keeps the ``sqlite3`` cursor."""
    if conn.dialect.name == "postgresql":
        import adbc_driver_postgresql.dbapi as adbc_pg
        from psycopg.conninfo import make_conninfo

        info = conn.connection.dbapi_connection.info  # type: ignore[union-attr]
        dsn = make_conninfo(info.dsn, password=info.password, client_encoding="UTF8")
        arrow = adbc_pg.connect(dsn, autocommit=True)  # the transaction is ours: BEGIN, then close
        try:
            cur = arrow.cursor()
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.close()
            yield arrow
        finally:
            arrow.close()  # ends the read-only transaction
        return
    path = next((row[2] for row in conn.exec_driver_sql("PRAGMA database_list") if row[1] == "main"), "")
    if not path:  # in memory (or a temporary database)
        yield None
        return
    import adbc_driver_sqlite.dbapi as adbc_sqlite

    # ADBC's DB-API starts a transaction; SQLite takes the snapshot at the first read
    arrow = adbc_sqlite.connect(f"file:{quote(path)}?mode=ro")
    try:
        cur = arrow.cursor()
        cur.execute("PRAGMA busy_timeout = 30000")  # as the engine's connections wait (db.engine)
        cur.close()
        yield arrow
    finally:
        try:
            arrow.rollback()
        finally:
            arrow.close()


def _adbc_sqlite_batch() -> dict[str, str]:
    """ADBC's SQLite driver infers each column's type from a result's first batch and sets
    aside 8 bytes a row per column for it, so the batch is bounded by what a query of the
    export returns: a page, a window (about ``CHUNK_ROWS`` rows: only an item with more
    annotators than that makes one longer) or a small table. A result longer than this
    still reads, unless a column is NULL throughout its first batch and text later: that
    fails the export with ADBC's "type mismatch", it does not write anything wrong."""
    return {"adbc.sqlite.query.batch_rows": str(2 * max(CHUNK_ROWS, 1024) + 1)}


class _Reader:
    """SQL straight through a database driver: the ADBC connection beside the SQLAlchemy
    connection (Arrow columns), or the SQLAlchemy connection's own DB-API driver (SQLite
    in memory: tuples); no per-value SQLAlchemy processing either way."""

    def __init__(self, conn: sa.Connection, arrow: Any = None) -> None:
        self.conn = conn
        self.dialect = conn.dialect
        self.pg = conn.dialect.name == "postgresql"
        self.arrow = arrow
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        self.dbapi = dbapi
        # a PostgreSQL server in UTF8 rejects text that is not UTF-8 when it is stored (the
        # ADBC connection asks for UTF8: a server in SQL_ASCII would pass any bytes on)
        self.check_utf8 = not (
            arrow is not None and self.pg and self.all("SELECT current_setting('server_encoding')") == [("UTF8",)]
        )

    def all(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        if self.arrow is not None:
            table = self._arrow_table(sql, params or {})
            return list(zip(*(c.to_pylist() for c in table.columns), strict=True))
        cur = self.dbapi.cursor()
        try:
            cur.execute(driver_sql(self.conn, sql), params or {})
            return list(cur.fetchall())
        finally:
            cur.close()

    def arrays(
        self, sql: str, params: dict[str, Any], columns: tuple[tuple[str, pa.DataType], ...]
    ) -> dict[str, pa.Array]:
        """All rows of ``sql`` as Arrow columns of ``columns``' names and types."""
        if self.arrow is not None:
            return _typed(self._arrow_table(sql, params), columns, self.check_utf8)
        return _to_arrow(self.all(sql, params), columns)

    def _arrow_table(self, sql: str, params: dict[str, Any]) -> pa.Table:
        """The whole result of ``sql`` through the ADBC connection, as one Arrow table.

        SQLite: one batch (see :func:`_adbc_sqlite_batch`). ADBC infers each column's type
        from a result's first batch (an all-NULL first batch says int64, and a later text
        then fails the query), so the export reads pages and windows of about
        ``CHUNK_ROWS`` rows, each within one batch.

        PostgreSQL: the parameters are written into the SQL as literals, quoted by psycopg
        (``libpq``'s own escaping for this connection), because ADBC reads a query without
        bound parameters through binary COPY (1M items: 2.8 s; with parameters 4.0–4.5 s)."""
        cur = self.arrow.cursor()
        try:
            if self.pg:
                from psycopg import sql as pgsql

                def literal(m: re.Match[str]) -> str:
                    return pgsql.Literal(params[m.group(1)]).as_string(self.dbapi)

                cur.execute(NAMED_PLACEHOLDER.sub(literal, sql))
            else:
                cur.adbc_statement.set_options(**_adbc_sqlite_batch())
                # SQLite numbers ``:name`` placeholders by their first appearance
                cur.execute(sql, tuple(params[name] for name in dict.fromkeys(NAMED_PLACEHOLDER.findall(sql))))
            return cur.fetch_arrow_table()
        finally:
            cur.close()

    def pages(
        self, sql: str, params: dict[str, Any], columns: tuple[tuple[str, pa.DataType], ...]
    ) -> Iterator[tuple[dict[str, pa.Array], list[tuple] | None]]:
        """The rows of ``sql`` in pages of exactly ``CHUNK_ROWS`` (the last one shorter), for
        a query with one row per item: ``sql`` selects the rows with item id (its first
        column) in ``:lo``..``:hi``, in id order, ``LIMIT :size``, and each page starts after
        the last id of the one before. No window boundaries to look up first (:meth:`windows`
        steps through the index for them: 0.4 s for 1M items on PostgreSQL). Arrow columns,
        with the ``sqlite3`` driver's rows beside them when they came that way."""
        size, lo, hi = CHUNK_ROWS, int(params["lo"]), int(params["hi"])
        while lo <= hi:
            page = {**params, "lo": lo, "size": size}
            rows: list[tuple] | None = None
            if self.arrow is not None:
                arrays = _typed(self._arrow_table(sql, page), columns, self.check_utf8)
            else:
                rows = self.all(sql, page)
                arrays = _to_arrow(rows, columns)
            ids = arrays[columns[0][0]]
            if not len(ids):
                return
            yield arrays, rows
            if len(ids) < size:
                return
            lo = int(ids[-1].as_py()) + 1

    def windows(self, params: dict[str, Any], rows_of: tuple[str, str]) -> Iterator[dict[str, Any]]:
        """``params`` with ``lo``..``hi`` cut into windows of about ``CHUNK_ROWS`` rows of
        ``rows_of`` (table, item-id column), each an index range (no sort, no scan of what
        earlier windows read), however sparse the ids or however many rows an item has.

        Each window ends where ``OFFSET`` on the item-id index, from the window's start,
        lands: 7 ms a step on SQLite, 20 ms on PostgreSQL (numbering every row with
        ``row_number()`` first took 0.7 s for 1M rows on PostgreSQL and 0.9 s on SQLite)."""
        size, hi = CHUNK_ROWS, int(params["hi"])
        table_name, column = rows_of
        step = (
            f"SELECT {column} FROM {table_name} WHERE {column} BETWEEN :lo AND :hi "
            f"ORDER BY {column} LIMIT 1 OFFSET :size"
        )
        start = int(params["lo"])
        while start <= hi:
            after = self.all(step, {"lo": start, "hi": hi, "size": size})
            # an item with more than CHUNK_ROWS rows is a window of its own
            end = max(int(after[0][0]) - 1, start) if after else hi
            yield {**params, "lo": start, "hi": end}
            start = end + 1

    def text(self, column: str) -> str:
        """A JSON column as its stored text."""
        return f"{column}::text" if self.pg else f"CAST({column} AS TEXT)"

    def iso(self, column: str) -> str:
        """A timestamp column as the reader fetches it: on PostgreSQL microseconds since the
        epoch, formatted by :func:`_iso_from_micros` (the server's ``to_char`` cost 0.5 s per
        million values and column, the epoch almost nothing); SQLite keeps the text, formatted
        by the caller."""
        if not self.pg:
            return f"CAST({column} AS TEXT)"
        return f"CAST(EXTRACT(EPOCH FROM {column}) * 1000000 AS BIGINT)"


def _in_list(column: str, values: Sequence[Any], prefix: str) -> tuple[str, dict[str, Any]]:
    params = {f"{prefix}{i}": v for i, v in enumerate(values)}
    return f"{column} IN ({', '.join(':' + k for k in params)})", params


def _collection_filter(reader: _Reader, names: Iterable[str] | None) -> dict[int, str]:
    names = list(names or [])
    sql = f"SELECT id, name FROM {Collection.__table__.name}"  # type: ignore[attr-defined]
    params: dict[str, Any] = {}
    if names:
        cond, params = _in_list("name", names, "n")
        sql += f" WHERE {cond}"
    found = {int(cid): str(name) for cid, name in reader.all(sql, params)}
    missing = set(names) - set(found.values())
    if missing:
        raise LookupError(f"no collection named {', '.join(sorted(missing))}")
    return dict(sorted(found.items()))  # exported in collection id order


def _item_range(reader: _Reader, cid: int) -> tuple[int, int] | None:
    row = reader.all("SELECT MIN(id), MAX(id) FROM item WHERE collection_id = :cid", {"cid": cid})[0]
    return None if row[0] is None else (int(row[0]), int(row[1]))


def _where_collection(reader: _Reader, alias: str) -> str:
    """Rows of one collection between two item ids, read in id order without a sort: on
    SQLite the unary ``+`` keeps the planner off the (collection, ...) indexes, which would
    hand the rows back in another order and sort the whole collection first."""
    plus = "" if reader.pg else "+"
    return f"{alias}.id BETWEEN :lo AND :hi AND {plus}{alias}.collection_id = :cid"


# ---------------------------------------------------------------------------------------
# Column-wise helpers
# ---------------------------------------------------------------------------------------

_PARTS = pa.list_(pa.struct([("modality", _S), ("text", _S), ("media", _S)]))
_JSON_BLOCK = 16 << 20  # bytes per block of Arrow's JSON reader; a longer row falls back


def _bools(arr: pa.Array) -> pa.Array:
    """``bool(v)`` of each value, column-wise (SQLite keeps booleans as 0/1, NULL is False)."""
    if pa.types.is_null(arr.type):
        return pa.array(np.zeros(len(arr), dtype=bool))
    if not pa.types.is_boolean(arr.type):
        arr = pc.not_equal(arr, pa.scalar(0, arr.type))
    return pc.fill_null(arr, False)


def _repeat(value: Any, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, _S), n)


def _ndjson(**columns: Any) -> pa.Buffer:
    """One JSON object per row, ``{"<name>": <column's JSON text>, ...}``, as one buffer
    (built by Arrow kernels; a SQL NULL becomes JSON null)."""
    big = pa.large_string()  # the chunk's lines may pass 2 GiB
    pieces: list[Any] = []
    for i, (name, col) in enumerate(columns.items()):
        pieces.append(pa.scalar(("{" if i == 0 else ",") + json.dumps(name) + ":", big))
        pieces.append(pc.coalesce(pc.cast(col, big), pa.scalar("null", big)))
    pieces.append(pa.scalar("}\n", big))
    lines = pc.binary_join_element_wise(*pieces, pa.scalar("", big))
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset : lines.offset + len(lines) + 1]
    return lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def _read_ndjson(buf: pa.Buffer, schema: pa.Schema, n: int) -> pa.Table | None:
    """``buf`` parsed by Arrow's JSON reader with an explicit schema, or None when it
    refuses anything (a value of another type, a repeated key, a bad surrogate, a row
    longer than a block): the caller then takes the row-by-row path."""
    import pyarrow.json as pj

    try:
        table = pj.read_json(
            pa.BufferReader(buf),
            read_options=pj.ReadOptions(block_size=_JSON_BLOCK),
            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == n else None


def _regroup(values: pa.Array, parents: pa.Array, n: int, sep: str) -> pa.Array:
    """``sep.join`` of the ``values`` of each of ``n`` rows (``parents`` ascending)."""
    counts = np.bincount(parents.to_numpy(zero_copy_only=False), minlength=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    return pc.binary_join(lists, sep)


def _parts_columns(parts: pa.ListArray) -> tuple[pa.Array, pa.Array] | None:
    """The text and media columns of one decoded parts column (see ``_parts_text`` and
    ``_parts_media``), or None if a row needs the row-by-row rules."""
    n = len(parts)
    flat = pc.list_flatten(parts)
    if flat.null_count:  # a part that is JSON null
        return None
    parents = pc.list_parent_indices(parts)
    modality, text, media = flat.field("modality"), flat.field("text"), flat.field("media")
    if modality.null_count:  # no modality: the reference code raises or writes "None:"
        return None
    is_text = pc.equal(modality, "text")
    other = pc.invert(is_text)
    # A missing text or media is "" and a JSON null one "None" (or an error) row by row:
    # Arrow's reader makes both null, so such chunks take the row-by-row path.
    if pc.any(pc.and_(is_text, pc.is_null(text))).as_py() or pc.any(pc.and_(other, pc.is_null(media))).as_py():
        return None
    texts = _regroup(pc.filter(text, is_text), pc.filter(parents, is_text), n, "\n\n")
    labelled = pc.binary_join_element_wise(pc.filter(modality, other), pc.filter(media, other), ":")
    medias = _regroup(labelled, pc.filter(parents, other), n, ";")
    return texts, medias


def _parts_text(parts: list[dict[str, Any]] | None) -> str:
    return "\n\n".join(p.get("text", "") for p in parts or [] if p.get("modality") == "text")


def _parts_media(parts: list[dict[str, Any]] | None) -> str:
    return ";".join(f"{p['modality']}:{p.get('media', '')}" for p in parts or [] if p.get("modality") != "text")


def _item_parts(
    prompt: pa.Array, response: pa.Array, raw: Callable[[], tuple[Sequence[Any], Sequence[Any]]]
) -> list[pa.Array]:
    """prompt_text, prompt_media, response_text, response_media of a chunk (``raw()`` gives
    the JSON texts as the driver returned them, for the row-by-row path)."""
    n = len(prompt)
    table = _read_ndjson(_ndjson(p=prompt, r=response), pa.schema([("p", _PARTS), ("r", _PARTS)]), n)
    if table is not None:
        out: list[pa.Array] = []
        for name in ("p", "r"):
            pieces = [_parts_columns(chunk) for chunk in table.column(name).chunks]
            if any(p is None for p in pieces):
                break
            out.extend(pa.chunked_array([p[k] for p in pieces], _S).combine_chunks() for k in (0, 1))  # type: ignore[index]
        else:
            return [pc.cast(a, _S) for a in out]
    loads = json.loads  # the row-by-row rules
    columns: list[list[str]] = [[], [], [], []]
    for p_json, r_json in zip(*raw(), strict=True):
        p, r = loads(p_json or "[]"), loads(r_json or "[]")
        columns[0].append(_parts_text(p))
        columns[1].append(_parts_media(p))
        columns[2].append(_parts_text(r))
        columns[3].append(_parts_media(r))
    return [pa.array(c, _S) for c in columns]


def _iso_from_micros(micros: pa.Array) -> pa.Array:
    """What ``isoformat()`` of the aware UTC time writes (microseconds only when not zero),
    from microseconds since the epoch (PostgreSQL's read, :meth:`_Reader.iso`): Arrow's own
    text of the time (0.04 s per million; its ``strftime`` took 1 s) in ISO form."""
    return _utc_iso(pc.cast(pc.cast(micros, pa.timestamp("us")), _S))


def _utc_iso(text: pa.Array) -> pa.Array:
    """UTC times as text "YYYY-MM-DD HH:MM:SS.ffffff" in ISO form: "T" for the first space,
    ".000000" dropped (as ``isoformat()`` does) and "+00:00" appended."""
    iso = pc.replace_substring(text, " ", "T", max_replacements=1)
    # a test and a slice, not a regular expression: 3x faster
    iso = pc.if_else(pc.ends_with(iso, ".000000"), pc.utf8_slice_codeunits(iso, 0, -7), iso)
    return pc.binary_join_element_wise(iso, "+00:00", "")


_SQLITE_TIME = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$"


def _sqlite_datetime_iso(text: pa.Array, column: sa.Column, dialect: sa.Dialect) -> pa.Array:
    """What ``isoformat()`` of the column's value as SQLAlchemy returns it writes (aware UTC,
    microseconds only when not zero, as on PostgreSQL), from SQLite's stored text. Times in
    the form SQLAlchemy stores ("YYYY-MM-DD HH:MM:SS.ffffff", UTC) are rewritten by Arrow;
    any other text goes through the column type's own reading, as the ORM would read it
    (an offset is converted to UTC); an empty text is no time. Until 2026-12-01 that other
    path failed on every value, and the items export did not take it at all."""
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, _S), text)
    if pc.all(pc.fill_null(pc.match_substring_regex(text, _SQLITE_TIME), True)).as_py():
        return _utc_iso(text)
    process = column.type.dialect_impl(dialect).result_processor(dialect, None)
    out: list[str | None] = []
    for v in text.to_pylist():
        try:
            out.append(_iso(process(v) if process else v) if v is not None else None)
        except (ValueError, TypeError):
            raise ValueError(f"export: column {column.name}: stored text {v[:40]!r} is not a time") from None
    return pa.array(out, _S)


def _iso(v: Any) -> str | None:
    return v.isoformat() if v is not None else None


def _lookup(keys: pa.Array, table: dict[Any, Any], typ: pa.DataType = _S) -> pa.Array:
    """``table.get(key)`` for each key, column-wise."""
    if not table:
        return pa.nulls(len(keys), typ)
    idx = pc.index_in(keys, value_set=pa.array(list(table)))
    return pc.take(pa.array(list(table.values()), typ), idx)


# ---------------------------------------------------------------------------------------
# A chunk's rows, read in a thread of its own
# ---------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """One chunk as read from the database: ``arrays`` are its columns already in Arrow
    (the conversion from Python values holds the GIL, so it is done by the reader thread),
    ``rows`` the driver's rows, kept for the row-by-row path, ``extra`` what else the
    export read for these rows (verdicts)."""

    collection: str
    arrays: dict[str, Any]
    rows: list[tuple] | None  # None when read as Arrow columns (the arrays are all there is)
    extra: Any = None

    @property
    def n(self) -> int:
        return len(self.rows) if self.rows is not None else len(next(iter(self.arrays.values())))

    def raw(self, name: str, columns: tuple[tuple[str, Any], ...]) -> list[Any]:
        """Column ``name`` as the driver returned it (or as ADBC gave it: the same values)."""
        if self.rows is None:
            return self.arrays[name].to_pylist()
        i = [c for c, _ in columns].index(name)
        return [r[i] for r in self.rows]


_TIMES = ("created_at", "updated_at")


def _read_types(columns: tuple[tuple[str, pa.DataType], ...], reader: _Reader) -> tuple[tuple[str, pa.DataType], ...]:
    """The columns' types as this back end returns them: SQLite booleans as integers (``_bools``
    converts), PostgreSQL times as integer microseconds (:meth:`_Reader.iso`)."""
    if reader.pg:
        return tuple((c, _I if c in _TIMES else t) for c, t in columns)
    return tuple((c, _I if t == _B else t) for c, t in columns)


def _to_arrow(rows: list[tuple], columns: tuple[tuple[str, pa.DataType], ...]) -> dict[str, pa.Array]:
    """The driver's rows as Arrow columns, converted in one pass by Arrow (no Python
    transposition of the rows)."""
    array = pa.array(rows, type=pa.struct(list(columns)))
    return {name: array.field(i) for i, (name, _) in enumerate(columns)}


def _typed(
    table: pa.Table, columns: tuple[tuple[str, pa.DataType], ...], check_utf8: bool = True
) -> dict[str, pa.Array]:
    """An ADBC result's columns, by position, under ``columns``' names and types (a column
    that was NULL throughout a window comes back as int64 nulls, cast to its type here).
    Text is checked to be UTF-8 (as the ``sqlite3`` driver checks it when decoding) unless
    ``check_utf8`` is false: a PostgreSQL database in UTF8 has checked it on the way in."""
    out: dict[str, pa.Array] = {}
    for (name, typ), column in zip(columns, table.columns, strict=True):
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if array.type != typ:
            try:
                array = array.cast(typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"export: column {name}: stored values are not {typ} ({exc})") from None
        if check_utf8 and pa.types.is_string(typ):
            try:
                array.validate(full=True)
            except pa.ArrowInvalid as exc:
                raise ValueError(f"export: column {name}: stored text is not valid UTF-8 ({exc})") from None
        out[name] = array
    return out


def _exact_chunks(tables: Iterable[pa.Table], names: list[str]) -> Iterator[dict[str, pa.Array]]:
    """The rows of ``tables`` re-cut into chunks of exactly ``CHUNK_ROWS`` rows (the last one
    shorter), as the item pages come: Parquet row groups do not depend on how the rows
    were read."""
    size = CHUNK_ROWS
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        if not table.num_rows:
            continue
        pending.append(table)
        held += table.num_rows
        while held >= size:
            joined = pa.concat_tables(pending)
            yield {name: joined.column(name).slice(0, size).combine_chunks() for name in names}
            rest = joined.slice(size)
            pending, held = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        joined = pa.concat_tables(pending)
        yield {name: joined.column(name).combine_chunks() for name in names}


class _ReadFailed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _read_ahead(chunks: Iterator[_Chunk]) -> Iterator[_Chunk]:
    """``chunks`` produced by a reader thread one chunk ahead of the caller.

    The reader spends its time in the database driver and in turning Python values into
    Arrow arrays; the caller's work on the previous chunk (Arrow kernels, JSON decoding,
    Parquet or CSV encoding) mostly runs without the GIL, so the two overlap. Only the
    reader touches the connection until it has stopped; at most three chunks are in memory
    (one being read, one waiting, one being written)."""
    import queue
    import threading

    handoff: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(end)
        except BaseException as exc:  # handed to the caller, raised there
            put(_ReadFailed(exc))

    reader = threading.Thread(target=run, name="safereview-export-reader", daemon=True)
    reader.start()
    try:
        while (item := handoff.get()) is not end:
            if isinstance(item, _ReadFailed):
                raise item.exc
            yield item
    finally:
        stop.set()
        reader.join()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # the reader stopped between chunks: close its cursor here


# ---------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------

_VERDICT_SUFFIXES = (("", _S), (".prob", _F), (".status", _S))
_VERDICT_READ = (("item_id", _I), ("k", _I), ("label", _S), ("probability", _F), ("status", _S))
_ITEM_DICTIONARY = (  # Parquet dictionary encoding for the columns whose values repeat
    "collection",
    "task_type",
    "category",
    "subcategory",
    "model",
    "input_modalities",
    "output_modalities",
    "import_source",
    "import_format",
    "judge_ids",
    *PROVENANCE_COLUMNS,
)


class _Verdicts:
    """The verdict columns of the items export, fixed before the first row from the (judge,
    dimension) pairs of the selected collections, and their values for a chunk."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        # pairs whose column names coincide (judge "a" dimension "b.c" and judge "a.b"
        # dimension "c") share the columns, as they always have
        self.groups: dict[str, list[int]] = {}
        for k, (judge, dim) in enumerate(pairs):
            self.groups.setdefault(f"verdict.{judge}.{dim}", []).append(k)
        # the type of each column (the last writer of a name in ``columns`` sets it)
        self.typed = {f"{base}{suffix}": typ for base in self.groups for suffix, typ in _VERDICT_SUFFIXES}
        self.names = sorted(self.typed)
        self.judges = sorted({judge for judge, _ in pairs})
        self.judge_pairs = {j: [k for k, (judge, _) in enumerate(pairs) if judge == j] for j in self.judges}
        params: dict[str, Any] = {}
        whens = []
        for k, (judge, dim) in enumerate(pairs):
            params[f"j{k}"], params[f"d{k}"] = judge, dim
            whens.append(f"WHEN judge_id = :j{k} AND dimension = :d{k} THEN {k}")
        self.params = params
        self.sql = (
            "SELECT item_id, k, label, probability, status FROM (SELECT item_id, label, probability, status, "
            f"CASE {' '.join(whens)} END AS k FROM verdict WHERE item_id BETWEEN :lo AND :hi) AS v "
            "WHERE k IS NOT NULL"
        )

    def types(self) -> list[tuple[str, pa.DataType]]:
        return [(name, self.typed[name]) for name in self.names]

    def read(self, reader: _Reader, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, list[pa.Array]] | None:
        """The verdicts of the items with ids from ``lo`` to ``hi``: item ids, pair numbers,
        and labels, probabilities and statuses."""
        if not self.pairs:
            return None
        cols = reader.arrays(self.sql, {**self.params, "lo": lo, "hi": hi}, _VERDICT_READ)
        values = [cols["label"], cols["probability"], cols["status"]]
        return cols["item_id"].to_numpy(), cols["k"].to_numpy(), values

    def columns(self, ids: np.ndarray, read: Any) -> tuple[pa.Array, dict[str, pa.Array]]:
        """judge_ids and the verdict columns for the chunk of items ``ids`` (ascending)."""
        n = len(ids)
        if read is None or n == 0:
            return _repeat("", n), {name: pa.nulls(n, typ) for name, typ in self.types()}
        item_arr, k_arr, values = read
        pos = np.minimum(np.searchsorted(ids, item_arr), n - 1)
        member = ids[pos] == item_arr  # verdicts of other collections' items in the id range
        out: dict[str, pa.Array] = {}
        for base, ks in self.groups.items():
            sel = member & np.isin(k_arr, ks)
            idx = np.full(n, -1, dtype=np.int64)
            idx[pos[sel]] = np.nonzero(sel)[0]
            take = pa.array(idx, mask=idx < 0)
            for (suffix, _typ), column in zip(_VERDICT_SUFFIXES, values, strict=True):
                out[base + suffix] = pc.take(column, take)
        pieces = []
        for judge in self.judges:
            present = np.zeros(n, dtype=bool)
            present[pos[member & np.isin(k_arr, self.judge_pairs[judge])]] = True
            pieces.append(pc.if_else(pa.array(present), judge + ";", ""))
        judge_ids = pc.utf8_slice_codeunits(pc.binary_join_element_wise(*pieces, ""), 0, -1)  # no trailing ";"
        return judge_ids, out


# The items query's columns in order, with their Arrow types (booleans and times: see _read_types).
_ITEM_READ: tuple[tuple[str, pa.DataType], ...] = (
    ("item_id", _I),
    ("external_id", _S),
    ("task_type", _S),
    ("category", _S),
    ("subcategory", _S),
    ("model", _S),
    ("input_modalities", _S),
    ("output_modalities", _S),
    ("prompt_json", _S),
    ("response_json", _S),
    ("refused", _B),
    ("meta_json", _S),
    ("content_hash", _S),
    ("priority", _F),
    ("slots_taken", _I),
    ("created_at", _S),
    ("import_batch_id", _I),
)


class _ItemExport:
    """Plan and chunks of the items export: one row per item, verdicts spread into columns."""

    def __init__(self, reader: _Reader, collections: Iterable[str] | None) -> None:
        self.prov = _provenance(reader)
        self.reader = reader
        self.cmap = _collection_filter(reader, collections)
        self.spans = {cid: span for cid in self.cmap if (span := _item_range(reader, cid)) is not None}
        self.verdicts = _Verdicts(sorted({pair for cid, span in self.spans.items() for pair in self._pairs(cid, span)}))
        self.read_types = _read_types(_ITEM_READ, self.reader)
        batches = self.reader.all("SELECT id, source, format FROM importbatch")
        self.sources = {bid: src for bid, src, _ in batches}
        self.formats = {bid: fmt for bid, _, fmt in batches}
        fields = [*ITEM_COLUMNS, *self.verdicts.types(), *((p, _S) for p in PROVENANCE_COLUMNS)]
        self.schema = pa.schema(fields)
        self.dictionary = tuple(_ITEM_DICTIONARY) + tuple(
            name for name in self.verdicts.names if not name.endswith(".prob")
        )

    def _pairs(self, cid: int, span: tuple[int, int]) -> set[tuple[str, str]]:
        """The (judge, dimension) pairs of the verdicts on collection ``cid``'s items: from the
        verdict key's index over the collection's id span when no other collection's item
        lies in it (1M items: 0.1 s), else through the join with the items (0.5–0.7 s)."""
        params = {"cid": cid, "lo": span[0], "hi": span[1]}
        mixed = self.reader.all(
            "SELECT 1 FROM item WHERE id BETWEEN :lo AND :hi AND collection_id <> :cid LIMIT 1", params
        )
        sql = (
            "SELECT DISTINCT v.judge_id, v.dimension FROM verdict v JOIN item i ON i.id = v.item_id "
            "WHERE i.collection_id = :cid AND v.item_id BETWEEN :lo AND :hi"
            if mixed
            else "SELECT DISTINCT judge_id, dimension FROM verdict WHERE item_id BETWEEN :lo AND :hi"
        )
        return {(str(j), str(d)) for j, d in self.reader.all(sql, params)}

    def query(self) -> str:
        r = self.reader
        return (
            "SELECT i.id, i.external_id, i.task_type, i.category, i.subcategory, i.model, i.input_modalities, "
            f"i.output_modalities, {r.text('i.prompt')}, {r.text('i.response')}, i.refused, {r.text('i.meta')}, "
            f"i.content_hash, i.priority, i.slots_taken, {r.iso('i.created_at')}, i.import_batch_id "
            f"FROM item i WHERE {_where_collection(r, 'i')} ORDER BY i.id LIMIT :size"
        )

    def chunks(self) -> Iterator[_Chunk]:
        """The reader thread's part: rows in Arrow arrays, and their verdicts."""
        sql = self.query()
        for cid, name in self.cmap.items():
            span = self.spans.get(cid)
            if span is None:
                continue
            params = {"cid": cid, "lo": span[0], "hi": span[1]}
            for arrays, rows in self.reader.pages(sql, params, self.read_types):
                ids = arrays["item_id"]
                extra = self.verdicts.read(self.reader, ids[0].as_py(), ids[-1].as_py())
                yield _Chunk(name, arrays, rows, extra)

    def tables(self) -> Iterator[pa.Table]:
        for chunk in _read_ahead(self.chunks()):
            yield self.table(chunk)

    def table(self, chunk: _Chunk) -> pa.Table:
        """The caller's part: the chunk's export columns, by Arrow kernels."""
        n, a = chunk.n, chunk.arrays
        raw = partial(chunk.raw, columns=self.read_types)
        texts = _item_parts(a["prompt_json"], a["response_json"], lambda: (raw("prompt_json"), raw("response_json")))
        if self.reader.pg:
            created = _iso_from_micros(a["created_at"])
        else:
            created = _sqlite_datetime_iso(a["created_at"], Item.__table__.c.created_at, self.reader.dialect)  # type: ignore[attr-defined]
        judge_ids, vcols = self.verdicts.columns(a["item_id"].to_numpy(), chunk.extra)
        columns: dict[str, Any] = {
            **a,
            "collection": _repeat(chunk.collection, n),
            "prompt_text": texts[0],
            "prompt_media": texts[1],
            "response_text": texts[2],
            "response_media": texts[3],
            "refused": _bools(a["refused"]),
            "created_at": created,
            "import_source": _lookup(a["import_batch_id"], self.sources),
            "import_format": _lookup(a["import_batch_id"], self.formats),
            "judge_ids": judge_ids,
            **vcols,
        }
        for k, v in self.prov.items():
            columns[k] = _repeat(v, n)
        return pa.table([columns[f.name] for f in self.schema], schema=self.schema)


# ---------------------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------------------

_ANNOTATION_READ: tuple[tuple[str, pa.DataType], ...] = (
    ("item_id", _I),
    ("external_id", _S),
    ("task_type", _S),
    ("category", _S),
    ("model", _S),
    ("annotator", _S),
    ("annotator_role", _S),
    ("categories_json", _S),
    ("rationale", _S),
    ("flagged", _B),
    ("verdict_action", _S),
    ("verdict_judge_id", _S),
    ("time_spent_s", _F),
    ("source", _S),
    ("version", _I),
    ("created_at", _S),
    ("updated_at", _S),
    ("import_batch_id", _I),
    ("labels_json", _S),
    ("blind_json", _S),
)

# What the annotations query reads itself, and the columns the export takes from the item
# and the annotator (joined by the export, see _AnnotationExport.window).
_ANNOTATION_OWN: tuple[tuple[str, pa.DataType], ...] = (
    ("item_id", _I),
    ("user_id", _I),
    *_ANNOTATION_READ[7:],
)
_ANNOTATION_ITEM: tuple[tuple[str, pa.DataType], ...] = (("item_id", _I), *_ANNOTATION_READ[1:5])
_USER_READ: tuple[tuple[str, pa.DataType], ...] = (("id", _I), ("annotator", _S), ("annotator_role", _S))


class _AnnotationExport:
    """Plan and chunks of the annotations export: one row per (item, annotator)."""

    def __init__(self, reader: _Reader, collections: Iterable[str] | None) -> None:
        self.prov = _provenance(reader)
        self.reader = reader
        self.dialect = reader.dialect
        self.cmap = _collection_filter(reader, collections)
        self.dims = self._dimensions() if self.cmap else []
        self.batches = {bid: src for bid, src in self.reader.all("SELECT id, source FROM importbatch")}
        self.read_types = _read_types(_ANNOTATION_READ, self.reader)
        self.own_types = _read_types(_ANNOTATION_OWN, self.reader)
        self.users = self.reader.arrays('SELECT id, username, role FROM "user" ORDER BY id', {}, _USER_READ)
        labels = [f"label.{d}" for d in self.dims] + [f"blind.{d}" for d in self.dims]
        fields = [*ANNOTATION_COLUMNS, *((name, _S) for name in labels), *((p, _S) for p in PROVENANCE_COLUMNS)]
        self.schema = pa.schema(fields)
        self.dictionary = (
            "collection",
            "task_type",
            "category",
            "model",
            "annotator",
            "annotator_role",
            "categories",
            "verdict_action",
            "verdict_judge_id",
            "source",
            "import_source",
            *labels,
            *PROVENANCE_COLUMNS,
        )

    def _dimensions(self) -> list[str]:
        """Every key of the final and blind labels in the selected collections, sorted."""
        cond, params = _in_list("i.collection_id", list(self.cmap), "c")
        if self.reader.pg:
            keys = "jsonb_object_keys(CASE WHEN jsonb_typeof(a.{0}) = 'object' THEN a.{0} ELSE '{{}}'::jsonb END) AS k"
            sql = " UNION ".join(
                f"SELECT DISTINCT k FROM annotation a JOIN item i ON i.id = a.item_id, {keys.format(col)} WHERE {cond}"
                for col in ("labels", "blind_labels")
            )
        else:
            sql = " UNION ".join(
                f"SELECT DISTINCT j.key FROM annotation a JOIN item i ON i.id = a.item_id, json_each(a.{col}) AS j "
                f"WHERE {cond} AND json_type(a.{col}) = 'object'"
                for col in ("labels", "blind_labels")
            )
        return sorted(str(k) for (k,) in self.reader.all(sql, params))

    def queries(self) -> tuple[str, str, str]:
        """The window's annotations (a range of the (item, user) key's index), and the
        collection's items in the window: all of them when the window spans at most
        2 × ``CHUNK_ROWS`` ids, else only those with annotations (1M annotations on as many
        items: 16 ms a window for the range, 69 ms with the restriction; a window of few
        annotations over many items would otherwise read them all). The export joins them
        and the annotators itself: on PostgreSQL the join, and the sort by annotator it
        needs, made the server the bound (1M annotations read in 3.8 s joined, 2.1 s apart,
        with the same client CPU)."""
        r = self.reader
        where = _where_collection(r, "i")
        items = f"SELECT i.id, i.external_id, i.task_type, i.category, i.model FROM item i WHERE {where}"
        return (
            f"SELECT a.item_id, a.user_id, {r.text('a.categories')}, a.rationale, a.flagged, a.verdict_action, "
            f"a.verdict_judge_id, a.time_spent_s, a.source, a.version, {r.iso('a.created_at')}, "
            f"{r.iso('a.updated_at')}, a.import_batch_id, {r.text('a.labels')}, {r.text('a.blind_labels')} "
            "FROM annotation a WHERE a.item_id BETWEEN :lo AND :hi",
            f"{items} ORDER BY i.id",
            f"{items} AND i.id IN (SELECT item_id FROM annotation WHERE item_id BETWEEN :lo AND :hi) ORDER BY i.id",
        )

    def window(self, own_sql: str, item_sqls: tuple[str, str], params: dict[str, Any]) -> pa.Table | None:
        """One window's rows in the export's order: by item, then by annotator name (byte
        order, as SQLite's and PostgreSQL's C collation sort; the database's own ORDER BY
        sorted by its collation until 2026-12-01), the item's and the annotator's columns
        taken beside each annotation. Annotations on other collections' items in the
        window's id range are left out."""
        own = self.reader.arrays(own_sql, params, self.own_types)
        dense = int(params["hi"]) - int(params["lo"]) < 2 * CHUNK_ROWS
        items = self.reader.arrays(item_sqls[0] if dense else item_sqls[1], params, _ANNOTATION_ITEM)
        item_ids, ann_items = items["item_id"].to_numpy(), own["item_id"].to_numpy()
        if not len(item_ids) or not len(ann_items):
            return None
        pos = np.minimum(np.searchsorted(item_ids, ann_items), len(item_ids) - 1)
        keep = np.nonzero(item_ids[pos] == ann_items)[0]
        pos = pos[keep]
        user_ids, ann_users = self.users["id"].to_numpy(), own["user_id"].to_numpy()[keep]
        users = np.minimum(np.searchsorted(user_ids, ann_users), max(len(user_ids) - 1, 0))
        if not len(user_ids) or not np.array_equal(user_ids[users], ann_users):  # the foreign key forbids it
            raise LookupError("export: an annotation names a user that is not in the database")
        columns: dict[str, pa.Array] = {}
        for name, _ in self.read_types:
            if name in own:
                columns[name] = own[name].take(keep)
            elif name in items:
                columns[name] = items[name].take(pos)
            else:
                columns[name] = self.users[name].take(users)
        table = pa.table(columns)
        return table.take(pc.sort_indices(table, [("item_id", "ascending"), ("annotator", "ascending")]))

    def chunks(self) -> Iterator[_Chunk]:
        own_sql, dense_sql, sparse_sql = self.queries()
        names = [c for c, _ in self.read_types]
        for cid, name in self.cmap.items():
            span = _item_range(self.reader, cid)
            if span is None:
                continue
            params = {"cid": cid, "lo": span[0], "hi": span[1]}
            windows = self.reader.windows(params, ("annotation", "item_id"))
            tables = (t for w in windows if (t := self.window(own_sql, (dense_sql, sparse_sql), w)) is not None)
            for arrays in _exact_chunks(tables, names):
                yield _Chunk(name, arrays, None)

    def tables(self) -> Iterator[pa.Table]:
        for chunk in _read_ahead(self.chunks()):
            yield self.table(chunk)

    def _labels(self, chunk: _Chunk) -> list[pa.Array]:
        """categories, then label.<dim> and blind.<dim> for every dimension."""
        a = chunk.arrays
        struct = pa.struct([(d, _S) for d in self.dims])
        fields = [("c", pa.list_(_S))] + ([("l", struct), ("b", struct)] if self.dims else [])
        cols = {"c": a["categories_json"]}
        if self.dims:
            cols |= {"l": a["labels_json"], "b": a["blind_json"]}
        table = _read_ndjson(_ndjson(**cols), pa.schema(fields), chunk.n)
        if table is not None:
            cats = pc.fill_null(pc.binary_join(table.column("c"), ";"), "")
            out = [pc.cast(cats, _S).combine_chunks()]
            for key in ("l", "b"):
                for d in self.dims:
                    out.append(pc.struct_field(table.column(key), [d]).combine_chunks())
            return out
        loads = json.loads  # the row-by-row rules
        raw = (chunk.raw(c, self.read_types) for c in ("labels_json", "blind_json", "categories_json"))
        labels, blinds, categories = raw
        rows_l = [(loads(v) if v is not None else None) or {} for v in labels]
        rows_b = [loads(v) if v is not None else None for v in blinds]
        cats_py = [";".join((loads(v) if v is not None else None) or []) for v in categories]
        out = [pa.array(cats_py, _S)]
        out += [pa.array([lab.get(d) for lab in rows_l], _S) for d in self.dims]
        out += [pa.array([b.get(d) if b else None for b in rows_b], _S) for d in self.dims]
        return out

    def table(self, chunk: _Chunk) -> pa.Table:
        n, a = chunk.n, chunk.arrays
        times = [a["created_at"], a["updated_at"]]
        if self.reader.pg:
            times = [_iso_from_micros(t) for t in times]
        else:
            at = Annotation.__table__  # type: ignore[attr-defined]
            cols = (at.c.created_at, at.c.updated_at)
            times = [_sqlite_datetime_iso(t, col, self.dialect) for t, col in zip(times, cols, strict=True)]
        label_cols = self._labels(chunk)
        columns = [
            _repeat(chunk.collection, n),
            *(a[c] for c, _ in ANNOTATION_COLUMNS[1:8]),
            label_cols[0],
            a["rationale"],
            _bools(a["flagged"]),
            *(a[c] for c, _ in ANNOTATION_COLUMNS[11:16]),
            *times,
            a["import_batch_id"],
            _lookup(a["import_batch_id"], self.batches),
            *label_cols[1:],
            *(_repeat(v, n) for v in self.prov.values()),
        ]
        return pa.table(columns, schema=self.schema)


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _json_fragments(column: pa.ChunkedArray) -> pa.Array:
    """Each value of ``column`` as ``json.dumps(value, ensure_ascii=False)`` writes it.

    Integers and booleans print the same in Arrow; text is escaped by Arrow kernels with
    the JSON encoder's own table; floats go through ``float.__repr__`` once per distinct
    value."""
    typ = column.type
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        out = pc.cast(column, _S)
    elif pa.types.is_null(typ):
        out = pa.nulls(len(column), _S)
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        out = _json_strings(pc.cast(column, pa.large_string()).combine_chunks())
    else:
        coded = column.dictionary_encode().combine_chunks()
        distinct = pa.array([_json_float(v) for v in coded.dictionary.to_pylist()], _S)
        out = pc.take(distinct, coded.indices)
    return pc.cast(pc.fill_null(out, "null"), pa.large_string())


_JSONL_SLICE = 10_000  # rows assembled into JSON lines at a time
_JSONL_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}  # see escape_line_breaks


def _json_strings(text: pa.LargeStringArray) -> pa.Array:
    """JSON string literals of ``text`` (nulls stay null), as the JSON encoder writes them
    with ``ensure_ascii=False`` (backslash, quote and control characters escaped by its
    ``ESCAPE_DCT``), and with U+2028, U+2029 and U+0085 escaped for JSON lines. The bytes
    present in the UTF-8 data tell which of them can occur (an ASCII byte is never part of
    a multi-byte character), so only those are replaced."""
    from json.encoder import ESCAPE_DCT

    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset : text.offset + len(text) + 1]
    data = text.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    present = {chr(b) for b in np.unique(raw[raw < 0x20])}
    present |= {c for c in '"\\' if (raw == ord(c)).any()}
    for char, escaped in ESCAPE_DCT.items():  # the backslash first: later escapes add backslashes
        if char in present:
            text = pc.replace_substring(text, char, escaped)
    if (raw == 0xE2).any() or (raw == 0xC2).any():  # lead bytes of U+2028/U+2029 and of U+0085
        for char, escaped in _JSONL_LINE_BREAKS.items():
            if pc.any(pc.match_substring(text, char)).as_py():
                text = pc.replace_substring(text, char, escaped)
    big = pa.large_string()
    return pc.binary_join_element_wise(pa.scalar('"', big), text, pa.scalar('"', big), pa.scalar("", big))


def _json_float(v: float) -> str:
    """``json.dumps`` of a float (NaN and the infinities as Python's encoder spells them)."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "Infinity" if v > 0 else "-Infinity"
    return float.__repr__(v)


def _jsonl_lines(table: pa.Table) -> pa.Buffer:
    """The rows of ``table`` as JSON lines, byte for byte what ``JSONEncoder(ensure_ascii=
    False).encode(row_dict)`` writes for each row, with U+2028, U+2029 and U+0085 escaped.
    The lines are assembled by an Arrow kernel from per-column fragments."""
    from json.encoder import encode_basestring

    big = pa.large_string()
    pieces: list[Any] = []
    for i, name in enumerate(table.column_names):
        key = escape_line_breaks(encode_basestring(name))
        pieces.append(pa.scalar(("{" if i == 0 else ", ") + key + ": ", big))
        pieces.append(_json_fragments(table.column(i)))
    pieces.append(pa.scalar("}\n", big))
    lines = pc.binary_join_element_wise(*pieces, pa.scalar("", big))
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset : lines.offset + len(lines) + 1]
    return lines.buffers()[2][int(offsets[0]) : int(offsets[-1])]


class _Sink:
    """Tables of one fixed schema written to ``out`` as they come, atomically: into a
    temporary file that is renamed into place when all went well, and removed otherwise.

    CSV text cells that would start a spreadsheet formula are defused unless ``raw_csv``
    (a machine pipeline that wants the exact bytes); JSONL escapes the line separators
    U+2028, U+2029 and U+0085, which ``str.splitlines()`` readers would break a row at."""

    def __init__(
        self, out: Path, fmt: str, schema: pa.Schema, *, raw_csv: bool = False, dictionary: Sequence[str] | None = None
    ) -> None:
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
        self.out, self.fmt, self.schema, self.raw_csv = Path(out), fmt, schema, raw_csv
        # Parquet: dictionary-encode these columns only (values that repeat; for unique
        # values such as texts and hashes the dictionary costs time and is dropped anyway)
        self.dictionary = list(dictionary) if dictionary is not None else True
        self.rows = 0
        self._writer: Any = None
        self._fh: Any = None

    def __enter__(self) -> _Sink:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.out.name}.", dir=self.out.parent)
        os.close(fd)
        self.tmp = Path(tmp_name)
        try:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(
                    self.tmp, self.schema, compression="zstd", use_dictionary=self.dictionary
                )
            elif self.fmt == "csv":
                import pyarrow.csv as pacsv

                self._writer = pacsv.CSVWriter(self.tmp, self.schema)
            else:
                self._fh = self.tmp.open("wb")
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        return self

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if self.fmt == "parquet":
            self._writer.write_table(table)
        elif self.fmt == "csv":
            self._writer.write_table(table if self.raw_csv else defuse(table))  # no cell runs as a formula
        else:  # in slices: the lines are assembled from a copy of every column
            for start in range(0, table.num_rows, _JSONL_SLICE):
                self._fh.write(memoryview(_jsonl_lines(table.slice(start, _JSONL_SLICE))))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            if self._fh is not None:
                self._fh.close()
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if exc_type is None:
            os.replace(self.tmp, self.out)
        else:
            self.tmp.unlink(missing_ok=True)


def write_table(columns: list[str], data: dict[str, list], out: Path, fmt: str, *, raw_csv: bool = False) -> int:
    """Write column-wise data to ``out`` atomically; return the row count (see ``_Sink``)."""
    table = pa.table({c: pa.array(data[c], type=_arrow_type(data[c])) for c in columns})
    with _Sink(Path(out), fmt, table.schema, raw_csv=raw_csv) as sink:
        sink.write(table)
    return sink.rows


def _arrow_type(values: list) -> Any:
    """An explicit type for all-null columns (pyarrow would pick 'null', which CSV readers dislike)."""
    for v in values:
        if v is not None:
            return None
    return pa.string()


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic GC while building large column lists (it rescans them repeatedly)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _export(kind: type, engine: sa.Engine, out: str | Path, fmt: str, collections: Any, raw_csv: bool) -> ExportResult:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    with _no_gc(), _snapshot(engine) as reader:
        plan = kind(reader, collections)
        with _Sink(Path(out), fmt, plan.schema, raw_csv=raw_csv, dictionary=plan.dictionary) as sink:
            for table in plan.tables():
                sink.write(table)
    return ExportResult(Path(out), fmt, sink.rows, plan.schema.names)


def _columns(kind: type, engine: sa.Engine, collections: Any) -> tuple[list[str], dict[str, list]]:
    with _no_gc(), _snapshot(engine) as reader:
        plan = kind(reader, collections)
        data: dict[str, list] = {name: [] for name in plan.schema.names}
        for table in plan.tables():
            for name, col in zip(plan.schema.names, table.columns, strict=True):
                data[name].extend(col.to_pylist())
    return list(data), data


def item_rows(engine: sa.Engine, *, collections: Iterable[str] | None = None) -> tuple[list[str], dict[str, list]]:
    """Column names and column-wise values of the items export (all in memory)."""
    return _columns(_ItemExport, engine, collections)


def annotation_rows(
    engine: sa.Engine, *, collections: Iterable[str] | None = None
) -> tuple[list[str], dict[str, list]]:
    """Column names and values of the annotations export: one row per (item, annotator)."""
    return _columns(_AnnotationExport, engine, collections)


def export_items(
    engine: sa.Engine,
    out: str | Path,
    fmt: str = "parquet",
    *,
    collections: Iterable[str] | None = None,
    raw_csv: bool = False,
) -> ExportResult:
    """Items with their verdicts, one row per item, verdict columns ``verdict.<judge>.<dim>``."""
    return _export(_ItemExport, engine, out, fmt, collections, raw_csv)


def export_annotations(
    engine: sa.Engine,
    out: str | Path,
    fmt: str = "parquet",
    *,
    collections: Iterable[str] | None = None,
    raw_csv: bool = False,
) -> ExportResult:
    """Every annotation, one row per (item, annotator), with blind and final labels."""
    return _export(_AnnotationExport, engine, out, fmt, collections, raw_csv)


def format_from_path(path: str | Path, fmt: str | None) -> str:
    """``--format`` if given, else the output file's extension."""
    if fmt:
        return fmt.lower()
    ext = Path(path).suffix.lower().lstrip(".")
    if ext in EXPORT_FORMATS:
        return ext
    raise ValueError(f"cannot tell the export format from {path!s}; pass --format jsonl|csv|parquet")
