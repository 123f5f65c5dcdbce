"""``safereview users ...`` and ``safereview queue status`` through the real CLI."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlmodel import Session, select
from typer.testing import CliRunner
from workflow_support import VLSU_SAFE, make_collection

from safereview.cli.main import app
from safereview.db.engine import session_scope
from safereview.db.models import User
from safereview.workflow import auth
from safereview.workflow.annotations import submit
from safereview.workflow.auth import authenticate_and_record
from safereview.workflow.errors import AuthError
from safereview.workflow.principals import SystemPrincipal
from safereview.workflow.queue import QueueFilter, next_item

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be

runner = CliRunner()


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small argon2id costs keep the suite fast (test_workflow_auth checks the real ones)."""
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def _run(db_url: str, *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db_url], input=stdin)


def test_users_lifecycle(db_url: str, engine: sa.Engine) -> None:
    r = _run(db_url, "users", "add", "alice", "--role", "lead", "--password-stdin", stdin="s3cret-pass-12\n")
    assert r.exit_code == 0, r.output
    assert authenticate_and_record(engine, "alice", "s3cret-pass-12").role == "lead"
    r = _run(db_url, "users", "add", "bob", "--role", "annotator", stdin="pw-for-bob!!!\npw-for-bob!!!\n")
    assert r.exit_code == 0, r.output  # prompted twice (confirmation)
    r = _run(db_url, "users", "add", "alice", "--password-stdin", stdin="another-pass\n")
    assert r.exit_code == 1 and "taken" in r.output
    r = _run(db_url, "users", "add", "eve", "--role", "root", "--password-stdin", stdin="another-pass\n")
    assert r.exit_code == 1 and "role" in r.output

    r = _run(db_url, "users", "list")
    assert r.exit_code == 0 and "alice" in r.output and "bob" in r.output and "lead" in r.output

    assert _run(db_url, "users", "disable", "bob").exit_code == 0
    try:
        authenticate_and_record(engine, "bob", "pw-for-bob!!!")
        raise AssertionError("disabled user signed in")
    except AuthError as exc:
        assert "disabled" in str(exc)
    assert "disabled" in _run(db_url, "users", "list").output
    assert _run(db_url, "users", "enable", "bob").exit_code == 0
    assert authenticate_and_record(engine, "bob", "pw-for-bob!!!").username == "bob"

    r = _run(db_url, "users", "reset-password", "bob", "--password-stdin", stdin="brand-new-pw-2026\n")
    assert r.exit_code == 0, r.output
    assert authenticate_and_record(engine, "bob", "brand-new-pw-2026").username == "bob"
    assert _run(db_url, "users", "disable", "nobody").exit_code == 1
    with Session(engine) as s:
        assert {u.username for u in s.exec(select(User))} == {"alice", "bob"}


def test_queue_status(db_url: str, engine: sa.Engine) -> None:
    cid = make_collection(engine, "status-test", n_items=4, k=2, audit_share=0.0)
    with session_scope(engine) as s:
        u = User(username="rev", password_hash="!x")
        s.add(u)
        s.flush()
        s.expunge(u)
    a = next_item(engine, u, QueueFilter(cid))
    with session_scope(engine) as s:
        submit(s, u, a.id, VLSU_SAFE)  # type: ignore[union-attr]
    next_item(engine, u, QueueFilter(cid))
    r = _run(db_url, "queue", "status", "--collection", "status-test")
    assert r.exit_code == 0, r.output
    assert "4 items × 2 = 8 slots" in r.output and "1 done" in r.output and "1 leased" in r.output
    assert "rev" in r.output
    assert _run(db_url, "queue", "status", "--collection", "missing").exit_code == 1


