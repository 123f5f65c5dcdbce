"""Export items (with verdicts) and annotations to JSONL, CSV or Parquet.

Every row carries provenance columns (``exported_at``, ``safereview_version``,
``schema_revision``, the import batch and source file, the judge ids involved) so an
exported file can always be traced back to the database state it came from. Data are read
with a few set-based queries and written column-wise with pyarrow, so 100k rows take a
couple of seconds. Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from safereview.dataio.spreadsheet import defuse, escape_line_breaks
from safereview.db.models import Annotation, Collection, ImportBatch, Item, User, Verdict, utcnow

EXPORT_FORMATS = ("jsonl", "csv", "parquet")


@dataclass
class ExportResult:
    path: Path
    format: str
    rows: int
    columns: list[str]


def _provenance(engine: sa.Engine) -> dict[str, Any]:
    from safereview import __version__
    from safereview.db.engine import schema_revision

    return {
        "exported_at": utcnow().isoformat(),
        "safereview_version": __version__,
        "schema_revision": schema_revision(engine) or "",
    }


def _collection_filter(conn: sa.Connection, names: Iterable[str] | None) -> dict[int, str]:
    ct = Collection.__table__  # type: ignore[attr-defined]
    stmt = sa.select(ct.c.id, ct.c.name)
    names = list(names or [])
    if names:
        stmt = stmt.where(ct.c.name.in_(names))
    found = {cid: name for cid, name in conn.execute(stmt)}
    missing = set(names) - set(found.values())
    if missing:
        raise LookupError(f"no collection named {', '.join(sorted(missing))}")
    return found


def _parts_text(parts: list[dict[str, Any]] | None) -> str:
    return "\n\n".join(p.get("text", "") for p in parts or [] if p.get("modality") == "text")


def _parts_media(parts: list[dict[str, Any]] | None) -> str:
    return ";".join(f"{p['modality']}:{p.get('media', '')}" for p in parts or [] if p.get("modality") != "text")


def _iso(v: Any) -> str | None:
    return v.isoformat() if v is not None else None


def _sqlite_iso(v: str | None) -> str | None:
    return v.replace(" ", "T", 1) + "+00:00" if v else None


def item_rows(engine: sa.Engine, *, collections: Iterable[str] | None = None) -> tuple[list[str], dict[str, list]]:
    """Column names and column-wise values of the items export."""
    it = Item.__table__  # type: ignore[attr-defined]
    vt = Verdict.__table__  # type: ignore[attr-defined]
    bt = ImportBatch.__table__  # type: ignore[attr-defined]
    prov = _provenance(engine)
    base = [
        "collection",
        "item_id",
        "external_id",
        "task_type",
        "category",
        "subcategory",
        "model",
        "input_modalities",
        "output_modalities",
        "prompt_text",
        "prompt_media",
        "response_text",
        "response_media",
        "refused",
        "prompt_json",
        "response_json",
        "meta_json",
        "content_hash",
        "priority",
        "slots_taken",
        "created_at",
        "import_batch_id",
        "import_source",
        "import_format",
    ]
    cols: dict[str, list] = {c: [] for c in base}
    with engine.connect() as conn:
        cmap = _collection_filter(conn, collections)
        if not cmap:
            return [*base, "judge_ids", *prov], {**cols, "judge_ids": [], **{k: [] for k in prov}}
        batches = {bid: (src, fmt) for bid, src, fmt in conn.execute(sa.select(bt.c.id, bt.c.source, bt.c.format))}
        index: dict[int, int] = {}
        # SQLite keeps UTC times as text "YYYY-MM-DD HH:MM:SS.ffffff": reformat it instead of parsing
        sqlite = conn.dialect.name == "sqlite"
        created = sa.cast(it.c.created_at, sa.Text).label("created_at") if sqlite else it.c.created_at
        iso = _sqlite_iso if sqlite else _iso
        # JSON columns are read as their stored text: parsed once for the text/media columns and
        # passed through unchanged as prompt_json/response_json/meta_json (no re-serialising).
        stmt = (
            sa.select(
                it.c.id,
                it.c.collection_id,
                it.c.external_id,
                it.c.task_type,
                it.c.category,
                it.c.subcategory,
                it.c.model,
                it.c.input_modalities,
                it.c.output_modalities,
                sa.cast(it.c.prompt, sa.Text).label("prompt"),
                sa.cast(it.c.response, sa.Text).label("response"),
                it.c.refused,
                sa.cast(it.c.meta, sa.Text).label("meta"),
                it.c.content_hash,
                it.c.priority,
                it.c.slots_taken,
                created,
                it.c.import_batch_id,
            )
            .where(it.c.collection_id.in_(list(cmap)))
            .order_by(it.c.collection_id, it.c.id)
        )
        loads = json.loads
        tuples: list[tuple[Any, ...]] = []
        for n, r in enumerate(conn.execute(stmt).all()):
            index[r.id] = n
            src, fmt = batches.get(r.import_batch_id, (None, None))
            prompt, response = loads(r.prompt or "[]"), loads(r.response or "[]")
            values = (
                cmap[r.collection_id],
                r.id,
                r.external_id,
                r.task_type,
                r.category,
                r.subcategory,
                r.model,
                r.input_modalities,
                r.output_modalities,
                _parts_text(prompt),
                _parts_media(prompt),
                _parts_text(response),
                _parts_media(response),
                bool(r.refused),
                r.prompt,
                r.response,
                r.meta,
                r.content_hash,
                r.priority,
                r.slots_taken,
                iso(r.created_at),
                r.import_batch_id,
                src,
                fmt,
            )
            tuples.append(values)
        n_rows = len(index)
        if tuples:
            for c, column in zip(base, zip(*tuples, strict=True), strict=True):
                cols[c] = list(column)
        judge_sets: list[set[str] | None] = [None] * n_rows
        vcols: dict[str, list] = {}
        vstmt = (
            sa.select(vt.c.item_id, vt.c.judge_id, vt.c.dimension, vt.c.label, vt.c.probability, vt.c.status)
            .select_from(vt.join(it, it.c.id == vt.c.item_id))
            .where(it.c.collection_id.in_(list(cmap)))
        )
        targets: dict[tuple[str, str], tuple[list, list, list]] = {}
        for item_id, judge, dim, label, prob, status in conn.execute(vstmt).all():
            row = index.get(item_id)
            if row is None:
                continue
            t = targets.get((judge, dim))
            if t is None:
                t = targets[(judge, dim)] = tuple(  # type: ignore[assignment]
                    vcols.setdefault(f"verdict.{judge}.{dim}{suffix}", [None] * n_rows)
                    for suffix in ("", ".prob", ".status")
                )
            t[0][row], t[1][row], t[2][row] = label, prob, status
            s = judge_sets[row]
            if s is None:
                judge_sets[row] = {judge}
            else:
                s.add(judge)
    cols["judge_ids"] = [";".join(sorted(s)) if s else "" for s in judge_sets]
    for key in sorted(vcols):
        cols[key] = vcols[key]
    for k, v in prov.items():
        cols[k] = [v] * n_rows
    return list(cols), cols


def annotation_rows(
    engine: sa.Engine, *, collections: Iterable[str] | None = None
) -> tuple[list[str], dict[str, list]]:
    """Column names and values of the annotations export: one row per (item, annotator)."""
    at = Annotation.__table__  # type: ignore[attr-defined]
    it = Item.__table__  # type: ignore[attr-defined]
    ut = User.__table__  # type: ignore[attr-defined]
    bt = ImportBatch.__table__  # type: ignore[attr-defined]
    prov = _provenance(engine)
    base = [
        "collection",
        "item_id",
        "external_id",
        "task_type",
        "category",
        "model",
        "annotator",
        "annotator_role",
        "categories",
        "rationale",
        "flagged",
        "verdict_action",
        "verdict_judge_id",
        "time_spent_s",
        "source",
        "version",
        "created_at",
        "updated_at",
        "import_batch_id",
        "import_source",
    ]
    rows: list[tuple[Any, ...]] = []
    labels: list[dict[str, str]] = []
    blinds: list[dict[str, str] | None] = []
    with engine.connect() as conn:
        cmap = _collection_filter(conn, collections)
        batches = {bid: src for bid, src in conn.execute(sa.select(bt.c.id, bt.c.source))}
        if cmap:
            stmt = (
                sa.select(
                    it.c.collection_id,
                    it.c.id,
                    it.c.external_id,
                    it.c.task_type,
                    it.c.category,
                    it.c.model,
                    ut.c.username,
                    ut.c.role,
                    at.c.categories,
                    at.c.rationale,
                    at.c.flagged,
                    at.c.verdict_action,
                    at.c.verdict_judge_id,
                    at.c.time_spent_s,
                    at.c.source,
                    at.c.version,
                    at.c.created_at,
                    at.c.updated_at,
                    at.c.import_batch_id,
                    at.c.labels,
                    at.c.blind_labels,
                )
                .select_from(at.join(it, it.c.id == at.c.item_id).join(ut, ut.c.id == at.c.user_id))
                .where(it.c.collection_id.in_(list(cmap)))
                .order_by(it.c.collection_id, it.c.id, ut.c.username)
            )
            for r in conn.execute(stmt).all():
                rows.append(
                    (
                        cmap[r.collection_id],
                        r.id,
                        r.external_id,
                        r.task_type,
                        r.category,
                        r.model,
                        r.username,
                        r.role,
                        ";".join(r.categories or []),
                        r.rationale,
                        bool(r.flagged),
                        r.verdict_action,
                        r.verdict_judge_id,
                        r.time_spent_s,
                        r.source,
                        r.version,
                        _iso(r.created_at),
                        _iso(r.updated_at),
                        r.import_batch_id,
                        batches.get(r.import_batch_id),
                    )
                )
                labels.append(r.labels or {})
                blinds.append(r.blind_labels)
    cols: dict[str, list] = {c: [r[i] for r in rows] for i, c in enumerate(base)}
    dims = sorted({d for lab in labels for d in lab} | {d for b in blinds if b for d in b})
    for d in dims:
        cols[f"label.{d}"] = [lab.get(d) for lab in labels]
    for d in dims:
        cols[f"blind.{d}"] = [b.get(d) if b else None for b in blinds]
    for k, v in prov.items():
        cols[k] = [v] * len(rows)
    return list(cols), cols


def write_table(columns: list[str], data: dict[str, list], out: Path, fmt: str, *, raw_csv: bool = False) -> int:
    """Write column-wise data to ``out`` atomically; return the row count.

    CSV text cells that would start a spreadsheet formula are defused unless ``raw_csv``
    (a machine pipeline that wants the exact bytes); JSONL escapes the line separators
    U+2028, U+2029 and U+0085, which ``str.splitlines()`` readers would break a row at."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    import pyarrow as pa

    n = len(data[columns[0]]) if columns else 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "jsonl":
            plain = json.JSONEncoder(ensure_ascii=False).encode  # built once, not per row

            def encode(obj: Any) -> str:
                return escape_line_breaks(plain(obj))

            with tmp.open("w", encoding="utf-8") as fh:
                lines = []
                for row in zip(*(data[c] for c in columns), strict=True):
                    lines.append(encode(dict(zip(columns, row, strict=True))))
                    if len(lines) >= 10_000:
                        fh.write("\n".join(lines) + "\n")
                        lines.clear()
                if lines:
                    fh.write("\n".join(lines) + "\n")
        else:
            table = pa.table({c: pa.array(data[c], type=_arrow_type(data[c])) for c in columns})
            if fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(table, tmp, compression="zstd")
            else:
                import pyarrow.csv as pacsv

                pacsv.write_csv(table if raw_csv else defuse(table), tmp)  # no cell runs as a formula
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _arrow_type(values: list) -> Any:
    """An explicit type for all-null columns (pyarrow would pick 'null', which CSV readers dislike)."""
    import pyarrow as pa

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


