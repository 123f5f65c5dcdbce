"""Users, passwords and sign-in sessions, all state in the database.

Passwords are hashed with argon2id (argon2-cffi). Failed sign-ins are rows in
``LoginAttempt``, so the rate limit holds across app replicas. Session tokens are random;
only their SHA-256 is stored, so a database leak does not hand out live sessions.
Imported users get an unusable hash (``"!"`` prefix) and cannot sign in until an admin
resets their password.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel import Session, select

from safereview.db.bulk import bulk_insert
from safereview.db.models import LoginAttempt, User, UserSession, utcnow
from safereview.settings import Config
from safereview.workflow.errors import AuthError, InvalidInput, NotFound
from safereview.workflow.policies import require, validate_role

MAX_FAILURES = 5  # failed attempts per username ...
LOCK_WINDOW = timedelta(minutes=15)  # ... within this window lock the account
MIN_PASSWORD_LEN = 8
MAX_PASSWORD_LEN = 1024  # argon2 handles any length; cap to bound the work per attempt
UNUSABLE_PREFIX = "!"

_hasher = PasswordHasher()
# A real hash to verify against when the user does not exist, so response time does not
# reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password-" + secrets.token_hex(8))

_WRONG = "Wrong username or password."
_LOCKED = "Too many failed sign-ins for this account. Try again in 15 minutes."
_DISABLED = "This account is disabled. Ask an administrator."


def hash_password(password: str) -> str:
    """argon2id hash of ``password`` after checking its length."""
    validate_password(password)
    return _hasher.hash(password)


def unusable_hash() -> str:
    """A hash no password matches (for imported users)."""
    return UNUSABLE_PREFIX + secrets.token_hex(16)


def has_usable_password(user: User) -> bool:
    """False for imported people (and anyone given :func:`unusable_hash`) until a reset."""
    return not user.password_hash.startswith(UNUSABLE_PREFIX)


def validate_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LEN:
        raise InvalidInput(f"password: at least {MIN_PASSWORD_LEN} characters")
    if len(password) > MAX_PASSWORD_LEN:
        raise InvalidInput(f"password: at most {MAX_PASSWORD_LEN} characters")


def validate_username(username: str) -> str:
    """Strip and check a username: 1-80 characters, no control or invisible characters."""
    if not isinstance(username, str):
        raise InvalidInput("username: must be text")
    name = unicodedata.normalize("NFC", username.strip())
    if not name:
        raise InvalidInput("username: required")
    if len(name) > 80:
        raise InvalidInput("username: at most 80 characters")
    for ch in name:
        if unicodedata.category(ch)[0] in ("C", "Z") and ch != " ":
            raise InvalidInput("username: control, format or separator characters are not allowed")
    return name


def _user(session: Session, username: str) -> User | None:
    return session.exec(select(User).where(User.username == username)).first()


def get_user(session: Session, username: str) -> User:
    """The named user or :class:`NotFound`."""
    user = _user(session, validate_username(username))
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


def create_user(
    session: Session, username: str, password: str | None, role: str, display_name: str = "", *, actor: Any
) -> User:
    """Create a user; ``password=None`` gives an unusable hash (sign-in needs a reset first).

    ``actor`` must be allowed ``manage_users`` (an admin, or the CLI's system principal).
    """
    require(actor, "manage_users")
    name = validate_username(username)
    validate_role(role)
    if _user(session, name) is not None:
        raise InvalidInput(f"username: {name!r} is taken")
    pw_hash = unusable_hash() if password is None else hash_password(password)
    user = User(username=name, display_name=(display_name or "")[:200], password_hash=pw_hash, role=role)
    session.add(user)
    session.flush()
    return user


def _recent_failures(session: Session, username: str, now: datetime) -> int:
    """Failures since the last success within the lock window."""
    since = now - LOCK_WINDOW
    last_ok = session.exec(
        select(sa.func.max(LoginAttempt.at)).where(
            LoginAttempt.username == username,
            LoginAttempt.ok.is_(True),  # type: ignore[union-attr]
            LoginAttempt.at >= since,
        )
    ).one()
    if last_ok is not None:
        since = max(since, last_ok)
    return session.exec(
        select(sa.func.count())
        .select_from(LoginAttempt)
        .where(
            LoginAttempt.username == username,
            LoginAttempt.ok.is_(False),  # type: ignore[union-attr]
            LoginAttempt.at > since if last_ok is not None else LoginAttempt.at >= since,
        )
    ).one()


def authenticate(session: Session, username: str, password: str, *, now: datetime | None = None) -> User:
    """Check credentials; raise :class:`AuthError` with a user-safe message on any failure.

    Locked (``MAX_FAILURES`` failures within ``LOCK_WINDOW``) accounts are refused even with
    the right password, so guessing cannot continue. The attempt is recorded either way;
    the caller must commit the session (also on failure) for the rate limit to count it:
    ``session_scope`` rolls back on exceptions, so use :func:`authenticate_and_record` from
    the app, which commits the attempt itself.
    """
    now = now or utcnow()
    try:
        name = validate_username(username)
    except InvalidInput:
        raise AuthError(_WRONG) from None
    name = name[:80]
    if _recent_failures(session, name, now) >= MAX_FAILURES:
        session.add(LoginAttempt(username=name, ok=False, at=now))
        raise AuthError(_LOCKED)
    user = _user(session, name)
    ok = False
    if isinstance(password, str) and len(password) <= MAX_PASSWORD_LEN:
        stored = user.password_hash if user is not None else _DUMMY_HASH
        if stored.startswith(UNUSABLE_PREFIX):
            stored = _DUMMY_HASH
            user_ok_possible = False
        else:
            user_ok_possible = user is not None
        try:
            ok = _hasher.verify(stored, password) and user_ok_possible
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
    session.add(LoginAttempt(username=name, ok=ok, at=now))
    if not ok or user is None:
        raise AuthError(_WRONG)
    if user.disabled:
        raise AuthError(_DISABLED)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.last_login_at = now
    session.add(user)
    session.flush()
    return user


def authenticate_and_record(engine: sa.Engine, username: str, password: str) -> User:
    """:func:`authenticate` in its own transaction that is committed even when sign-in fails."""
    from safereview.db.engine import session_scope

    error: AuthError | None = None
    with session_scope(engine) as session:
        try:
            user = authenticate(session, username, password)
        except AuthError as exc:
            error = exc
    if error is not None:
        raise error
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def start_session(session: Session, user: User, *, config: Config | None = None, now: datetime | None = None) -> str:
    """Create a sign-in session and return its token (shown once; only its hash is stored)."""
    now = now or utcnow()
    hours = (config or Config()).session_hours
    token = secrets.token_urlsafe(32)
    session.add(
        UserSession(
            token_sha256=_token_hash(token),
            user_id=user.id,  # type: ignore[arg-type]
            created_at=now,
            expires_at=now + timedelta(hours=hours),
        )
    )
    session.flush()
    return token


def user_for_token(session: Session, token: str | None, *, now: datetime | None = None) -> User | None:
    """The signed-in user for ``token``; None when unknown, expired, revoked or disabled."""
    if not token or not isinstance(token, str) or len(token) > 200:
        return None
    now = now or utcnow()
    row = session.get(UserSession, _token_hash(token))
    if row is None or row.revoked or row.expires_at <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return user


def end_session(session: Session, token: str | None) -> None:
    """Revoke the session (sign out). Unknown tokens are ignored."""
    if not token or not isinstance(token, str) or len(token) > 200:
        return
    row = session.get(UserSession, _token_hash(token))
    if row is not None and not row.revoked:
        row.revoked = True
        session.add(row)
        session.flush()


def _revoke_all(session: Session, user: User) -> None:
    session.execute(
        sa.update(UserSession)
        .where(UserSession.user_id == user.id)  # type: ignore[arg-type]
        .values(revoked=True)
    )


def set_disabled(session: Session, username: str, disabled: bool, *, actor: Any) -> User:
    """Disable or re-enable a user; disabling also revokes their sessions.

    ``actor`` is checked for ``manage_users`` (the CLI passes its :class:`SystemPrincipal`).
    """
    require(actor, "manage_users")
    user = get_user(session, username)
    user.disabled = bool(disabled)
    session.add(user)
    if disabled:
        _revoke_all(session, user)
    session.flush()
    return user


def reset_password(session: Session, username: str, new_password: str, *, actor: Any) -> User:
    """Set a new password, revoke the user's sessions and clear their lock-out."""
    require(actor, "manage_users")
    user = get_user(session, username)
    user.password_hash = hash_password(new_password)
    session.add(user)
    _revoke_all(session, user)
    # A success row ends the current failure streak (see _recent_failures).
    session.add(LoginAttempt(username=user.username, ok=True, at=utcnow()))
    session.flush()
    return user


def set_role(session: Session, username: str, role: str, *, actor: Any) -> User:
    """Change a user's role and sign them out everywhere, so the new role applies at once.

    An admin cannot demote themself (the last admin could otherwise lock everyone out of
    user management); the CLI's system principal can, since whoever runs it owns the database.
    """
    require(actor, "manage_users")
    validate_role(role)
    user = get_user(session, username)
    if actor.id is not None and user.id == actor.id and role != "admin":
        raise InvalidInput("role: you cannot remove your own admin role")
    if user.role != role:
        user.role = role
        session.add(user)
        _revoke_all(session, user)
    session.flush()
    return user


def list_users(session: Session, *, actor: Any) -> list[User]:
    """Every user by username (``actor`` checked for ``manage_users``)."""
    require(actor, "manage_users")
    return list(session.exec(select(User).order_by(User.username)).all())


# ---------------------------------------------------------------------------------------
# Bulk: the importer's people, in a few statements whatever their number
# ---------------------------------------------------------------------------------------

LOOKUP_CHUNK = 900  # names per IN (...) look-up (SQLite's old limit of 999 bound values)


def user_ids(conn: sa.Connection, usernames: Iterable[str]) -> dict[str, int]:
    """``{username: id}`` of the named users that exist (names as :func:`validate_username` returns them)."""
    t = User.__table__  # type: ignore[attr-defined]
    names = sorted(set(usernames))
    out: dict[str, int] = {}
    for k in range(0, len(names), LOOKUP_CHUNK):
        chunk = names[k : k + LOOKUP_CHUNK]
        out.update(
            (name, uid) for uid, name in conn.execute(sa.select(t.c.id, t.c.username).where(t.c.username.in_(chunk)))
        )
    return out


def create_placeholder_users(
    conn: sa.Connection, people: Mapping[str, str], *, role: str = "annotator", now: datetime | None = None
) -> dict[str, int]:
    """Create the users ``people`` names (username → display name) in one bulk insert; return their ids.

    The rule of :func:`create_user` with ``password=None``: the same username check and an
    unusable password hash, so they cannot sign in until an admin resets the password. The
    caller makes sure the names do not exist yet (:func:`user_ids`); a name taken meanwhile
    by another transaction fails the insert (an IntegrityError), never half-creates.
    """
    if not people:
        return {}
    validate_role(role)
    now = now or utcnow()
    rows = [
        (validate_username(name), (display or "")[:200], unusable_hash(), role, False, now)
        for name, display in people.items()
    ]
    t = User.__table__  # type: ignore[attr-defined]
    bulk_insert(
        conn, t, ["username", "display_name", "password_hash", "role", "disabled", "created_at"], rows, process=True
    )
    return user_ids(conn, [r[0] for r in rows])
