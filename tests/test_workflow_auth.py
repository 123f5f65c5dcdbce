"""Sign-in: argon2 hashes, wrong/disabled/locked accounts, sessions that expire and revoke."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlmodel import Session, select

from safereview.db.engine import make_engine, session_scope
from safereview.db.models import LoginAttempt, SignInThrottle, User, UserSession, utcnow
from safereview.settings import Config
from safereview.workflow import auth, throttle
from safereview.workflow.errors import AuthError, Forbidden, InvalidInput
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be

PW = "correct horse battery"


@pytest.fixture(autouse=True)
def cheap_argon2(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with small cost parameters keeps the suite fast; one test keeps the real ones."""
    if not request.node.name.startswith("test_password_is_stored_as_argon2id"):
        monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def _add(engine: sa.Engine, name: str = "alice", role: str = "annotator", password: str | None = PW) -> None:
    with session_scope(engine) as s:
        auth.create_user(s, name, password, role, display_name="Alice", actor=SYSTEM)


def test_password_is_stored_as_argon2id_not_plaintext(engine: sa.Engine) -> None:
    _add(engine)
    with Session(engine) as s:
        user = s.exec(select(User).where(User.username == "alice")).one()
    assert PW not in user.password_hash
    assert user.password_hash.startswith("$argon2id$")
    assert not PasswordHasher().check_needs_rehash(user.password_hash)  # library-recommended cost
    assert PasswordHasher().verify(user.password_hash, PW)
    assert user.role == "annotator" and user.display_name == "Alice"


def _sign_in(engine: sa.Engine, name: str, password: str, **kw: object) -> User:
    return auth.authenticate_and_record(engine, name, password, **kw)  # type: ignore[arg-type]


def test_sign_in_and_wrong_password(engine: sa.Engine) -> None:
    _add(engine)
    assert _sign_in(engine, "alice", PW).username == "alice"
    with pytest.raises(AuthError) as wrong:
        _sign_in(engine, "alice", PW + "x")
    with pytest.raises(AuthError) as unknown:
        _sign_in(engine, "mallory", PW)
    # The same message for a wrong password and an unknown user: no username probing.
    assert str(wrong.value) == str(unknown.value)
    with Session(engine) as s:
        assert s.exec(select(User).where(User.username == "alice")).one().last_login_at is not None
        log = s.exec(select(LoginAttempt).order_by(LoginAttempt.id)).all()  # type: ignore[arg-type]
    # The log keeps accounts, never what was typed for a name that matches none (often a password).
    assert [(a.username, a.ok) for a in log] == [("alice", True), ("alice", False), ("", False)]
    assert all(a.address == "local" for a in log)


def test_disabled_account_answers_like_a_wrong_password(engine: sa.Engine) -> None:
    _add(engine)
    with session_scope(engine) as s:
        token = auth.start_session(s, auth.get_user(s, "alice"))
        auth.set_disabled(s, "alice", True, actor=SYSTEM)
    with session_scope(engine) as s:
        assert auth.user_for_token(s, token) is None
    with pytest.raises(AuthError) as right:
        _sign_in(engine, "alice", PW, address="10.0.0.1")
    with pytest.raises(AuthError) as wrong:
        _sign_in(engine, "alice", "not the password", address="10.0.0.2")
    # The right password must not be confirmed by a different answer.
    assert str(right.value) == str(wrong.value) and "disabled" in str(right.value)
    with session_scope(engine) as s:
        auth.set_disabled(s, "alice", False, actor=SYSTEM)
    assert _sign_in(engine, "alice", PW, address="10.0.0.1").username == "alice"


