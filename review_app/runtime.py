"""Process-wide state of the review app that both the HTTP routes and the pages share.

Streamlit-free: the Starlette routes in :mod:`review_app.server` run outside any script
run, so the engine, the settings and the sign-in tickets live here, keyed by database URL
so tests that point the app at a fresh database get a fresh engine.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from functools import lru_cache

from sqlalchemy.engine import Engine

from safereview import settings

SESSION_COOKIE = "safereview_session"
# A random id the server gives each browser on its first page load (HttpOnly): what binds a
# sign-in to the browser that made it (docs/reliability.md, "Sign-in").
BROWSER_COOKIE = "safereview_browser"
TICKET_TTL_S = 120.0


def config() -> settings.Config:
    """Settings from the environment (``safereview serve`` passes them that way)."""
    return settings.load()


@lru_cache(maxsize=8)
def engine_for_url(url: str) -> Engine:
    from safereview.db.engine import make_engine

    return make_engine(url)


def engine() -> Engine:
    return engine_for_url(config().db_url)


# ---------------------------------------------------------------------------------------
# Sign-in tickets: the bridge from a Streamlit session to an HttpOnly cookie
# ---------------------------------------------------------------------------------------
# A page script cannot set HTTP cookies. After a successful sign-in the page renders an
# invisible <img src="/auth/session?ticket=…">; the route swaps the one-time ticket for a
# Set-Cookie carrying the session token (HttpOnly, SameSite=Strict). Tickets live in this
# process only, which is fine because a Streamlit session is pinned to one process anyway
# (replicas need sticky sessions). The token itself never appears in a URL. A ticket is
# bound to the browser that signed in (its BROWSER_COOKIE): redeemed from any other browser
# it does nothing, so an attacker cannot sign a victim's browser into the attacker's account
# by sending it the ticket URL (login CSRF).


class _Tickets:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str, str, float]] = {}
        self._used: dict[str, float] = {}

    def issue(self, token: str, browser: str | None) -> str:
        """A one-time ticket for ``token``, redeemable only by the browser with id ``browser``
        (a browser without the id can still sign in; it gets no media cookie)."""
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            self._gc()
            self._pending[ticket] = (token, browser or "", time.monotonic() + TICKET_TTL_S)
        return ticket

    def redeem(self, ticket: str, browser: str | None) -> str | None:
        """The token for a valid, unused ticket asked for by its own browser (and mark it used), else None."""
        with self._lock:
            self._gc()
            entry = self._pending.get(ticket)
            if entry is None or entry[2] < time.monotonic():
                return None
            if not entry[1] or not hmac.compare_digest(entry[1], browser or ""):
                return None  # another browser: leave the ticket for its own
            del self._pending[ticket]
            self._used[ticket] = time.monotonic() + TICKET_TTL_S
            return entry[0]

    def redeemed(self, ticket: str) -> bool:
        with self._lock:
            return ticket in self._used

    def _gc(self) -> None:
        now = time.monotonic()
        for store in (self._pending, self._used):
            for key in [k for k, v in store.items() if (v[-1] if isinstance(v, tuple) else v) < now]:
                del store[key]


tickets = _Tickets()


# ---------------------------------------------------------------------------------------
# Downloads a page prepared for one person, served by the authenticated route
# ---------------------------------------------------------------------------------------


class _Downloads:
    """Files held briefly for the user they were made for (``/downloads/file/<key>``).

    Streamlit's ``st.download_button`` serves its data from ``/media/<id>`` to anyone who
    has the URL while the page is open; these need the requester's sign-in cookie and the
    same user. Capped in total bytes (oldest dropped first) and kept ten minutes.
    """

    TTL_S = 600.0
    MAX_BYTES = 256 << 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[int, str, str, bytes, float]] = {}

    def put(self, user_id: int, name: str, mime: str, data: bytes) -> str:
        key = secrets.token_urlsafe(18)
        with self._lock:
            self._gc()
            self._files[key] = (user_id, name, mime, data, time.monotonic() + self.TTL_S)
            while sum(len(f[3]) for f in self._files.values()) > self.MAX_BYTES and len(self._files) > 1:
                del self._files[next(iter(self._files))]
        return key

    def take(self, key: str, user_id: int) -> tuple[str, str, bytes] | None:
        """The file for its own user (kept for repeated downloads until it expires), else None."""
        with self._lock:
            self._gc()
            entry = self._files.get(key)
            if entry is None or entry[0] != user_id:
                return None
            return entry[1], entry[2], entry[3]

    def _gc(self) -> None:
        now = time.monotonic()
        for key in [k for k, v in self._files.items() if v[4] < now]:
            del self._files[key]


downloads = _Downloads()
