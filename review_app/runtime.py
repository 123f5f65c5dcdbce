"""Process-wide state of the review app that both the HTTP routes and the pages share.

Streamlit-free: the Starlette routes in :mod:`review_app.server` run outside any script
run, so the engine, the settings and the sign-in tickets live here, keyed by database URL
so tests that point the app at a fresh database get a fresh engine.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import timedelta
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
# Set-Cookie carrying the session token (HttpOnly, SameSite=Strict). Tickets are rows in the
# database (``signinticket``), so the replica that serves the image need not be the one
# that ran the sign-in. The token itself never appears in a URL, and the table holds only
# the ticket's hash and the token sealed with a key derived from the ticket. A ticket is
# bound to the browser that signed in (its BROWSER_COOKIE): redeemed from any other browser
# it does nothing, so an attacker cannot sign a victim's browser into the attacker's account
# by sending it the ticket URL (login CSRF).


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _keystream(ticket: str, n: int) -> bytes:
    out = b""
    block = 0
    while len(out) < n:
        out += hashlib.sha256(f"{ticket}:{block}".encode()).digest()
        block += 1
    return out[:n]


def _seal(token: str, ticket: str) -> str:
    data = token.encode("utf-8")
    return bytes(a ^ b for a, b in zip(data, _keystream(ticket, len(data)), strict=True)).hex()


def _unseal(sealed: str, ticket: str) -> str:
    data = bytes.fromhex(sealed)
    return bytes(a ^ b for a, b in zip(data, _keystream(ticket, len(data)), strict=True)).decode("utf-8")


class _Tickets:
    def issue(self, token: str, browser: str | None) -> str:
        """A one-time ticket for ``token``, redeemable only by the browser with id ``browser``
        (a browser without the id can still sign in; it gets no media cookie)."""
        import sqlalchemy as sa

        from safereview.db.models import SignInTicket, utcnow
        from safereview.workflow.tx import write_scope

        ticket = secrets.token_urlsafe(24)
        now = utcnow()
        with write_scope(engine()) as session:
            session.execute(sa.delete(SignInTicket).where(SignInTicket.expires_at < now - timedelta(hours=1)))  # type: ignore[arg-type]
            session.add(
                SignInTicket(
                    ticket_sha256=_sha(ticket),
                    sealed_token=_seal(token, ticket),
                    browser_sha256=_sha(browser) if browser else "",
                    expires_at=now + timedelta(seconds=TICKET_TTL_S),
                )
            )
        return ticket

    def redeem(self, ticket: str, browser: str | None) -> str | None:
        """The token for a valid, unused ticket asked for by its own browser (and mark it used), else None."""
        import sqlalchemy as sa

        from safereview.db.models import SignInTicket, utcnow
        from safereview.workflow.tx import write_scope

        if not ticket or len(ticket) > 200 or not browser:
            return None  # no browser id: nothing to match (a ticket bound to none is never redeemable)
        now = utcnow()
        t = SignInTicket.__table__  # type: ignore[attr-defined]
        with write_scope(engine()) as session:
            done = session.execute(
                sa.update(t)
                .where(
                    t.c.ticket_sha256 == _sha(ticket),
                    t.c.redeemed_at.is_(None),
                    t.c.expires_at > now,
                    t.c.browser_sha256 == _sha(browser),
                )
                .values(redeemed_at=now)
            )
            if done.rowcount != 1:
                return None  # unknown, used, expired, or another browser's: left for its own
            sealed = session.execute(sa.select(t.c.sealed_token).where(t.c.ticket_sha256 == _sha(ticket))).scalar_one()
        return _unseal(sealed, ticket)

    def redeemed(self, ticket: str) -> bool:
        import sqlalchemy as sa

        from safereview.db.engine import read_only
        from safereview.db.models import SignInTicket

        with read_only(engine()).connect() as conn:
            at = conn.execute(
                sa.select(SignInTicket.redeemed_at).where(SignInTicket.ticket_sha256 == _sha(ticket))  # type: ignore[arg-type]
            ).scalar()
        return at is not None


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
