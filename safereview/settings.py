"""Every run-time setting in one place.

Each setting is read from an environment variable; the CLI's global options override
them. ``tests/test_settings_documented.py`` fails when a setting here is missing from the
README, so the documentation cannot drift from the code (an idea borrowed from datasette).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from safereview.db.urls import (
    normalise_url,
    sqlite_path,
)  # sqlite_path re-exported: the media folder sits beside the file


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "SAFEREVIEW_DB",
        "sqlite:///safereview.db",
        "Database URL: a SQLite file (default) or postgresql+psycopg://user@host/db.",
    ),
    Setting(
        "SAFEREVIEW_MEDIA_ROOT",
        "",
        "Folder where imported media is stored by content hash. Default: `<db file>.media/` "
        "beside a SQLite database, `./media` otherwise.",
    ),
    Setting(
        "SAFEREVIEW_CACHE_DIR",
        "",
        "Folder for derived media (thumbnails, waveforms, spectrograms, key frames). Default: `<media root>/.derived`.",
    ),
    Setting(
        "SAFEREVIEW_MAX_IMAGE_PIXELS",
        "50000000",
        "Decompression-bomb limit: images with more pixels are refused at import.",
    ),
    Setting("SAFEREVIEW_MAX_UPLOAD_MB", "200", "Largest file accepted by the app's import page."),
    Setting(
        "SAFEREVIEW_MAX_TEXT_CHARS",
        "200000",
        "Longest text part stored per prompt/response part; longer text is refused at import.",
    ),
    Setting(
        "SAFEREVIEW_MAX_IMPORT_ROWS",
        "2000000",
        "Most rows one import file may hold (it is one transaction, held in memory); split larger files.",
    ),
    Setting("SAFEREVIEW_SESSION_HOURS", "12", "Sign-in sessions expire after this many hours."),
    Setting("SAFEREVIEW_LEASE_MINUTES", "30", "How long a reviewer holds a queue slot before it returns to the pool."),
    Setting(
        "SAFEREVIEW_BASE_URL_PATH",
        "",
        "Serve the app under this path (e.g. `review` for `https://host/review/`) when a reverse proxy "
        "forwards that path unchanged; sets Streamlit's `server.baseUrlPath` and prefixes the media and "
        "sign-in routes.",
    ),
    Setting(
        "SAFEREVIEW_ALLOWED_ORIGINS",
        "",
        "Extra origins (comma-separated, e.g. `https://review.example.org`) whose pages may open the app's "
        "websocket; by default only the app's own origin (the request's Host) may.",
    ),
    Setting(
        "SAFEREVIEW_TRUSTED_PROXIES",
        "",
        "Addresses of reverse proxies (comma-separated, e.g. `127.0.0.1`) whose `X-Forwarded-For` names the "
        "client (sign-in limits per address then count the client, not the proxy) and whose "
        "`X-Forwarded-Proto: https` marks the cookies Secure; nobody else's forwarded headers are believed.",
    ),
    Setting("SAFEREVIEW_MIN_PASSWORD_LENGTH", "12", "Shortest password accepted (NIST SP 800-63B asks for 8 or more)."),
    Setting(
        "SAFEREVIEW_SIGNIN_CONCURRENCY",
        "2",
        "Password checks run at once per app process (argon2: 64 MiB and ~0.3 s of CPU each); more wait.",
    ),
    Setting(
        "SAFEREVIEW_JUDGE_API_KEY",
        "",
        "Default API key for the judge's OpenAI-compatible server (`--api-key-env` names another).",
    ),
)


def _env(name: str) -> str:
    spec = next(s for s in SETTINGS if s.env == name)
    return os.environ.get(name) or spec.default


@dataclass(frozen=True)
class Config:
    """Resolved settings for one process."""

    db_url: str = field(default_factory=lambda: _env("SAFEREVIEW_DB"))
    media_root_override: str = field(default_factory=lambda: _env("SAFEREVIEW_MEDIA_ROOT"))
    cache_dir_override: str = field(default_factory=lambda: _env("SAFEREVIEW_CACHE_DIR"))
    max_image_pixels: int = field(default_factory=lambda: int(_env("SAFEREVIEW_MAX_IMAGE_PIXELS")))
    max_upload_mb: int = field(default_factory=lambda: int(_env("SAFEREVIEW_MAX_UPLOAD_MB")))
    max_text_chars: int = field(default_factory=lambda: int(_env("SAFEREVIEW_MAX_TEXT_CHARS")))
    max_import_rows: int = field(default_factory=lambda: int(_env("SAFEREVIEW_MAX_IMPORT_ROWS")))
    session_hours: float = field(default_factory=lambda: float(_env("SAFEREVIEW_SESSION_HOURS")))
    lease_minutes: float = field(default_factory=lambda: float(_env("SAFEREVIEW_LEASE_MINUTES")))
    base_url_path: str = field(default_factory=lambda: normalise_base_path(_env("SAFEREVIEW_BASE_URL_PATH")))
    allowed_origins: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            o.strip().rstrip("/").lower() for o in _env("SAFEREVIEW_ALLOWED_ORIGINS").split(",") if o.strip()
        )
    )
    trusted_proxies: tuple[str, ...] = field(
        default_factory=lambda: tuple(a.strip() for a in _env("SAFEREVIEW_TRUSTED_PROXIES").split(",") if a.strip())
    )
    min_password_length: int = field(default_factory=lambda: int(_env("SAFEREVIEW_MIN_PASSWORD_LENGTH")))
    signin_concurrency: int = field(default_factory=lambda: int(_env("SAFEREVIEW_SIGNIN_CONCURRENCY")))

    @property
    def url_prefix(self) -> str:
        """``""`` or ``"/<base path>"``: what the app's own routes and URLs start with."""
        return f"/{self.base_url_path}" if self.base_url_path else ""

    @property
    def media_root(self) -> Path:
        if self.media_root_override:
            return Path(self.media_root_override).resolve()
        sqlite_file = sqlite_path(self.db_url)
        if sqlite_file is not None:
            return Path(str(sqlite_file) + ".media").resolve()
        return Path("media").resolve()

    @property
    def cache_dir(self) -> Path:
        if self.cache_dir_override:
            return Path(self.cache_dir_override).resolve()
        return self.media_root / ".derived"


def normalise_base_path(value: str) -> str:
    """``/review/`` → ``review``; only URL-path-safe characters (letters, digits, ``-._~/``)."""
    import re

    path = value.strip().strip("/")
    if path and (
        not re.fullmatch(r"[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*", path)
        or any(seg in (".", "..") for seg in path.split("/"))
    ):
        raise ValueError(f"SAFEREVIEW_BASE_URL_PATH: {value!r} is not a plain URL path (letters, digits, -._~/)")
    return path


def load(**overrides: object) -> Config:
    """Settings from the environment, with explicit overrides (CLI options) winning."""
    values = {k: v for k, v in overrides.items() if v not in (None, "")}
    if isinstance(values.get("db_url"), str):
        values["db_url"] = normalise_url(values["db_url"])  # type: ignore[arg-type]  # a plain path: that SQLite file
    return Config(**values)  # type: ignore[arg-type]
