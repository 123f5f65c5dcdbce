"""Database URLs: which driver, which file. Light (no SQLAlchemy), so settings and the CLI
can use it before they decide to open a database."""

from __future__ import annotations

from pathlib import Path


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL, or None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    rest = url.split(":///", 1)[1] if ":///" in url else ""
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest).resolve()


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` (the psycopg 3 driver is used for them) and a
    plain file path, which means that SQLite file (``--db .demo/safereview.db``)."""
    if url and "://" not in url and not url.startswith("sqlite:"):
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
