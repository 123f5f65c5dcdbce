"""Reading: a source file into parsed :class:`Record` objects, in the format's own way.

``auto`` picks the format from the extension and the first row (:func:`detect_format`);
each format module (``generic``, ``unisafebench``, ``vlsu``, ``inspect_log``) turns one
source row into a record. Rows that cannot be read at all become records carrying only their error.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safereview.dataio.importers import generic, unisafebench, vlsu
from safereview.dataio.importers.inspect_log import looks_like_inspect
from safereview.dataio.importers.options import Options
from safereview.dataio.importers.records import Record, SourceRow, read_csv, read_jsonl, read_parquet
from safereview.dataio.importers.report import ImportReport
from safereview.dataio.importers.taxonomy_index import TaxonomyIndex
from safereview.wording import noun

FORMATS = ("auto", "generic", "uni-safebench", "vlsu", "inspect")


class FileProblem(Exception):
    """The file as a whole cannot be imported (wrong kind, missing columns, too many rows)."""


def detect_format(path: Path) -> str:
    """Guess the format from the extension and the first row (see docs/import.md)."""
    suffix = path.suffix.lower()
    if looks_like_inspect(path):
        return "inspect"
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


def iter_records(path: Path, fmt: str, tax: TaxonomyIndex, opts: Options, report: ImportReport) -> Iterator[Record]:
    """Read the file and parse its rows one at a time, in file order.

    A row that cannot be read or parsed at all comes out as a record carrying only its error.
    Raises :class:`FileProblem` (possibly mid-file: the caller rolls back) when the file as a
    whole cannot be imported.
    """
    label = opts.file_label
    suffix = path.suffix.lower()

    def take(src: SourceRow, parse: Any) -> Record:
        report.rows += 1
        if report.rows > opts.max_rows:
            raise FileProblem(
                f"{label}:{src.line}: (file): more than {opts.max_rows:,} rows in one import; "
                "split the file or raise SAFEREVIEW_MAX_IMPORT_ROWS"
            )
        if src.error is not None:
            rec = Record(line=src.line, raw=src.raw)
            rec.error(*src.error)
            return rec
        return parse(src)

    if fmt == "vlsu":
        if suffix != ".csv":
            raise FileProblem(f"{label}: (file): the VLSU release is a CSV file")
        header, rows = read_csv(path)
        missing = [c for c in vlsu.REQUIRED if c not in header]
        if missing:
            raise FileProblem(f"{label}:1: (header): missing VLSU {noun(len(missing), 'column')} {', '.join(missing)}")
        index = vlsu.ImageIndex(opts.media_dir.resolve())
        for src in rows:
            yield take(src, lambda s: vlsu.parse_row(s, index))
        return

    if fmt == "uni-safebench":
        if suffix not in (".jsonl", ".json", ".ndjson"):
            raise FileProblem(f"{label}: (file): the Uni-SafeBench release is JSON Lines")
        if not opts.task_type:
            guessed = tax.task_type_from_path(path)
            if guessed is not None:
                opts.task_type = guessed
        for src in read_jsonl(path):
            rec = take(src, unisafebench.parse_row)
            if not opts.task_type and tax.task_types and not rec.errors and not rec.task_type:
                known = ", ".join(t["id"] for t in tax.spec["task_types"])
                raise FileProblem(
                    f"{label}: task_type: cannot tell the task type from the file or folder name; "
                    f"pass --task-type (one of {known})"
                )
            yield rec
        return

    if fmt == "inspect":
        yield from _parse_inspect(path, tax, opts, take)
        return

    # generic
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows: Iterator[SourceRow] = read_jsonl(path)
    elif suffix == ".csv":
        _header, rows = read_csv(path)
    elif suffix == ".parquet":
        try:
            _header, rows = read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise FileProblem(f"{label}: (file): not a readable Parquet file: {exc}") from None
    else:
        raise FileProblem(f"{label}: (file): generic files end in .jsonl, .csv or .parquet")
    for src in rows:
        yield take(src, generic.parse_row)


def _parse_inspect(path: Path, tax: TaxonomyIndex, opts: Options, take: Any) -> Iterator[Record]:
    """An Inspect AI log, sample by sample; its embedded media go to a scratch folder that
    becomes the import's media folder (removed when the import ends)."""
    from safereview.dataio.importers import inspect_log

    try:
        score_map = inspect_log.ScoreMap.load(opts.score_map)
    except inspect_log.ScoreMapError as exc:
        raise FileProblem(f"{opts.file_label}: --score-map: {exc}") from None
    scratch = Path(tempfile.mkdtemp(prefix="safereview-inspect-"))
    opts.scratch.append(scratch)
    opts.media_dir = scratch
    opts.location_note = " (the sample's position in the log, 1-based)"
    try:
        records = inspect_log.read_records(path, inspect_log.MediaSink(scratch), score_map, tax.dim_labels)
        for rec in records:
            yield take(SourceRow(rec.line, {}, rec.raw), lambda _src, rec=rec: rec)
    except RuntimeError as exc:  # inspect-ai not installed
        raise FileProblem(f"{opts.file_label}: (file): {exc}") from None
    except (OSError, ValueError) as exc:  # not a log Inspect can read
        raise FileProblem(f"{opts.file_label}: (file): not a readable Inspect log: {str(exc)[:300]}") from None
