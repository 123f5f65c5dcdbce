"""Sign-in: argon2 hashes, wrong/disabled/locked accounts, sessions that expire and revoke."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlmodel import Session, select

from safereview.db.engine import make_engine, session_scope
from safereview.db.models import LoginAttempt, User, UserSession, utcnow
from safereview.settings import Config
from safereview.workflow import auth
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


def test_sign_in_and_wrong_password(engine: sa.Engine) -> None:
    _add(engine)
    with session_scope(engine) as s:
        assert auth.authenticate(s, "alice", PW).username == "alice"
    with pytest.raises(AuthError) as wrong, session_scope(engine) as s:
        auth.authenticate(s, "alice", PW + "x")
    with pytest.raises(AuthError) as unknown, session_scope(engine) as s:
        auth.authenticate(s, "mallory", PW)
    # The same message for a wrong password and an unknown user: no username probing.
    assert str(wrong.value) == str(unknown.value)
    with Session(engine) as s:
        assert s.exec(select(User).where(User.username == "alice")).one().last_login_at is not None


def test_disabled_user_cannot_sign_in_and_loses_sessions(engine: sa.Engine) -> None:
    _add(engine)
    with session_scope(engine) as s:
        token = auth.start_session(s, auth.authenticate(s, "alice", PW))
    with session_scope(engine) as s:
        auth.set_disabled(s, "alice", True, actor=SYSTEM)
    with session_scope(engine) as s:
        assert auth.user_for_token(s, token) is None
    with pytest.raises(AuthError, match="disabled"), session_scope(engine) as s:
        auth.authenticate(s, "alice", PW)
    with session_scope(engine) as s:
        auth.set_disabled(s, "alice", False, actor=SYSTEM)
        assert auth.authenticate(s, "alice", PW).username == "alice"


def test_rate_limit_locks_after_five_failures_across_replicas(db_url: str, engine: sa.Engine) -> None:
    _add(engine)
    other_replica = make_engine(db_url)  # a second engine = another app process on the same DB
    for i in range(auth.MAX_FAILURES):
        eng = engine if i % 2 else other_replica
        with pytest.raises(AuthError, match="Wrong"):
            auth.authenticate_and_record(eng, "alice", "wrong password")
    # Now even the right password is refused, on either replica.
    for eng in (engine, other_replica):
        with pytest.raises(AuthError, match="Too many"):
            auth.authenticate_and_record(eng, "alice", PW)
    with Session(engine) as s:
        fails = s.exec(select(LoginAttempt).where(LoginAttempt.username == "alice")).all()
        assert len(fails) == auth.MAX_FAILURES + 2 and not any(a.ok for a in fails)
    # After the window has passed the lock lifts.
    later = utcnow() + auth.LOCK_WINDOW + timedelta(seconds=1)
    with session_scope(engine) as s:
        assert auth.authenticate(s, "alice", PW, now=later).username == "alice"
    other_replica.dispose()


def test_reset_password_lifts_lock_and_enables_imported_users(engine: sa.Engine) -> None:
    _add(engine, "imported", password=None)
    with Session(engine) as s:
        assert s.exec(select(User).where(User.username == "imported")).one().password_hash.startswith("!")
    for guess in ("", "!", PW):
        with pytest.raises(AuthError):
            auth.authenticate_and_record(engine, "imported", guess)
    with session_scope(engine) as s:
        auth.reset_password(s, "imported", "a new password", actor=SYSTEM)
    with session_scope(engine) as s:
        assert auth.authenticate(s, "imported", "a new password").username == "imported"

    _add(engine, "bob")
    for _ in range(auth.MAX_FAILURES):
        with pytest.raises(AuthError):
            auth.authenticate_and_record(engine, "bob", "nope nope")
    with pytest.raises(AuthError, match="Too many"):
        auth.authenticate_and_record(engine, "bob", PW)
    with session_scope(engine) as s:
        auth.reset_password(s, "bob", "another password", actor=SYSTEM)
    assert auth.authenticate_and_record(engine, "bob", "another password").username == "bob"


def test_sessions_store_only_the_hash_expire_and_end(engine: sa.Engine) -> None:
    _add(engine)
    cfg = Config(session_hours=2)
    with session_scope(engine) as s:
        user = auth.authenticate(s, "alice", PW)
        token = auth.start_session(s, user, config=cfg)
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
            auth.reset_password(s, "admin", "whatever123", actor=lead)