def test_guessing_backs_off_per_account_and_address_across_replicas(db_url: str, engine: sa.Engine) -> None:
    """After the free attempts each guess waits longer (1 s, 2 s, ...), on every replica;
    the delay is served before the password is checked, so even the right one waits."""
    _add(engine)
    other_replica = make_engine(db_url)  # a second engine = another app process on the same DB
    t0 = utcnow()
    for i in range(throttle.PAIR.free):
        eng = engine if i % 2 else other_replica
        with pytest.raises(AuthError, match="Wrong"):
            _sign_in(eng, "alice", "wrong password", address="10.0.0.9", now=t0)
    with pytest.raises(AuthError, match="Wrong"):  # the 4th is checked, and starts a 1 s delay
        _sign_in(engine, "alice", "wrong password", address="10.0.0.9", now=t0)
    for eng in (engine, other_replica):
        with pytest.raises(AuthError, match="Try again in 1 second\\."):
            _sign_in(eng, "alice", PW, address="10.0.0.9", now=t0)
    with pytest.raises(AuthError, match="Wrong"):  # after the delay: checked, and 2 s to wait
        _sign_in(engine, "alice", "wrong password", address="10.0.0.9", now=t0 + timedelta(seconds=1))
    with pytest.raises(AuthError, match="Try again in 2 seconds"):
        _sign_in(engine, "alice", PW, address="10.0.0.9", now=t0 + timedelta(seconds=1.5))
    # Another address is not held up by this one's guesses; alice signs in from home.
    assert _sign_in(other_replica, "alice", PW, address="10.0.0.7", now=t0 + timedelta(seconds=2)).username == "alice"
    # Once the window has passed the counters start again.
    later = t0 + throttle.WINDOW + timedelta(seconds=1)
    assert _sign_in(engine, "alice", PW, address="10.0.0.9", now=later).username == "alice"
    other_replica.dispose()


def test_simultaneous_sign_ins_from_one_address_do_not_wait(engine: sa.Engine) -> None:
    """Two people behind one address sign in at once, and the one who started later locks the
    address's counter first: the earlier one is not told to wait (it was, for "1 second", when
    20 annotators signed in through the proxy at the start of a shift)."""
    for name in ("alice", "bob", "carol"):
        _add(engine, name)
    t0 = utcnow()
    assert _sign_in(engine, "bob", PW, address="10.0.0.9", now=t0 + timedelta(milliseconds=300)).username == "bob"
    assert _sign_in(engine, "alice", PW, address="10.0.0.9", now=t0).username == "alice"
    with session_scope(engine) as s:  # past the free failures, the address's delay still holds everyone
        for i in range(throttle.ADDRESS.free + 1):
            throttle.charge(s, f"guess{i}", "10.0.0.9", t0)
    with pytest.raises(AuthError, match="Try again in 1 second\\."):
        _sign_in(engine, "carol", PW, address="10.0.0.9", now=t0)


def test_reset_password_clears_the_back_off_and_enables_imported_users(engine: sa.Engine) -> None:
    _add(engine, "imported", password=None)
    with Session(engine) as s:
        assert s.exec(select(User).where(User.username == "imported")).one().password_hash.startswith("!")
    for guess in ("", "!", PW):
        with pytest.raises(AuthError):
            _sign_in(engine, "imported", guess)
    with session_scope(engine) as s:
        auth.reset_password(s, "imported", "a new password", actor=SYSTEM)
    assert _sign_in(engine, "imported", "a new password").username == "imported"

    _add(engine, "bob")
    t0 = utcnow()
    for _ in range(throttle.PAIR.free + 1):
        with pytest.raises(AuthError):
            _sign_in(engine, "bob", "nope nope", now=t0)
    with pytest.raises(AuthError, match="Too many"):
        _sign_in(engine, "bob", PW, now=t0)
    with session_scope(engine) as s:
        auth.reset_password(s, "bob", "another password", actor=SYSTEM)
    assert _sign_in(engine, "bob", "another password", now=t0).username == "bob"