def test_set_role_signs_the_user_out_and_guards_the_last_step(db_url: str, engine: sa.Engine) -> None:
    from safereview.workflow.errors import Forbidden, InvalidInput

    assert _run(db_url, "users", "add", "carol", "--password-stdin", stdin="carol-pass-1\n").exit_code == 0
    assert (
        _run(db_url, "users", "add", "root", "--role", "admin", "--password-stdin", stdin="root-pass-12\n").exit_code
        == 0
    )
    with session_scope(engine) as s:
        token = auth.start_session(s, auth.get_user(s, "carol"))
    r = _run(db_url, "users", "set-role", "carol", "lead")
    assert r.exit_code == 0 and "now lead" in r.output, r.output
    with session_scope(engine) as s:
        assert auth.get_user(s, "carol").role == "lead"
        assert auth.user_for_token(s, token) is None  # the old session carried the old role
    r = _run(db_url, "users", "set-role", "carol", "superuser")
    assert r.exit_code == 1 and "role" in r.output
    assert _run(db_url, "users", "set-role", "nobody", "lead").exit_code == 1

    with session_scope(engine) as s:  # the app's path: the acting user's role is checked
        carol, root = auth.get_user(s, "carol"), auth.get_user(s, "root")
        with pytest.raises(Forbidden):
            auth.set_role(s, "root", "annotator", actor=carol)
        with pytest.raises(InvalidInput):
            auth.set_role(s, "root", "lead", actor=root)  # no admin demotes themself
        auth.set_role(s, "carol", "annotator", actor=root)
    with session_scope(engine) as s:
        assert auth.get_user(s, "carol").role == "annotator" and auth.get_user(s, "root").role == "admin"


def test_collections_set_changes_only_what_is_given(db_url: str, engine: sa.Engine) -> None:
    from safereview.db.models import Collection, utcnow
    from safereview.workflow import collections
    from safereview.workflow.errors import Forbidden, InvalidInput, NotFound

    make_collection(engine, "settings-test", n_items=2, k=2, audit_share=0.1)
    r = _run(db_url, "collections", "set", "settings-test", "--overlap", "3", "--open")
    assert r.exit_code == 0, r.output
    assert "overlap k=3, open, uniform share 0.1" in r.output
    r = _run(db_url, "collections", "set", "settings-test", "--uniform-share", "0.35", "--archive")
    assert r.exit_code == 0, r.output
    with Session(engine) as s:
        col = s.exec(select(Collection).where(Collection.name == "settings-test")).one()
        assert (col.overlap_target, col.blind, col.audit_share, col.archived) == (3, False, 0.35, True)
    listing = _run(db_url, "collections")
    assert listing.exit_code == 0 and all(w in listing.output for w in ("open", "35%", "archived"))
    r = _run(
        db_url,
        *("collections", "set", "settings-test", "--no-protect-media", "--break-minutes", "30"),
        *("--break-unsafe-items", "0", "--reveal-reason", "optional"),
    )
    assert r.exit_code == 0, r.output
    with Session(engine) as s:
        col = s.exec(select(Collection).where(Collection.name == "settings-test")).one()
        assert (col.protect_media, col.break_minutes, col.break_unsafe_items, col.reveal_reason) == (
            False,
            30,
            0,
            "optional",
        )
    r = _run(db_url, "collections", "set", "settings-test", "--reveal-reason", "sometimes")
    assert r.exit_code == 1 and "reveal reason: one of required, optional" in r.output

    for args, word in ((["--overlap", "0"], "overlap"), (["--audit-share", "1.5"], "uniform share")):
        r = _run(db_url, "collections", "set", "settings-test", *args)
        assert r.exit_code == 1 and word in r.output, r.output
    assert _run(db_url, "collections", "set", "settings-test").exit_code == 2  # nothing to change
    assert _run(db_url, "collections", "set", "no-such", "--overlap", "2").exit_code == 1
    with Session(engine) as s:
        col = s.exec(select(Collection).where(Collection.name == "settings-test")).one()
        assert (col.overlap_target, col.audit_share) == (3, 0.35)  # refused changes wrote nothing

    with session_scope(engine) as s:
        lead = auth.create_user(s, "lead1", "lead-pass-12", "lead", actor=SYSTEM)
        admin = auth.create_user(s, "admin1", "admin-pass-12", "admin", actor=SYSTEM)
        with pytest.raises(Forbidden):
            collections.update_settings(s, "settings-test", actor=lead, overlap_target=1)
        with pytest.raises(InvalidInput):
            collections.update_settings(s, "settings-test", actor=admin, audit_share=float("nan"))
        with pytest.raises(NotFound):
            collections.update_settings(s, 10**9, actor=admin, blind=True)
        assert collections.update_settings(s, "settings-test", actor=admin, overlap_target=1).overlap_target == 1
        # once review has started, the sampling design (and so the uniform share) is fixed
        s.execute(sa.update(Collection).where(Collection.name == "settings-test").values(design_frozen_at=utcnow()))
        with pytest.raises(InvalidInput, match="sampling design froze"):
            collections.update_settings(s, "settings-test", actor=admin, audit_share=0.5)
        assert collections.update_settings(s, "settings-test", actor=admin, audit_share=0.35).audit_share == 0.35
