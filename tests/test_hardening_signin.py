"""Sign-in under attack: guesses that race, spam that would stall reviewers, unbounded argon2.

Each test performs the attack the security pass made (issue "Security II"): forty
simultaneous guesses on one account, a password check that held SQLite's write lock while
a reviewer waited to submit, and a flood of checks each taking 64 MiB.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import hardening_support as H
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from test_workflow_auth import _add, _sign_in

from safereview.db.engine import make_engine, session_scope
from safereview.db.models import utcnow
from safereview.workflow import auth, throttle
from safereview.workflow.errors import AuthError
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")
PW = "correct horse battery"


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def _outcome(engine: sa.Engine, password: str) -> str:
    try:
        auth.authenticate_and_record(engine, "alice", password, address="203.0.113.9")
        return "in"
    except AuthError as exc:
        return "throttled" if "Too many" in str(exc) else "checked"


def test_forty_simultaneous_guesses_cannot_race_past_the_limit(db_url: str, engine: sa.Engine) -> None:
    """Charged before the check under a row lock: the free attempts and one more are checked,
    the rest wait, and the right password hidden among them does not get in."""
    with session_scope(engine) as s:
        auth.create_user(s, "alice", PW, "annotator", actor=SYSTEM)
    replicas = [engine, make_engine(db_url)]  # two processes' pools on one database
    guesses = [f"guess number {i}" for i in range(39)]
    guesses.insert(20, PW)
    start = threading.Barrier(8)

    def attempt(i: int) -> str:
        if i < 8:
            start.wait()
        return _outcome(replicas[i % 2], guesses[i])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(len(guesses))))
    checked = results.count("checked") + results.count("in")
    assert checked <= throttle.PAIR.free + 1, results
    assert results.count("throttled") >= len(guesses) - throttle.PAIR.free - 1
    replicas[1].dispose()
    H.tally(attacks_tried=len(guesses), attacks_held=len(guesses), faults_injected=len(guesses))


def test_password_check_holds_no_write_lock(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """While argon2 runs, a reviewer's write goes through at once (it used to wait for the
    whole check inside SQLite's BEGIN IMMEDIATE)."""
    from safereview.db.engine import init_db

    engine = init_db(sqlite_url)
    with session_scope(engine) as s:
        auth.create_user(s, "alice", PW, "annotator", actor=SYSTEM)
    reviewer = sa.create_engine(sqlite_url, connect_args={"timeout": 0.2, "isolation_level": None})
    wrote: list[bool] = []

    class VerifyWhileSomeoneWrites(PasswordHasher):
        def verify(self, stored: str | bytes, password: str | bytes) -> bool:
            with reviewer.connect() as conn:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # "database is locked" after 0.2 s if held
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS reviewer_probe (x INTEGER)")
                conn.exec_driver_sql("COMMIT")
                wrote.append(True)
            return super().verify(stored, password)

    monkeypatch.setattr(auth, "_hasher", VerifyWhileSomeoneWrites(time_cost=1, memory_cost=1024, parallelism=1))
    assert auth.authenticate_and_record(engine, "alice", PW).username == "alice"
    with pytest.raises(AuthError):
        auth.authenticate_and_record(engine, "nobody", PW)  # the dummy check: no lock either
    assert wrote == [True, True]
    reviewer.dispose()
    H.tally(attacks_tried=2, attacks_held=2)
    engine.dispose()


