"""One entry point for every import: :func:`import_file`.

Formats (see docs/import.md): ``generic`` (JSONL, CSV, Parquet), ``uni-safebench`` (release
JSONL) and ``vlsu`` (release CSV); ``auto`` picks one from the extension and the first row.
Bad input never half-imports: by default the whole file is one transaction and any
problem leaves the database exactly as it was.

The file streams through in chunks of :data:`CHUNK_ROWS` rows, so memory stays bounded
whatever its size; each chunk goes through one module per job, in this order:

- ``parse``: rows into :class:`~.records.Record` objects (format modules ``generic``,
  ``unisafebench``, ``vlsu``, ``inspect_log``; readers in ``records``);
- ``validate``: every record against the taxonomy, the limits and the media folder;
- ``plan``: in the write transaction, what is new, unchanged, changed or in conflict
  (an :class:`~.plan.ImportPlan` per chunk from one :class:`~.plan.Planner`);
- ``write``: the plan carried out in bulk (people, slots and assignments through
  ``workflow.auth`` and ``workflow.queue``);
- ``report``: the :class:`ImportReport`, its ``FILE:LINE: field: message`` lines and the
  rejects file.

Once a row is bad (and ``--skip-invalid`` is not given) nothing more is written: the rest
of the file is still read and checked, so the report names every bad row, and the
transaction is rolled back.
"""

from __future__ import annotations

import gc
import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from safereview import settings
from safereview.dataio.importers.options import Options
from safereview.dataio.importers.parse import FORMATS, FileProblem, detect_format, iter_records
from safereview.dataio.importers.plan import Planner
from safereview.dataio.importers.records import Record
from safereview.dataio.importers.report import ImportFailed, ImportReport, messages, reset_counts, write_rejects
from safereview.dataio.importers.taxonomy_index import TaxonomyIndex
from safereview.dataio.importers.validate import Validator
from safereview.dataio.importers.write import Writer, cleanup_files
from safereview.db import deployment
from safereview.db import taxonomy as taxmod
from safereview.db.bulk import sqlite_cache
from safereview.db.collections import ensure_collection
from safereview.db.models import Collection, Taxonomy
from safereview.workflow.policies import require

__all__ = ["FORMATS", "ImportFailed", "ImportReport", "detect_format", "import_file"]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _config_for(engine: sa.Engine) -> settings.Config:
    return settings.load(db_url=engine.url.render_as_string(hide_password=False))


def import_file(
    engine: sa.Engine,
    path: str | Path,
    *,
    format: str | None = None,
    collection: str,
    taxonomy: str | dict[str, Any] | None = None,
    task_type: str | None = None,
    media_dir: str | Path | None = None,
    model: str | None = None,
    skip_invalid: bool = False,
    rejects_path: str | Path | None = None,
    actor: Any,
    user: str = "",
    update: bool = False,
    media_root: str | Path | None = None,
    config: settings.Config | None = None,
    append_rejects: bool = False,
    score_map: str | Path | None = None,
) -> ImportReport:
    """Validate and import one file into ``collection``; see docs/import.md.

    ``actor`` must be allowed to ``import`` (an admin, or the CLI's system principal); the
    batch and any annotation events it writes record ``user`` or, without it, the actor's
    name.

    ``taxonomy`` is a preset name, a taxonomy file or a spec; it may be omitted for an
    existing collection. ``media_dir`` (default: the file's folder) is where relative media
    paths are resolved; ``media_root`` (default: the configured one) is where media are
    stored. Returns a report; ``report.ok`` is False (and nothing was written) when any
    row is bad, unless ``skip_invalid`` is set, in which case bad rows are written to
    ``rejects_path`` (default ``<file>.rejects.jsonl``) and the rest is imported.
    ``score_map`` (Inspect logs) maps scorers' values to labels (``inspect_log.ScoreMap``).
    """
    # Bulk import builds many small objects; the cyclic GC rescanning them all again and again
    # made large imports super-linear. Nothing here creates reference cycles that need it.
    require(actor, "import")
    user = user or actor.username
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _import_file(
            engine,
            path,
            format=format,
            collection=collection,
            taxonomy=taxonomy,
            task_type=task_type,
            media_dir=media_dir,
            model=model,
            skip_invalid=skip_invalid,
            rejects_path=rejects_path,
            user=user,
            actor_id=getattr(actor, "id", None),
            update=update,
            media_root=media_root,
            config=config,
            append_rejects=append_rejects,
            score_map=Path(score_map) if score_map else None,
        )
    finally:
        if gc_was_enabled:
            gc.enable()


