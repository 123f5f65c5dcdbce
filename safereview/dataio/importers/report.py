"""What an import did, or why it wrote nothing: the report, its messages and the rejects file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safereview.dataio.importers.options import Options
from safereview.dataio.importers.records import Record


class ImportFailed(Exception):
    """Raised by :meth:`ImportReport.raise_for_errors`; carries the report."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report
        super().__init__("\n".join(report.errors[:50]) or "import failed")


@dataclass
class ImportReport:
    """What an import did (or, when ``ok`` is False, why it wrote nothing)."""

    source: str
    format: str = ""
    collection: str = ""
    ok: bool = False
    batch_id: int | None = None
    rows: int = 0
    items_new: int = 0
    items_updated: int = 0
    items_unchanged: int = 0
    verdicts_new: int = 0
    verdicts_updated: int = 0
    verdicts_unchanged: int = 0
    annotations_new: int = 0
    annotations_updated: int = 0
    annotations_unchanged: int = 0
    users_created: int = 0
    media_files_new: int = 0
    media_rows_new: int = 0
    rejected: int = 0
    rejects_path: str | None = None
    priorities_refreshed: bool | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(
            self.items_new
            or self.items_updated
            or self.verdicts_new
            or self.verdicts_updated
            or self.annotations_new
            or self.annotations_updated
        )

    def raise_for_errors(self) -> ImportReport:
        if not self.ok:
            raise ImportFailed(self)
        return self

    def counts(self) -> list[tuple[str, int]]:
        return [
            ("rows read", self.rows),
            ("items new", self.items_new),
            ("items updated", self.items_updated),
            ("items unchanged", self.items_unchanged),
            ("verdicts new", self.verdicts_new),
            ("verdicts updated", self.verdicts_updated),
            ("verdicts unchanged", self.verdicts_unchanged),
            ("annotations new", self.annotations_new),
            ("annotations updated", self.annotations_updated),
            ("annotations unchanged", self.annotations_unchanged),
            ("users created", self.users_created),
            ("media files stored", self.media_files_new),
            ("media rows new", self.media_rows_new),
            ("rows rejected", self.rejected),
        ]


def reset_counts(report: ImportReport) -> None:
    """Zero what a rolled-back import had counted (nothing of it was written)."""
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


def messages(records: list[Record], opts: Options) -> list[str]:
    """``FILE:LINE: field: message`` for every problem of ``records``, in file order."""
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


def write_rejects(path: Path, rejects: list[Record], opts: Options, *, append: bool) -> None:
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
