"""Users, passwords and sign-in sessions, all state in the database.

Passwords are hashed with argon2id (argon2-cffi) and checked outside any transaction, a
few at a time; attempts are limited by back-off counters in the database
(``workflow.throttle``), so the limits hold across app replicas. Session tokens are random;
only their SHA-256 is stored, so a database leak does not hand out live sessions.
Imported users get an unusable hash (``"!"`` prefix) and cannot sign in until an admin
resets their password.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
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

SLOT_WAIT_S = 10.0  # a sign-in waits this long for a free argon2 slot before "busy"
MAX_PASSWORD_LEN = 1024  # argon2 handles any length; cap to bound the work per attempt
UNUSABLE_PREFIX = "!"

_hasher = PasswordHasher()
# A real hash to verify against when the user does not exist, so response time does not
# reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password-" + secrets.token_hex(8))

_WRONG = "Wrong username or password, or the account is disabled (an administrator can help)."
_BUSY = "The server is busy signing people in. Try again in a few seconds."


def hash_password(password: str, *, username: str = "") -> str:
    """argon2id hash of ``password`` after checking it against the policy."""
    validate_password(password, username=username)
    return _hasher.hash(password)


def unusable_hash() -> str:
    """A hash no password matches (for imported users)."""
    return UNUSABLE_PREFIX + secrets.token_hex(16)


def has_usable_password(user: User) -> bool:
    """False for imported people (and anyone given :func:`unusable_hash`) until a reset."""
    return not user.password_hash.startswith(UNUSABLE_PREFIX)


MIN_GUESSES = 1e8  # zxcvbn's "moderate protection" (score 3): online guessing is throttled besides


def validate_password(password: str, *, username: str = "") -> None:
    """NIST SP 800-63B's rules for a chosen password: long enough, and not one that is common,
    repetitive, sequential or built from the username or the tool's name. No composition
    rules: any characters, spaces included.

    The "not easily guessed" part is zxcvbn's estimate (its dictionaries hold the 30,000
    most common leaked passwords, with the l33t, keyboard-pattern, sequence and repeat
    variations people add): fewer than :data:`MIN_GUESSES` estimated guesses is refused.
    """
    least = Config().min_password_length
    if not isinstance(password, str) or len(password) < least:
        raise InvalidInput(f"password: at least {least} characters (a few words make a good one)")
    if len(password) > MAX_PASSWORD_LEN:
        raise InvalidInput(f"password: at most {MAX_PASSWORD_LEN} characters")
    if len(set(password.strip().lower())) <= 2:
        raise InvalidInput("password: too repetitive (only one or two different characters)")
    from zxcvbn import zxcvbn

    context = [w for w in (username.strip(), "safereview", "safe review") if w]
    verdict = zxcvbn(password[:100], user_inputs=context)  # its matching is quadratic; 100 characters is plenty
    if float(verdict["guesses"]) < MIN_GUESSES:
        why = (verdict.get("feedback") or {}).get("warning") or "easy to guess"
        raise InvalidInput(
            f"password: too common or easily guessed ({why.rstrip('.').lower()}); longer, less usual words help"
        )


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
    pw_hash = unusable_hash() if password is None else hash_password(password, username=name)
    user = User(username=name, display_name=(display_name or "")[:200], password_hash=pw_hash, role=role)
    session.add(user)
    session.flush()
    return user


_slots_guard = threading.Lock()
_slots: threading.BoundedSemaphore | None = None


def _password_slots() -> threading.BoundedSemaphore:
    """The process's cap on concurrent argon2 checks (64 MiB and ~0.3 s of CPU each)."""
    global _slots
    with _slots_guard:
        if _slots is None:
            _slots = threading.BoundedSemaphore(max(1, Config().signin_concurrency))
        return _slots


def _verify(stored: str, password: str) -> bool:
    """argon2 check in one of the process's bounded slots; :class:`AuthError` when none frees up."""
    slots = _password_slots()
    if not slots.acquire(timeout=SLOT_WAIT_S):
        raise AuthError(_BUSY)
    try:
        return bool(_hasher.verify(stored, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    finally:
        slots.release()


def authenticate_and_record(
    engine: sa.Engine,
    username: str,
    password: str,
    *,
    address: str = "local",
    browser: str | None = None,
    now: datetime | None = None,
) -> User:
    """Check credentials and log the attempt; raise :class:`AuthError` with a user-safe message.

    Three steps, so that a flood of sign-ins neither stalls reviewers nor races the limit:
    a short write transaction charges the attempt to its back-off counters
    (:mod:`safereview.workflow.throttle`) and reads the stored hash; the argon2 check runs
    outside any transaction in a bounded pool; a second short transaction logs the outcome.
    An unknown username costs the same (a dummy hash is checked). A disabled account gets the
    same answer as a wrong password, whatever the password, so the answer confirms nothing.
    """
    from safereview.workflow import throttle
    from safereview.workflow.tx import write_scope

    now = now or utcnow()
    try:
        name = validate_username(username)[:80]
    except InvalidInput:
        raise AuthError(_WRONG) from None
    address = (address or "local")[:64]
    browser = (browser or "")[:64] or None
    wait: float | None = None
    with write_scope(engine) as session:
        throttle.purge(session, now)
        try:
            throttle.charge(session, name, address, now, browser=browser)
        except throttle.Throttled as exc:
            wait = exc.wait_s
        user = _user(session, name)
        stored = user.password_hash if user is not None else _DUMMY_HASH
        user_id = user.id if user is not None else None
        disabled = bool(user is not None and user.disabled)
    if wait is not None:
        raise AuthError(_throttled(wait))
    possible = user_id is not None and not stored.startswith(UNUSABLE_PREFIX)
    if not possible:
        stored = _DUMMY_HASH
    ok = isinstance(password, str) and len(password) <= MAX_PASSWORD_LEN and _verify(stored, password) and possible
    signed_in = ok and not disabled
    new_hash = _hasher.hash(password) if signed_in and _hasher.check_needs_rehash(stored) else None
    with write_scope(engine) as session:
        session.add(LoginAttempt(username=name if user_id is not None else "", ok=signed_in, at=now, address=address))
        if not signed_in:
            user = None
        else:
            throttle.succeeded(session, name, address, now, browser=browser)
            user = session.get(User, user_id)
            assert user is not None
            if new_hash is not None:
                user.password_hash = new_hash
            user.last_login_at = now
            session.add(user)
            session.flush()
    if user is None:
        raise AuthError(_WRONG)
    return user


def _throttled(wait_s: float) -> str:
    n, unit = (round(wait_s), "second") if wait_s < 120 else (round(wait_s / 60), "minute")
    when = f"{n} {unit}{'' if n == 1 else 's'}"
    return f"Too many sign-in attempts. Try again in {when}."


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
    user.password_hash = hash_password(new_password, username=user.username)
    session.add(user)
    _revoke_all(session, user)
    from safereview.workflow import throttle

    throttle.clear_account(session, user.username)  # the new password starts with a clean slate
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
