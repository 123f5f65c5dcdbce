"""Sign-in back-off shared by every app replica: no guessing race, no lock-out by a stranger.

Three counters limit password checks (docs/reliability.md, "Sign-in"):

- an account from one address: a few free attempts, then an exponential delay (1 s, 2 s,
  4 s ... up to 15 minutes) before the next check. Guessing one password slows to a crawl;
- an address, over every account: more free failures (an office behind one NAT; a
  successful sign-in is refunded), then the same back-off. Random or many usernames from
  one place do not escape it;
- an account, over every address: a distributed guess slows down too, but an address that
  has signed in to that account before (a known good place) skips this counter, so a
  stranger cannot keep the real person out;
- a browser that has signed in to the account before (its random browser id, which only
  it holds) is counted on its own and on nothing else, so not even guesses from the same
  address hold its owner up.

An attempt is *charged before* the password is checked, in a short transaction that locks
the counters' rows (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's single writer), so
forty simultaneous guesses see each other's charges: at most the free attempts and one more
get checked. A success clears the account's counters (not the address's: an attacker's
own account must not reset their address). Counters whose window has passed start again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.engine import is_sqlite
from safereview.db.models import LoginAttempt, SignInThrottle, utcnow

WINDOW = timedelta(minutes=15)  # a counter older than this starts again; the sign-in log keeps this long
KNOWN_GOOD_FOR = timedelta(days=30)  # an address that signed in to an account stays "known" this long
MAX_DELAY_S = 15 * 60


@dataclass(frozen=True)
class Rule:
    kind: str
    free: int  # attempts within the window before any delay
    max_delay_s: float


PAIR = Rule("pair", free=3, max_delay_s=MAX_DELAY_S)  # an account from one address
ADDRESS = Rule("address", free=10, max_delay_s=MAX_DELAY_S)  # failures on every account from one address
ACCOUNT = Rule("account", free=10, max_delay_s=5 * 60)  # one account from every address


class Throttled(Exception):
    """Too many recent attempts for one of the keys: try again in ``wait_s`` seconds."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"wait {wait_s:.0f} s")
        self.wait_s = wait_s


def delay_after(rule: Rule, failures: int) -> float:
    """Seconds to wait after ``failures`` charged attempts: 0 for the free ones, then 1, 2, 4 ..."""
    over = failures - rule.free
    if over <= 0:
        return 0.0
    return float(min(rule.max_delay_s, 2.0 ** min(over - 1, 30)))


def keys_for(
    account: str, address: str, *, known_good: bool, browser: str | None = None, browser_good: bool = False
) -> list[tuple[str, Rule]]:
    """The counters one attempt is charged to (sorted, so concurrent charges lock in one order).

    A browser that has signed in to the account before (its random id, which nobody else
    holds) has a counter of its own and nothing else: guesses from elsewhere, even from the
    same address, never hold its owner up.
    """
    if browser and browser_good:
        return [(f"browser:{browser}|{account}", PAIR)]
    keys = [(f"pair:{address}|{account}", PAIR), (f"address:{address}", ADDRESS)]
    if not known_good:
        keys.append((f"account:{account}", ACCOUNT))
    return sorted(keys, key=lambda k: k[0])


def _good_key(account: str, address: str) -> str:
    return f"good:{address}|{account}"


def is_known_good(session: Session, account: str, address: str, now: datetime) -> bool:
    row = session.get(SignInThrottle, _good_key(account, address))
    return row is not None and row.window_start >= now - KNOWN_GOOD_FOR