def test_concurrent_password_checks_are_capped(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many sign-ins arrive, at most SAFEREVIEW_SIGNIN_CONCURRENCY argon2 checks run
    at once in a process (each costs 64 MiB at the library's default parameters)."""
    monkeypatch.setattr(auth, "_slots", threading.BoundedSemaphore(2))
    running, peak = [0], [0]
    lock = threading.Lock()

    class SlowVerify(PasswordHasher):
        def verify(self, stored: str | bytes, password: str | bytes) -> bool:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            return super().verify(stored, password)

    monkeypatch.setattr(auth, "_hasher", SlowVerify(time_cost=1, memory_cost=1024, parallelism=1))
    with ThreadPoolExecutor(10) as pool:
        results = list(
            pool.map(
                lambda i: _try(engine, f"user-{i}", f"10.1.0.{i}"),
                range(10),
            )
        )
    assert results == ["checked"] * 10  # all got their (wrong) answer, none was turned away
    assert peak[0] == 2
    H.tally(attacks_tried=10, attacks_held=10)


def _try(engine: sa.Engine, name: str, address: str) -> str:
    try:
        auth.authenticate_and_record(engine, name, "some password here", address=address)
        return "in"
    except AuthError as exc:
        return "throttled" if "Too many" in str(exc) else "checked"


def test_a_check_that_finds_no_free_slot_says_busy(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    slots = threading.BoundedSemaphore(1)
    slots.acquire()  # another sign-in holds the only slot
    monkeypatch.setattr(auth, "_slots", slots)
    monkeypatch.setattr(auth, "SLOT_WAIT_S", 0.05)
    with pytest.raises(AuthError, match="busy"):
        auth.authenticate_and_record(engine, "alice", PW)


def test_random_usernames_from_one_address_are_limited(engine: sa.Engine) -> None:
    t0 = utcnow()
    for i in range(throttle.ADDRESS.free + 1):
        with pytest.raises(AuthError, match="Wrong"):
            _sign_in(engine, f"nobody-{i}", "whatever whatever", address="203.0.113.5", now=t0)
    with pytest.raises(AuthError, match="Try again"):
        _sign_in(engine, "nobody-else", "whatever whatever", address="203.0.113.5", now=t0)
    n = throttle.ADDRESS.free + 2
    H.tally(attacks_tried=n, attacks_held=n, faults_injected=n)


def test_a_stranger_cannot_lock_the_account_for_its_owner(engine: sa.Engine) -> None:
    """Guesses from many addresses slow the account down for new addresses, never for one
    the owner has signed in from before."""
    _add(engine)
    t0 = utcnow()
    assert _sign_in(engine, "alice", PW, address="198.51.100.1", now=t0).username == "alice"  # alice's office
    for i in range(throttle.ACCOUNT.free + 5):
        with pytest.raises(AuthError):
            _sign_in(engine, "alice", "guess guess", address=f"192.0.2.{i}", now=t0)
    with pytest.raises(AuthError, match="Try again"):
        _sign_in(engine, "alice", PW, address="192.0.2.200", now=t0)  # a new place: waits
    assert _sign_in(engine, "alice", PW, address="198.51.100.1", now=t0).username == "alice"
    n = throttle.ACCOUNT.free + 6
    H.tally(attacks_tried=n, attacks_held=n, faults_injected=n)


def test_the_owners_own_browser_is_never_held_up_by_guesses_from_its_address(engine: sa.Engine) -> None:
    """Someone on the same network (the same address: an office NAT, the same laptop) guesses
    alice's password until the account and the address back off; alice, in the browser she
    signed in from before, signs in at once: that browser has a counter of its own."""
    _add(engine)
    t0 = utcnow()
    assert _sign_in(engine, "alice", PW, address="10.9.9.9", browser="alices-browser", now=t0).username == "alice"
    n = throttle.ADDRESS.free + throttle.ACCOUNT.free
    for i in range(n):
        with pytest.raises(AuthError):
            _sign_in(engine, "alice", f"guess {i} guess", address="10.9.9.9", browser="attackers-browser", now=t0)
    with pytest.raises(AuthError, match="Try again"):
        _sign_in(engine, "alice", PW, address="10.9.9.9", browser="attackers-browser", now=t0)
    with pytest.raises(AuthError, match="Try again"):
        _sign_in(engine, "alice", PW, address="10.9.9.9", now=t0)  # no browser id: counted by address
    assert _sign_in(engine, "alice", PW, address="10.9.9.9", browser="alices-browser", now=t0).username == "alice"
    # her browser's own counter still limits guessing from it
    for i in range(throttle.PAIR.free + 1):
        with pytest.raises(AuthError):
            _sign_in(engine, "alice", f"wrong {i} wrong", address="10.9.9.9", browser="alices-browser", now=t0)
    with pytest.raises(AuthError, match="Try again"):
        _sign_in(engine, "alice", PW, address="10.9.9.9", browser="alices-browser", now=t0)
    H.tally(attacks_tried=n + 2, attacks_held=n + 2, faults_injected=n)