def test_old_attempts_and_counters_are_purged(engine: sa.Engine) -> None:
    _add(engine)
    t0 = utcnow()
    with pytest.raises(AuthError):
        _sign_in(engine, "alice", "wrong password", now=t0)
    later = t0 + throttle.WINDOW + timedelta(minutes=1)
    _sign_in(engine, "alice", PW, now=later)
    with Session(engine) as s:
        assert [a.ok for a in s.exec(select(LoginAttempt))] == [True]
        keys = {r.key for r in s.exec(select(SignInThrottle))}
    assert keys == {"address:local", "good:local|alice"}


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("12345678", "at least 12"),
        ("password", "at least 12"),
        ("            ", "repetitive"),
        ("abababababababab", "repetitive"),
        ("123456789012", "easily guessed"),  # a sequence
        ("qwertyuiop12", "easily guessed"),  # a keyboard row
        ("Passw0rd1234", "easily guessed"),  # a common password in l33t with digits added
        ("carolcarol12", "easily guessed"),  # the username, twice
        ("safereview2026", "easily guessed"),  # the tool's name
        ("carol-the-lead", None),
        ("correct horse battery", None),
        ("zeppelin lantern §", None),  # any characters: no composition rules
    ],
)
def test_password_policy_follows_nist(password: str, why: str | None) -> None:
    if why is None:
        auth.validate_password(password, username="carol")
        return
    with pytest.raises(InvalidInput, match=why):
        auth.validate_password(password, username="carol")


def test_password_may_not_be_the_username(engine: sa.Engine) -> None:
    with pytest.raises(InvalidInput, match="easily guessed"), session_scope(engine) as s:
        auth.create_user(s, "longusername42", "LongUserName42", "annotator", actor=SYSTEM)


def test_sessions_store_only_the_hash_expire_and_end(engine: sa.Engine) -> None:
    _add(engine)
    cfg = Config(session_hours=2)
    with session_scope(engine) as s:
        token = auth.start_session(s, auth.get_user(s, "alice"), config=cfg)
    with Session(engine) as s:
        row = s.exec(select(UserSession)).one()
        assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest() and token not in row.token_sha256
        assert timedelta(hours=1.9) < row.expires_at - row.created_at <= timedelta(hours=2)
        assert auth.user_for_token(s, token).username == "alice"  # type: ignore[union-attr]
        assert auth.user_for_token(s, token, now=utcnow() + timedelta(hours=2, seconds=1)) is None
        assert auth.user_for_token(s, token + "x") is None
        assert auth.user_for_token(s, "") is None
    with session_scope(engine) as s:
        auth.end_session(s, token)
    with Session(engine) as s:
        assert auth.user_for_token(s, token) is None


@pytest.mark.parametrize("bad", ["", "   ", "a\x00b", "tab\there", "new\nline", "x" * 81, "zero\u200bwidth"])
def test_invalid_usernames_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        auth.validate_username(bad)


def test_create_user_validation(engine: sa.Engine) -> None:
    _add(engine)
    with pytest.raises(InvalidInput, match="taken"), session_scope(engine) as s:
        auth.create_user(s, "alice", PW, "annotator", actor=SYSTEM)
    with pytest.raises(InvalidInput, match="role"), session_scope(engine) as s:
        auth.create_user(s, "carol", PW, "root", actor=SYSTEM)
    with pytest.raises(InvalidInput, match="password"), session_scope(engine) as s:
        auth.create_user(s, "carol", "short", "lead", actor=SYSTEM)


def test_admin_functions_check_the_actor(engine: sa.Engine) -> None:
    _add(engine, "admin", "admin")
    _add(engine, "lead", "lead")
    with session_scope(engine) as s:
        admin = auth.get_user(s, "admin")
        lead = auth.get_user(s, "lead")
        assert [u.username for u in auth.list_users(s, actor=admin)] == ["admin", "lead"]
        with pytest.raises(Forbidden):
            auth.list_users(s, actor=lead)
        with pytest.raises(Forbidden):
            auth.set_disabled(s, "admin", True, actor=lead)
        with pytest.raises(Forbidden):
            auth.reset_password(s, "admin", "whatever whatever", actor=lead)