def export_items(
    engine: sa.Engine,
    out: str | Path,
    fmt: str = "parquet",
    *,
    collections: Iterable[str] | None = None,
    raw_csv: bool = False,
) -> ExportResult:
    """Items with their verdicts, one row per item, verdict columns ``verdict.<judge>.<dim>``."""
    with _no_gc():
        columns, data = item_rows(engine, collections=collections)
        n = write_table(columns, data, Path(out), fmt, raw_csv=raw_csv)
    return ExportResult(Path(out), fmt, n, columns)


def export_annotations(
    engine: sa.Engine,
    out: str | Path,
    fmt: str = "parquet",
    *,
    collections: Iterable[str] | None = None,
    raw_csv: bool = False,
) -> ExportResult:
    """Every annotation, one row per (item, annotator), with blind and final labels."""
    with _no_gc():
        columns, data = annotation_rows(engine, collections=collections)
        n = write_table(columns, data, Path(out), fmt, raw_csv=raw_csv)
    return ExportResult(Path(out), fmt, n, columns)


def format_from_path(path: str | Path, fmt: str | None) -> str:
    """``--format`` if given, else the output file's extension."""
    if fmt:
        return fmt.lower()
    ext = Path(path).suffix.lower().lstrip(".")
    if ext in EXPORT_FORMATS:
        return ext
    raise ValueError(f"cannot tell the export format from {path!s}; pass --format jsonl|csv|parquet")
