"""The workflow's bulk entry points for imports: placeholder people and reviews done elsewhere."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from workflow_support import make_collection, make_user, slot_invariants

from safereview.db.models import Assignment, Item, User, utcnow
from safereview.workflow import auth, queue
from safereview.workflow.errors import AuthError, InvalidInput


def test_placeholder_users_follow_the_account_rules(engine: sa.Engine) -> None:
    make_user(engine, "already")
    with engine.begin() as conn:
        assert list(auth.user_ids(conn, ["already", "nobody"])) == ["already"]
        ids = auth.create_placeholder_users(conn, {" Zoe\u0308 ": "Zoë Z", "bo": ""})
        assert set(ids) == {"bo", "Zoë"}  # stripped and NFC-normalised like any username
        with pytest.raises(InvalidInput):
            auth.create_placeholder_users(conn, {"tab\there": ""})
        assert auth.create_placeholder_users(conn, {}) == {}
    with Session(engine) as s:
        people = {u.username: u for u in s.exec(select(User)).all()}
        assert people["Zoë"].display_name == "Zoë Z" and people["Zoë"].role == "annotator"
        assert people["Zoë"].id == ids["Zoë"]
        assert all(people[n].password_hash.startswith(auth.UNUSABLE_PREFIX) for n in ("Zoë", "bo"))
        assert people["Zoë"].password_hash != people["bo"].password_hash
    with pytest.raises(AuthError):
        auth.authenticate_and_record(engine, "bo", "")


def test_record_imported_keeps_slots_equal_to_leased_plus_done(engine: sa.Engine) -> None:
    cid = make_collection(engine, n_items=4, k=2, audit_share=0.0)
    users = [make_user(engine, f"u{i}") for i in range(4)]
    with Session(engine) as s:
        items = sorted(s.exec(select(Item.id).where(Item.collection_id == cid)).all())
    leased = queue.next_item(engine, users[0], queue.QueueFilter(cid))
    assert leased is not None
    skipped = queue.next_item(engine, users[1], queue.QueueFilter(cid))
    assert skipped is not None
    with Session(engine) as s:
        queue.skip(s, users[1], skipped.id)  # type: ignore[arg-type]
        s.commit()
    other = next(i for i in items if i not in (leased.item_id, skipped.item_id))
    now = utcnow()
    pairs = [
        (leased.item_id, users[0].id),  # the user's own lease: done, its slot already held
        (skipped.item_id, users[1].id),  # skipped: done again, holds a slot again
        (other, users[2].id),  # new
        (other, users[2].id),  # the same pair twice counts once
        (other, users[3].id),
    ]
    with engine.begin() as conn:
        assert queue.record_imported(conn, pairs, now=now) == 3  # type: ignore[arg-type]
    with engine.begin() as conn:  # a second time: everything is done already
        assert queue.record_imported(conn, pairs, now=now) == 0  # type: ignore[arg-type]
    with Session(engine) as s:
        rows = s.exec(select(Assignment)).all()
        assert {a.status for a in rows} == {"done"}
        new = [a for a in rows if a.item_id == other]
        assert {(a.stratum, a.sampling_prob, a.lease_expires_at) for a in new} == {("imported", None, None)}
        assert all(a.completed_at == now for a in rows)
    assert slot_invariants(engine, cid) == []