def _import_file(
    engine: sa.Engine,
    path: str | Path,
    *,
    format: str | None,
    collection: str,
    taxonomy: str | dict[str, Any] | None,
    task_type: str | None,
    media_dir: str | Path | None,
    model: str | None,
    skip_invalid: bool,
    rejects_path: str | Path | None,
    user: str,
    actor_id: int | None,
    update: bool,
    media_root: str | Path | None,
    config: settings.Config | None,
    append_rejects: bool,
    score_map: Path | None,
) -> ImportReport:
    started = time.perf_counter()
    path = Path(path)
    label = str(path)
    report = ImportReport(source=label, collection=collection)
    cfg = config or _config_for(engine)
    root = Path(media_root).resolve() if media_root else deployment.media_root(cfg, engine)

    def fail(msg: str) -> ImportReport:
        report.errors.append(msg)
        report.seconds = time.perf_counter() - started
        return report

    if not path.is_file():
        return fail(f"{label}: (file): not found")
    try:
        fmt = (format or "auto").lower()
        if fmt not in FORMATS:
            return fail(f"{label}: --format: expected one of {', '.join(FORMATS)}, got {format!r}")
        if fmt == "auto":
            fmt = detect_format(path)
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    report.format = fmt

    # The taxonomy: the collection's own when it exists, else the one given.
    try:
        spec = _taxonomy_for(engine, collection, taxonomy)
    except (taxmod.TaxonomyError, ValueError, LookupError) as exc:
        return fail(f"{label}: taxonomy: {exc}")
    tax = TaxonomyIndex(spec)

    mdir = Path(media_dir) if media_dir else path.parent
    if media_dir and not mdir.is_dir():
        return fail(f"{label}: --media-dir: not a folder: {mdir}")
    suffix = path.suffix.lower()
    opts = Options(
        file_label=label,
        fmt=f"{fmt}-{suffix.lstrip('.') or 'file'}" if fmt == "generic" else fmt,
        media_dir=mdir,
        media_root=root,
        max_image_pixels=cfg.max_image_pixels,
        max_text_chars=cfg.max_text_chars,
        update=update,
        skip_invalid=skip_invalid,
        task_type=task_type,
        model=model,
        location_note=" (parquet row index, 0-based)" if suffix == ".parquet" else "",
        id_by_task_type=fmt == "uni-safebench",
        max_rows=cfg.max_import_rows,
        score_map=score_map,
    )
    try:
        return _run(engine, path, fmt, spec, tax, opts, report, started, rejects_path, user, actor_id, append_rejects)
    finally:
        for folder in opts.scratch:  # media an Inspect log embedded, already copied into the media root
            shutil.rmtree(folder, ignore_errors=True)


