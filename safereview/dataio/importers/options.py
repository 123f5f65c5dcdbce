"""The settings of one import run, shared by parsing, validation, planning and writing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Options:
    """The settings of one import run (from the command line and the configuration)."""

    file_label: str
    fmt: str
    media_dir: Path
    media_root: Path
    max_image_pixels: int
    max_text_chars: int
    update: bool
    skip_invalid: bool
    task_type: str | None
    model: str | None
    location_note: str = ""  # "(parquet row index, 0-based)"
    id_by_task_type: bool = False  # Uni-SafeBench: external id = "<task type>/<id>"
    max_rows: int = 2_000_000  # SAFEREVIEW_MAX_IMPORT_ROWS: one import is one transaction held in memory
    score_map: Path | None = None  # Inspect logs: how scorers' values become labels (--score-map)
    scratch: list[Path] = field(default_factory=list)  # folders removed when the import ends
