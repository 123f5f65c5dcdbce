"""One entry point for every import: :func:`import_file`.

Formats (see docs/import.md): ``generic`` (JSONL, CSV, Parquet), ``uni-safebench`` (release
JSONL) and ``vlsu`` (release CSV); ``auto`` picks one from the extension and the first row.
Bad input never half-imports: by default the whole file is one transaction and any
problem leaves the database exactly as it was.
"""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from safereview import settings
from safereview.dataio.importers import generic, unisafebench, vlsu
from safereview.dataio.importers.core import (
    ImportFailed,
    ImportReport,
    Options,
    TaxonomyIndex,
    Validator,
    cleanup_files,
    now_monotonic,
    write,
)
from safereview.dataio.importers.records import Record, SourceRow, read_csv, read_jsonl, read_parquet
from safereview.db import taxonomy as taxmod
from safereview.db.collections import ensure_collection
from safereview.db.models import Collection, Taxonomy

FORMATS = ("auto", "generic", "uni-safebench", "vlsu")

__all__ = ["FORMATS", "ImportFailed", "ImportReport", "detect_format", "import_file"]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def detect_format(path: Path) -> str:
    """Guess the format from the extension and the first row (see docs/import.md)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "generic"
    if suffix == ".csv":
        with path.open("r", encoding="utf-8-sig", errors="replace") as fh:
            header = {h.strip().strip('"') for h in fh.readline().split(",")}
        return "vlsu" if {"uuid", "consensus_combined_grade"} <= header else "generic"
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open("rb") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                try:
                    first = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if (
                    isinstance(first, dict)
                    and "id" in first
                    and isinstance(first.get("prompt"), str)
                    and set(first) & unisafebench.SIGNATURE
                ):
                    return "uni-safebench"
                return "generic"
        return "generic"
    raise ValueError(
        f"{path}: cannot tell the format from the extension {suffix or '(none)'}; "
        "use .jsonl, .csv or .parquet, or pass --format"
    )


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
    user: str = "",
    update: bool = False,
    media_root: str | Path | None = None,
    config: settings.Config | None = None,
    append_rejects: bool = False,
) -> ImportReport:
    """Validate and import one file into ``collection``; see docs/import.md.

    ``taxonomy`` is a preset name, a taxonomy file or a spec; it may be omitted for an
    existing collection. ``media_dir`` (default: the file's folder) is where relative media
    paths are resolved; ``media_root`` (default: the configured one) is where media are
    stored. Returns a report; ``report.ok`` is False (and nothing was written) when any
    row is bad, unless ``skip_invalid`` is set, in which case bad rows are written to
    ``rejects_path`` (default ``<file>.rejects.jsonl``) and the rest is imported.
    """
    # Bulk import builds many small objects; the cyclic GC rescanning them all again and again
    # made large imports super-linear. Nothing here creates reference cycles that need it.
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
            update=update,
            media_root=media_root,
            config=config,
            append_rejects=append_rejects,
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
    update: bool,
    media_root: str | Path | None,
    config: settings.Config | None,
    append_rejects: bool,
) -> ImportReport:
    started = now_monotonic()
    path = Path(path)
    label = str(path)
    report = ImportReport(source=label, collection=collection)
    cfg = config or _config_for(engine)
    root = Path(media_root).resolve() if media_root else cfg.media_root

    def fail(msg: str) -> ImportReport:
        report.errors.append(msg)
        report.seconds = now_monotonic() - started
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
    )

    if task_type and tax.task_types and tax.task_type(task_type) is None:
        known = ", ".join(t["id"] for t in spec["task_types"])
        return fail(f"{label}: --task-type: unknown task type {task_type!r}; known: {known}")

    # ---- read and parse --------------------------------------------------------------
    try:
        records, parse_rejects = _parse(path, fmt, tax, opts, report)
    except _FileProblem as exc:
        return fail(str(exc))
    except (OSError, ValueError) as exc:
        return fail(f"{label}: (file): cannot read: {exc}")

    validator = Validator(tax, opts)
    for rec in records:
        validator.record(rec)
    bad = parse_rejects + [r for r in records if r.errors]
    good = [r for r in records if not r.errors]
    if bad and not skip_invalid:
        report.errors.extend(_messages(bad, opts))
        report.seconds = now_monotonic() - started
        return report

    # ---- write: one transaction ------------------------------------------------------
    created: list[Path] = []
    late_rejects: list[Record] = []
    try:
        with engine.begin() as conn:
            session = Session(bind=conn, expire_on_commit=False)
            try:
                col = ensure_collection(session, collection, spec)
            except ValueError as exc:  # same-named taxonomy with another definition, etc.
                report.errors.append(f"{label}: taxonomy: {exc}")
                raise _Rollback from None
            session.flush()
            late_rejects = write(
                conn,
                session,
                good,
                collection_id=col.id,
                opts=opts,  # type: ignore[arg-type]
                report=report,
                source_sha256=_file_sha256(path),
                user=user,
                created_files=created,
                prior_rejected=len(bad),
            )
            if late_rejects and not skip_invalid:
                raise _Rollback
            session.close()
    except _Rollback:
        cleanup_files(engine, created)
        report.errors.extend(_messages(late_rejects, opts))
        _reset_counts(report)
        report.seconds = now_monotonic() - started
        return report
    except sa.exc.IntegrityError as exc:
        # another import wrote the same rows between our check and our insert
        cleanup_files(engine, created)
        _reset_counts(report)
        report.errors.append(
            f"{label}: (database): a concurrent write conflicted with this import; nothing was "
            f"imported, run it again ({str(exc.orig).splitlines()[0][:200]})"
        )
        report.seconds = now_monotonic() - started
        return report
    except BaseException:
        cleanup_files(engine, created)
        raise

    rejects = bad + late_rejects
    report.rejected = len(rejects)
    if rejects:
        report.errors.extend(_messages(rejects, opts))
        rp = Path(rejects_path) if rejects_path else path.with_name(path.name + ".rejects.jsonl")
        _write_rejects(rp, rejects, opts, append=append_rejects)
        report.rejects_path = str(rp)
    if not report.changed:
        report.notes.append("nothing changed: every row was already imported with the same content")
    report.ok = True
    report.seconds = now_monotonic() - started
    return report


class _Rollback(Exception):
    pass


class _FileProblem(Exception):
    pass


def _reset_counts(report: ImportReport) -> None:
    for name in (
        "items_new",
        "items_updated",
        "items_unchanged",
        "verdicts_new",
        "verdicts_updated",
        "verdicts_unchanged",
        "annotations_new",
        "annotations_updated",
        "annotations_unchanged",
        "users_created",
        "media_files_new",
        "media_rows_new",
    ):
        setattr(report, name, 0)
    report.batch_id = None
    report.notes.clear()


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


def _parse(
    path: Path, fmt: str, tax: TaxonomyIndex, opts: Options, report: ImportReport
) -> tuple[list[Record], list[Record]]:
    """Read the file and parse rows; returns (records, rows that could not be parsed)."""
    label = opts.file_label
    suffix = path.suffix.lower()
    records: list[Record] = []
    broken: list[Record] = []

    def take(src: SourceRow, parse: Any) -> None:
        report.rows += 1
        if report.rows > opts.max_rows:
            raise _FileProblem(
                f"{label}:{src.line}: (file): more than {opts.max_rows:,} rows in one import; "
                "split the file or raise SAFEREVIEW_MAX_IMPORT_ROWS"
            )
        if src.error is not None:
            rec = Record(line=src.line, raw=src.raw)
            rec.error(*src.error)
            broken.append(rec)
            return
        records.append(parse(src))

    if fmt == "vlsu":
        if suffix != ".csv":
            raise _FileProblem(f"{label}: (file): the VLSU release is a CSV file")
        header, rows = read_csv(path)
        missing = [c for c in vlsu.REQUIRED if c not in header]
        if missing:
            raise _FileProblem(f"{label}:1: (header): missing VLSU column(s) {', '.join(missing)}")
        index = vlsu.ImageIndex(opts.media_dir.resolve())
        for src in rows:
            take(src, lambda s: vlsu.parse_row(s, index))
        return records, broken

    if fmt == "uni-safebench":
        if suffix not in (".jsonl", ".json", ".ndjson"):
            raise _FileProblem(f"{label}: (file): the Uni-SafeBench release is JSON Lines")
        if not opts.task_type:
            guessed = tax.task_type_from_path(path)
            if guessed is not None:
                opts.task_type = guessed
        for src in read_jsonl(path):
            take(src, unisafebench.parse_row)
        if not opts.task_type and tax.task_types and any(not r.task_type for r in records):
            known = ", ".join(t["id"] for t in tax.spec["task_types"])
            raise _FileProblem(
                f"{label}: task_type: cannot tell the task type from the file or folder name; "
                f"pass --task-type (one of {known})"
            )
        return records, broken

    # generic
    if suffix in (".jsonl", ".json", ".ndjson"):
        for src in read_jsonl(path):
            take(src, generic.parse_row)
    elif suffix == ".csv":
        _header, rows = read_csv(path)
        for src in rows:
            take(src, generic.parse_row)
    elif suffix == ".parquet":
        try:
            _header, rows = read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise _FileProblem(f"{label}: (file): not a readable Parquet file: {exc}") from None
        for src in rows:
            take(src, generic.parse_row)
    else:
        raise _FileProblem(f"{label}: (file): generic files end in .jsonl, .csv or .parquet")
    return records, broken


def _messages(records: list[Record], opts: Options) -> list[str]:
    out = []
    for rec in sorted(records, key=lambda r: r.line):
        for fname, msg in rec.errors:
            out.append(f"{opts.file_label}:{rec.line}: {fname}: {msg}{opts.location_note}")
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


def _write_rejects(path: Path, rejects: list[Record], opts: Options, *, append: bool) -> None:
    """JSON Lines: the original row (parsed object, or raw text when unparseable) and its errors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as fh:
        for rec in sorted(rejects, key=lambda r: r.line):
            fh.write(
                json.dumps(
                    {
                        "source": opts.file_label,
                        "line": rec.line,
                        "errors": [f"{f}: {m}" for f, m in rec.errors],
                        "row": _jsonable(rec.raw),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