def _locked_row(session: Session, key: str, now: datetime) -> SignInThrottle:
    """The counter's row, created if new and locked for this transaction."""
    table = SignInThrottle.__table__  # type: ignore[attr-defined]
    if is_sqlite(session.get_bind()):
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    session.execute(
        insert(table)
        .values(key=key, failures=0, window_start=now, next_at=now)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    row = session.execute(
        sa.select(SignInThrottle).where(SignInThrottle.key == key).with_for_update()  # type: ignore[arg-type]
    ).scalar_one()
    session.refresh(row)  # the committed values, not a stale identity-map copy
    return row


def charge(
    session: Session, account: str, address: str, now: datetime | None = None, *, browser: str | None = None
) -> None:
    """Charge one attempt to every key, or raise :class:`Throttled` if any key must still wait.

    Call inside a short write transaction and commit it *before* checking the password.
    A refused attempt is not charged: waiting out the delay is always enough.
    """
    now = now or utcnow()
    known = is_known_good(session, account, address, now)
    browser_good = bool(browser) and is_known_good(session, account, f"browser:{browser}", now)
    rows = []
    for key, rule in keys_for(account, address, known_good=known, browser=browser, browser_good=browser_good):
        row = _locked_row(session, key, now)
        if row.window_start < now - WINDOW:
            row.failures, row.window_start, row.next_at = 0, now, now
        rows.append((row, rule))
    # Only a counter past its free attempts makes anyone wait. (A free attempt sets next_at to its own
    # start time, which is later than ours when it started after us but locked the row first: two
    # people signing in at once from one address must not see "try again in 1 second".)
    wait = max(((row.next_at - now).total_seconds() for row, rule in rows if row.failures > rule.free), default=0.0)
    if wait > 0:
        raise Throttled(math.ceil(wait))
    for row, rule in rows:
        row.failures += 1
        row.next_at = now + timedelta(seconds=delay_after(rule, row.failures))
        session.add(row)
    session.flush()


def succeeded(
    session: Session, account: str, address: str, now: datetime | None = None, *, browser: str | None = None
) -> None:
    """A right password: clear the account's counters, refund the address the charge of this
    attempt (an office signing in at nine must not slow itself down; its failed guesses stay
    counted) and remember the address as known good for the account."""
    now = now or utcnow()
    session.execute(
        sa.delete(SignInThrottle).where(
            SignInThrottle.key.in_(  # type: ignore[attr-defined]
                [f"pair:{address}|{account}", f"account:{account}", f"browser:{browser}|{account}"]
            )
        )
    )
    place = session.execute(
        sa.select(SignInThrottle).where(SignInThrottle.key == f"address:{address}").with_for_update()  # type: ignore[arg-type]
    ).scalar_one_or_none()
    if place is not None and place.failures > 0:
        place.failures -= 1
        place.next_at = min(place.next_at, now + timedelta(seconds=delay_after(ADDRESS, place.failures)))
        session.add(place)
    for place_key in [address, f"browser:{browser}"] if browser else [address]:
        good = session.get(SignInThrottle, _good_key(account, place_key))
        if good is None:
            session.add(SignInThrottle(key=_good_key(account, place_key), failures=0, window_start=now, next_at=now))
        else:
            good.window_start = now
            session.add(good)
    session.flush()


def clear_account(session: Session, account: str) -> None:
    """An administrator reset the password: the account starts with a clean slate everywhere."""
    session.execute(
        sa.delete(SignInThrottle).where(
            sa.or_(
                SignInThrottle.key == f"account:{account}",  # type: ignore[arg-type]
                SignInThrottle.key.like(f"pair:%|{_escape_like(account)}", escape="\\"),  # type: ignore[attr-defined]
                SignInThrottle.key.like(f"browser:%|{_escape_like(account)}", escape="\\"),  # type: ignore[attr-defined]
            )
        )
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def purge(session: Session, now: datetime | None = None) -> None:
    """Forget what no rule needs any more: counters and log rows past the window, old known-good marks."""
    now = now or utcnow()
    session.execute(sa.delete(LoginAttempt).where(LoginAttempt.at < now - WINDOW))  # type: ignore[arg-type]
    session.execute(
        sa.delete(SignInThrottle).where(
            sa.or_(
                sa.and_(
                    ~SignInThrottle.key.startswith("good:"),  # type: ignore[attr-defined]
                    SignInThrottle.window_start < now - WINDOW,  # type: ignore[arg-type]
                    SignInThrottle.next_at < now,  # type: ignore[arg-type]
                ),
                sa.and_(
                    SignInThrottle.key.startswith("good:"),  # type: ignore[attr-defined]
                    SignInThrottle.window_start < now - KNOWN_GOOD_FOR,  # type: ignore[arg-type]
                ),
            )
        )
    )
