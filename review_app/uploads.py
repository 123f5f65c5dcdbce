"""Handling of uploaded files for the Import page (Streamlit-free, so it is testable alone).

Uploaded archives are hostile input: member paths must stay inside the target folder,
links are refused and the unpacked size is capped (zip bombs).
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

MAX_ZIP_MEMBERS = 100_000


def safe_name(name: str) -> str:
    base = Path(name).name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return stem[:120]


def extract_zip(data: Any, dest: Path, *, max_bytes: int) -> int:
    """Unpack a media ZIP safely: no absolute or ``..`` paths, no links, a total size cap, and
    no member that is both a file and a folder (``a`` and ``a/b``) or listed twice. Every
    member is checked before anything is written, and each refusal is a ``ValueError``
    naming the member."""
    with zipfile.ZipFile(data) as zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise ValueError(f"the ZIP holds more than {MAX_ZIP_MEMBERS} entries")
        plan = _plan(members, max_bytes)
        for m, parts in plan:
            target = dest.joinpath(*parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except OSError as exc:
                raise ValueError(f"{m.filename}: cannot be unpacked ({exc.strerror or exc})") from None
    return len(plan)


def _plan(members: list[zipfile.ZipInfo], max_bytes: int) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    total = 0
    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    files: dict[tuple[str, ...], str] = {}
    folders: dict[tuple[str, ...], str] = {}
    for m in members:
        if (m.external_attr >> 16) & 0o170000 == 0o120000:
            raise ValueError(f"{m.filename}: symbolic links are not accepted")
        p = PurePosixPath(m.filename.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise ValueError(f"{m.filename}: paths must stay inside the archive")
        parts = tuple(p.parts)
        for depth in range(1, len(parts) + (1 if m.is_dir() else 0)):
            folders.setdefault(parts[:depth], m.filename)
        if m.is_dir():
            continue
        if parts in files:
            raise ValueError(f"{m.filename}: listed twice in the archive")
        files[parts] = m.filename
        total += m.file_size
        if total > max_bytes:
            raise ValueError(f"the ZIP unpacks to more than {max_bytes // (1 << 20)} MB")
        plan.append((m, parts))
    for parts, name in files.items():
        if parts in folders:
            raise ValueError(f"{name}: is a file, but {folders[parts]} uses it as a folder")
    return plan