def _run(
    engine: sa.Engine,
    path: Path,
    fmt: str,
    spec: dict[str, Any],
    tax: TaxonomyIndex,
    opts: Options,
    report: ImportReport,
    started: float,
    rejects_path: str | Path | None,
    user: str,
    actor_id: int | None,
    append_rejects: bool,
) -> ImportReport:
    """Parse, validate, plan and write (``_import_file`` has set everything up)."""
    label, collection, root = opts.file_label, report.collection, opts.media_root
    task_type, update, skip_invalid = opts.task_type, opts.update, opts.skip_invalid

    def fail(msg: str) -> ImportReport:
        report.errors.append(msg)
        report.seconds = time.perf_counter() - started
        return report

    if task_type and tax.task_types and tax.task_type(task_type) is None:
        known = ", ".join(t["id"] for t in spec["task_types"])
        return fail(f"{label}: --task-type: unknown task type {task_type!r}; known: {known}")

    # ---- read, check, plan and write, chunk by chunk: one transaction ----------------
    validator = Validator(tax, opts)
    bad: list[Record] = []  # rows that failed parsing or validation
    late_rejects: list[Record] = []  # rows in conflict with what is stored
    created: list[Path] = []
    try:
        with engine.begin() as conn, sqlite_cache(conn, SQLITE_IMPORT_CACHE_MIB):
            session = Session(bind=conn, expire_on_commit=False)
            planner: Planner | None = None
            writer: Writer | None = None
            writing = True  # False once the import is bound to fail: the rest is only checked
            for chunk in _chunks(iter_records(path, fmt, tax, opts, report), CHUNK_ROWS):
                good = []
                for rec in chunk:
                    if not rec.errors:
                        validator.record(rec)
                    (bad if rec.errors else good).append(rec)
                if bad and not skip_invalid:
                    writing = False
                    continue  # a file with bad rows reports those, not conflicts
                if writer is None:
                    try:
                        col = ensure_collection(session, collection, spec)
                    except ValueError as exc:  # same-named taxonomy with another definition, etc.
                        report.errors.append(f"{label}: taxonomy: {exc}")
                        raise _Rollback from None
                    session.flush()
                    assert col.id is not None
                    planner = Planner(conn, collection_id=col.id, update=update, item_lines=validator.seen_ids)
                    writer = Writer(
                        conn,
                        session,
                        collection_id=col.id,
                        opts=opts,
                        report=report,
                        source_sha256=_file_sha256(path),
                        user=user,
                        actor_id=actor_id,
                        created_files=created,
                        spec=spec,
                    )
                assert planner is not None
                todo = planner.chunk(good)
                late_rejects.extend(todo.rejected)
                if todo.rejected and not skip_invalid:
                    writing = False
                if writing:
                    writer.chunk(todo)
            if planner is not None and writer is not None and not (bad and not skip_invalid):
                todo = planner.finish(written=writing)
                late_rejects.extend(todo.rejected)
                if todo.rejected and not skip_invalid:
                    writing = False
                if writing:
                    writer.chunk(todo)
            if (bad or late_rejects) and not skip_invalid:
                raise _Rollback
            if writer is not None:
                writer.finish(n_rejected=len(bad) + len(late_rejects))
            session.close()
    except _Rollback:
        cleanup_files(engine, created)
        report.errors.extend(messages(bad if bad else late_rejects, opts))
        reset_counts(report)
        report.seconds = time.perf_counter() - started
        return report
    except FileProblem as exc:
        cleanup_files(engine, created)
        reset_counts(report)
        return fail(str(exc))
    except (OSError, ValueError) as exc:
        cleanup_files(engine, created)
        reset_counts(report)
        return fail(f"{label}: (file): cannot read: {exc}")
    except sa.exc.IntegrityError as exc:
        # another import wrote the same rows between our check and our insert
        cleanup_files(engine, created)
        reset_counts(report)
        report.errors.append(
            f"{label}: (database): a concurrent write conflicted with this import; nothing was "
            f"imported, run it again ({str(exc.orig).splitlines()[0][:200]})"
        )
        report.seconds = time.perf_counter() - started
        return report
    except BaseException:
        cleanup_files(engine, created)
        raise

    rejects = bad + late_rejects
    report.rejected = len(rejects)
    if rejects:
        report.errors.extend(messages(rejects, opts))
        rp = Path(rejects_path) if rejects_path else path.with_name(path.name + ".rejects.jsonl")
        write_rejects(rp, rejects, opts, append=append_rejects)
        report.rejects_path = str(rp)
    if not report.changed:
        report.notes.append("nothing changed: every row was already imported with the same content")
    deployment.record_media_root(engine, root)  # the first import tells the database where its media live
    if report.items_new + report.verdicts_new + report.annotations_new >= ANALYZE_AFTER_ROWS:
        refresh_statistics(engine)
    report.ok = True
    report.seconds = time.perf_counter() - started
    return report


class _Rollback(Exception):
    pass


CHUNK_ROWS = 10_000  # rows read, checked, planned and written at a time
# SQLite page cache of the import's connection, so the item and verdict indexes stay in memory
# as a collection grows: with the default 2 MB the bare inserts of 1M items took 14.2 s, 10.5 s
# with 256 MB. Importing 1M items (bench_dataio --import-scale, medians of 2): 128 MB gave
# 17.9k items/s (0.89x the rate at 100k) at 519 MB peak RSS, 256 MB 19.0k/s (0.92x) at 663 MB.
SQLITE_IMPORT_CACHE_MIB = 256


def _chunks(records: Iterator[Record], n: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


ANALYZE_AFTER_ROWS = 10_000  # an import at least this large refreshes the planner's statistics


def refresh_statistics(engine: sa.Engine) -> None:
    """Let the query planner see the new table sizes (SQLite ``PRAGMA optimize``, PostgreSQL
    ``ANALYZE``): without statistics SQLite chose a walk over a collection's items for
    queries an index answers in milliseconds. Best effort: an import never fails on it."""
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA analysis_limit=1000")  # sampled: fast on any size
                conn.exec_driver_sql("PRAGMA optimize=0x10002")  # analyse every table that needs it
            else:
                conn.exec_driver_sql("ANALYZE item, verdict, annotation, assignment")
            conn.commit()
    except sa.exc.DBAPIError:
        pass


def _taxonomy_for(engine: sa.Engine, collection: str, taxonomy: str | dict[str, Any] | None) -> dict[str, Any]:
    with Session(engine) as s:
        col = s.execute(sa.select(Collection).where(Collection.name == collection)).scalars().first()
        stored = s.get(Taxonomy, col.taxonomy_id).spec if col is not None else None  # type: ignore[union-attr]
    if taxonomy is None:
        if stored is None:
            raise LookupError(f"collection {collection!r} does not exist yet; give --taxonomy")
        return stored
    spec = taxmod.resolve(taxonomy) if isinstance(taxonomy, str) else taxmod.validate(taxonomy)
    if stored is not None and stored["name"] != spec["name"]:
        raise ValueError(f"collection {collection!r} uses taxonomy {stored['name']!r}, not {spec['name']!r}")
    return spec
