"""Process-wide state of the review app that both the HTTP routes and the pages share.

Streamlit-free: the Starlette routes in :mod:`review_app.server` run outside any script
run, so the engine, the settings and the sign-in tickets live here, keyed by database URL
so tests that point the app at a fresh database get a fresh engine.
"""

from __future__ import annotations

import secrets
import threading
import time
from functools import lru_cache

from sqlalchemy.engine import Engine

from safereview import settings

SESSION_COOKIE = "safereview_session"
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
# (replicas need sticky sessions). The token itself never appears in a URL.


class _Tickets:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str, float]] = {}
        self._used: dict[str, float] = {}

    def issue(self, token: str) -> str:
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            self._gc()
            self._pending[ticket] = (token, time.monotonic() + TICKET_TTL_S)
        return ticket

    def redeem(self, ticket: str) -> str | None:
        """The token for a valid, unused ticket (and mark it used), else None."""
        with self._lock:
            self._gc()
            entry = self._pending.pop(ticket, None)
            if entry is None or entry[1] < time.monotonic():
                return None
            self._used[ticket] = time.monotonic() + TICKET_TTL_S
            return entry[0]

    def redeemed(self, ticket: str) -> bool:
        with self._lock:
            return ticket in self._used

    def _gc(self) -> None:
        now = time.monotonic()
        for store in (self._pending, self._used):
            for key in [k for k, v in store.items() if (v[1] if isinstance(v, tuple) else v) < now]:
                del store[key]


tickets = _Tickets()
