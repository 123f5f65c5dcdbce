"""Facts that belong to a deployment's database rather than to one process: where its media live.

A database records its media root (``Setting`` "media_root") when it is created, built as
the demo or first imported into, so every later command against that database finds its
media without being told (``--media-root`` or ``SAFEREVIEW_MEDIA_ROOT`` still win). A root
inside the SQLite file's folder is stored relative to it, so the folder can be moved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from safereview.db.models import Setting, utcnow
from safereview.db.urls import sqlite_path

MEDIA_ROOT_KEY = "media_root"


def _db_folder(url: str) -> Path | None:
    f = sqlite_path(url)
    return Path(str(f)).resolve().parent if f is not None else None


def stored_media_root(engine: sa.Engine) -> Path | None:
    """The media root recorded in the database, or None (older databases, a bare schema)."""
    t = Setting.__table__  # type: ignore[attr-defined]
    try:
        with engine.connect() as conn:
            value = conn.execute(sa.select(t.c.value).where(t.c.key == MEDIA_ROOT_KEY)).scalar()
    except sa.exc.SQLAlchemyError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        return None
    path = Path(value["path"])
    if value.get("relative_to_db"):
        folder = _db_folder(engine.url.render_as_string(hide_password=False))
        if folder is None:
            return None
        path = folder / path
    return path.resolve()


def record_media_root(engine: sa.Engine, root: Path, *, replace: bool = False) -> Path:
    """Record ``root`` as the database's media root, unless one is recorded and ``replace`` is
    False; returns the root in force."""
    root = Path(root).resolve()
    current = stored_media_root(engine)
    if current is not None and not replace:
        return current
    folder = _db_folder(engine.url.render_as_string(hide_password=False))
    value: dict[str, Any] = {"path": str(root), "relative_to_db": False}
    if folder is not None and root.is_relative_to(folder):
        value = {"path": str(root.relative_to(folder)), "relative_to_db": True}
    t = Setting.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        done = conn.execute(t.update().where(t.c.key == MEDIA_ROOT_KEY).values(value=value, updated_at=utcnow()))
        if done.rowcount == 0:  # type: ignore[attr-defined]
            conn.execute(sa.insert(t).values(key=MEDIA_ROOT_KEY, value=value, updated_at=utcnow()))
    return root


def media_root(cfg: Any, engine: sa.Engine) -> Path:
    """The media root a command should use: the override, else the database's own, else the default."""
    if cfg.media_root_override:
        return Path(cfg.media_root_override).resolve()
    return stored_media_root(engine) or cfg.media_root
