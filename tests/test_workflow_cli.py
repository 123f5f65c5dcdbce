"""``safereview users ...`` and ``safereview queue status`` through the real CLI."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlmodel import Session, select
from typer.testing import CliRunner
from workflow_support import VLSU_SAFE, make_collection

from db.engine import session_scope
from db.models import User
from safereview.cli.main import app
from workflow import auth
from workflow.annotations import submit
from workflow.auth import authenticate_and_record
from workflow.errors import AuthError
from workflow.queue import QueueFilter, next_item

runner = CliRunner()


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small argon2id costs keep the suite fast (test_workflow_auth checks the real ones)."""
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def _run(db_url: str, *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [*args, "--db", db_url], input=stdin)


def test_users_lifecycle(db_url: str, engine: sa.Engine) -> None:
    r = _run(db_url, "users", "add", "alice", "--role", "lead", "--password-stdin", stdin="s3cret-pass\n")
    assert r.exit_code == 0, r.output
    assert authenticate_and_record(engine, "alice", "s3cret-pass").role == "lead"
    r = _run(db_url, "users", "add", "bob", "--role", "annotator", stdin="pw-for-bob!\npw-for-bob!\n")
    assert r.exit_code == 0, r.output  # prompted twice (confirmation)
    r = _run(db_url, "users", "add", "alice", "--password-stdin", stdin="another-pass\n")
    assert r.exit_code == 1 and "taken" in r.output
    r = _run(db_url, "users", "add", "eve", "--role", "root", "--password-stdin", stdin="another-pass\n")
    assert r.exit_code == 1 and "role" in r.output

    r = _run(db_url, "users", "list")
    assert r.exit_code == 0 and "alice" in r.output and "bob" in r.output and "lead" in r.output

    assert _run(db_url, "users", "disable", "bob").exit_code == 0
    try:
        authenticate_and_record(engine, "bob", "pw-for-bob!")
        raise AssertionError("disabled user signed in")
    except AuthError as exc:
        assert "disabled" in str(exc)
    assert "disabled" in _run(db_url, "users", "list").output
    assert _run(db_url, "users", "enable", "bob").exit_code == 0
    assert authenticate_and_record(engine, "bob", "pw-for-bob!").username == "bob"

    r = _run(db_url, "users", "reset-password", "bob", "--password-stdin", stdin="brand-new-pw\n")
    assert r.exit_code == 0, r.output
    assert authenticate_and_record(engine, "bob", "brand-new-pw").username == "bob"
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
