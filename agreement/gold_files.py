"""One downloadable file of a stored gold snapshot, built when someone asks for it.

The Gold page used to build every format of a snapshot up front and keep the bytes in the
session: four copies of a million-row snapshot per lead, for as long as the tab stayed
open. Here a file is made from the stored rows on demand (Streamlit calls
:func:`snapshot_file` from a deferred download button), so nothing waits in memory and a
stored snapshot and a fresh one download the same way. No Streamlit import: the CLI and
tests use it directly.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safereview.agreement import data

# format -> (file name suffix, MIME type), in the order the page shows the buttons
DOWNLOADS: dict[str, tuple[str, str]] = {
    "parquet": (".parquet", "application/vnd.apache.parquet"),
    "csv": (".csv", "text/csv"),
    "jsonl": (".jsonl", "application/jsonl"),
    "hf": ("-hf.zip", "application/zip"),
}


@dataclass(frozen=True)
class GoldFile:
    data: bytes
    file_name: str
    mime: str


def file_name(snapshot_id: int, fmt: str) -> str:
    return f"gold-{int(snapshot_id)}{DOWNLOADS[fmt][0]}"


def snapshot_file(bind: Any, snapshot_id: int, fmt: str) -> GoldFile:
    """The snapshot's rows in ``fmt`` (parquet, csv, jsonl, or ``hf``: the dataset folder zipped)."""
    from sqlmodel import Session

    from safereview.agreement.gold import dimension_labels, snapshot_table, write
    from safereview.db.models import GoldSnapshot

    if fmt not in DOWNLOADS:
        raise data.AgreementError(f"format must be one of {', '.join(DOWNLOADS)}")
    with Session(bind) as s:
        snap = s.get(GoldSnapshot, int(snapshot_id))
        if snap is None:
            raise data.AgreementError(f"no gold snapshot {snapshot_id}")
        s.expunge(snap)
    table = snapshot_table(bind, int(snapshot_id))
    name = file_name(snapshot_id, fmt)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        if fmt != "hf":
            path = base / name
            write(table, path, fmt, snap)
            return GoldFile(path.read_bytes(), name, DOWNLOADS[fmt][1])
        files = write(table, base / "hf", "hf", snap, labels=dimension_labels(bind, snap))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, f"gold-{int(snapshot_id)}/{f.relative_to(base / 'hf')}")
        return GoldFile(buf.getvalue(), name, DOWNLOADS[fmt][1])
