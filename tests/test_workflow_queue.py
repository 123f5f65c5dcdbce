"""The review queue on SQLite and PostgreSQL: leases, overlap, expiry, filters (the design: test_workflow_sampling)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from workflow_support import VLSU_SAFE, make_collection, make_user, slot_invariants

from safereview.db.engine import session_scope
from safereview.db.models import Assignment, Collection, Item, utcnow
from safereview.workflow.annotations import submit
from safereview.workflow.errors import Forbidden, LeaseLost, NotFound
from safereview.workflow.progress import progress
from safereview.workflow.query_cache import wait_idle
from safereview.workflow.queue import QueueFilter, next_item, reclaim_expired, release, skip


def _pull(engine: sa.Engine, user, flt: QueueFilter, **kw):  # type: ignore[no-untyped-def]
    return next_item(engine, user, flt, **kw)


def _submit(engine: sa.Engine, user, a) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        submit(s, user, a.id, VLSU_SAFE)


def test_lease_is_returned_until_submitted(engine: sa.Engine) -> None:
    cid = make_collection(engine, n_items=5, audit_share=0.0)
    u = make_user(engine, "ann")
    flt = QueueFilter(cid)
    a1 = _pull(engine, u, flt)
    a2 = _pull(engine, u, flt)
    assert a1 is not None and a2 is not None and a1.id == a2.id and a1.status == "leased"
    _submit(engine, u, a1)
    a3 = _pull(engine, u, flt)
    assert a3 is not None and a3.item_id != a1.item_id
    assert slot_invariants(engine, cid) == []


def test_overlap_target_is_never_exceeded(engine: sa.Engine) -> None:
    cid = make_collection(engine, n_items=6, k=2, audit_share=0.5)
    users = [make_user(engine, f"u{i}") for i in range(4)]
    rng = random.Random(1)
    per_user: dict[str, list[int]] = {u.username: [] for u in users}
    active = list(users)
    while active:  # interleave the users
        for u in list(active):
            a = _pull(engine, u, QueueFilter(cid), rng=rng)
            if a is None:
                active.remove(u)
                continue
            _submit(engine, u, a)
            per_user[u.username].append(a.item_id)
        assert slot_invariants(engine, cid) == []
    counts = Counter(i for items in per_user.values() for i in items)
    assert len(counts) == 6 and set(counts.values()) == {2}
    for items in per_user.values():
        assert len(items) == len(set(items))  # nobody reviews an item twice
    with Session(engine) as s:
        p = progress(s, users[0], cid, max_age_s=0)
    assert (p.n_items, p.slots_total, p.everyone_done, p.items_fully_covered) == (6, 12, 12, 6)
    assert p.mine_done == len(per_user["u0"])


def test_expired_lease_is_reclaimed_and_late_submit_refused(engine: sa.Engine) -> None:
    cid = make_collection(engine, n_items=1, k=1, audit_share=0.0)
    a_user, b_user = make_user(engine, "a"), make_user(engine, "b")
    a = _pull(engine, a_user, QueueFilter(cid), lease_minutes=10)
    assert a is not None
    assert _pull(engine, b_user, QueueFilter(cid)) is None  # the only slot is held
    later = utcnow() + timedelta(minutes=11)
    b = _pull(engine, b_user, QueueFilter(cid), now=later)
    assert b is not None and b.item_id == a.item_id
    with Session(engine) as s:
        assert s.get(Assignment, a.id).status == "released"  # type: ignore[union-attr]
    with pytest.raises(LeaseLost), session_scope(engine) as s:
        submit(s, a_user, a.id, VLSU_SAFE)
    assert slot_invariants(engine, cid) == []


def test_late_submit_keeps_work_when_the_slot_is_still_free(engine: sa.Engine) -> None:
    cid = make_collection(engine, n_items=3, k=1, audit_share=0.0, priorities=[0.9, 0.5, 0.1])
    u, other = make_user(engine, "a"), make_user(engine, "o")
    past = utcnow() - timedelta(hours=2)
    a = _pull(engine, u, QueueFilter(cid), now=past, lease_minutes=1)
    _submit(engine, u, a)  # expired but not reclaimed: the slot is still held, the work is kept
    b = _pull(engine, u, QueueFilter(cid), now=past, lease_minutes=1)
    with session_scope(engine) as s:
        assert reclaim_expired(s) == 1  # b's slot goes back to the pool ...
    _submit(engine, u, b)  # ... and is free, so the late submission re-claims it
    c = _pull(engine, u, QueueFilter(cid), now=past, lease_minutes=1)
    o = _pull(engine, other, QueueFilter(cid))  # reclaims c and takes the last slot
    assert o is not None and o.item_id == c.item_id  # type: ignore[union-attr]
    with pytest.raises(LeaseLost), session_scope(engine) as s:
        submit(s, u, c.id, VLSU_SAFE)  # type: ignore[union-attr]
    with Session(engine) as s:
        statuses = {x.id: x.status for x in s.exec(select(Assignment))}
    assert statuses == {a.id: "done", b.id: "done", c.id: "released", o.id: "leased"}  # type: ignore[union-attr]
    assert slot_invariants(engine, cid) == []


def test_release_offers_again_and_skip_never(engine: sa.Engine) -> None:
    cid = make_collection(engine, n_items=2, k=1, audit_share=0.0, priorities=[1.0, 0.5])
    u, v = make_user(engine, "u"), make_user(engine, "v")
    flt = QueueFilter(cid)
    a = _pull(engine, u, flt)
    with session_scope(engine) as s:
        assert release(s, u, a.id).status == "released"  # type: ignore[union-attr]
    again = _pull(engine, u, flt)
    assert again.item_id == a.item_id and again.id == a.id  # type: ignore[union-attr]
    with session_scope(engine) as s:
        assert skip(s, u, again.id).status == "skipped"  # type: ignore[union-attr]
        with pytest.raises(LeaseLost):
            skip(s, u, again.id)  # type: ignore[union-attr]
    nxt = _pull(engine, u, flt)
    assert nxt.item_id != a.item_id  # type: ignore[union-attr]
    _submit(engine, u, nxt)
    assert _pull(engine, u, flt) is None  # the skipped item is not offered again
    got = _pull(engine, v, flt)
    assert got.item_id == a.item_id  # type: ignore[union-attr]  # but others get it
    with session_scope(engine) as s, pytest.raises(NotFound):
        release(s, u, got.id)  # type: ignore[union-attr]  # not u's assignment
    assert slot_invariants(engine, cid) == []


def test_filters_restrict_items_and_filter_change_releases_lease(engine: sa.Engine) -> None:
    cid = make_collection(
        engine,
        "f",
        taxonomy="uni-safebench",
        n_items=12,
        k=1,
        audit_share=0.5,
        task_types=("dual-unsafe", "text-unsafe", "image-unsafe"),
        categories=("Politics", "Religion"),
        models=("m1", "m2"),
    )
    u = make_user(engine, "u")
    rng = random.Random(5)
    flt = QueueFilter(cid, task_types=("text-unsafe",), categories=("Religion",))
    got = []
    while (a := _pull(engine, u, flt, rng=rng)) is not None:
        got.append(a.item_id)
        with session_scope(engine) as s:
            submit(s, u, a.id, {"contextual": "safe", "intrinsic": "safe"})
    with Session(engine) as s:
        items = [s.get(Item, i) for i in got]
        expected = s.exec(
            select(Item.id).where(
                Item.collection_id == cid, Item.task_type == "text-unsafe", Item.category == "Religion"
            )
        ).all()
    assert sorted(got) == sorted(expected) and len(expected) == 2
    assert all(it.task_type == "text-unsafe" and it.category == "Religion" for it in items)  # type: ignore[union-attr]
    lease = _pull(engine, u, QueueFilter(cid, models=("m1",)), rng=rng)
    assert lease is not None
    moved = _pull(engine, u, QueueFilter(cid, models=("m2",)), rng=rng)
    with Session(engine) as s:
        assert s.get(Assignment, lease.id).status == "released"  # type: ignore[union-attr]
        assert s.get(Item, moved.item_id).model == "m2"  # type: ignore[union-attr]
    assert slot_invariants(engine, cid) == []


def test_permissions_and_archived_collections(engine: sa.Engine) -> None:
    cid = make_collection(engine, n_items=2)
    u = make_user(engine, "u")
    with session_scope(engine) as s:
        s.execute(sa.update(Collection).where(Collection.id == cid).values(archived=True))
    assert _pull(engine, u, QueueFilter(cid)) is None
    with session_scope(engine) as s:
        s.execute(sa.update(Collection).where(Collection.id == cid).values(archived=False))
        s.execute(sa.text('UPDATE "user" SET disabled = :t WHERE id = :i'), {"t": True, "i": u.id})
    u.disabled = True
    with pytest.raises(Forbidden):
        _pull(engine, u, QueueFilter(cid))
    with pytest.raises(NotFound):
        _pull(engine, make_user(engine, "v"), QueueFilter(cid + 999))


def test_in_memory_sqlite_counts_in_the_session() -> None:
    """An in-memory database has no side connection to count on: counts run in the session."""
    from safereview.db.engine import init_db

    engine = init_db("sqlite://")
    cid = make_collection(engine, "mem", n_items=5, k=1, audit_share=1.0)
    u = make_user(engine, "u")
    a = _pull(engine, u, QueueFilter(cid), rng=random.Random(0))
    assert a is not None and a.stratum == "sample"
    _submit(engine, u, a)
    with Session(engine) as s:
        p = progress(s, u, cid)
    assert (p.n_items, p.everyone_done, p.mine_done) == (5, 1, 1)


def test_cached_progress_is_refreshed_in_the_background(engine: sa.Engine) -> None:
    import time

    cid = make_collection(engine, "bg", n_items=3, k=1, audit_share=0.0)
    u = make_user(engine, "u")
    with Session(engine) as s:
        assert progress(s, u, cid, max_age_s=0.2).everyone_done == 0
    _submit(engine, u, _pull(engine, u, QueueFilter(cid)))
    with Session(engine) as s:
        first = progress(s, u, cid, max_age_s=0.2)
    assert first.mine_done == 1  # the user's own counts are always exact
    assert first.everyone_done == 1  # ... and everyone's is never shown below them, even while stale
    deadline = time.monotonic() + 10
    while True:
        time.sleep(0.25)
        with Session(engine) as s:
            if progress(s, None, cid, max_age_s=0.2).everyone_done == 1:  # no user: the cached count alone
                break
        assert time.monotonic() < deadline, "background recount never landed"
    assert wait_idle(), "a background recount is still running"  # before the fixture drops the schema


def test_the_unkeyed_probe_uses_its_partial_index_after_the_freeze(sqlite_url: str) -> None:
    """SQLite statistics taken while every item was unkeyed made the planner walk all keyed
    items of the collection on every pull (127 ms a pull at 1M); the probe names its index."""
    from safereview.db.engine import init_db

    engine = init_db(sqlite_url)
    cid = make_collection(engine, n_items=400, k=1, audit_share=0.0)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")  # statistics from before the freeze: 400 unkeyed items
    u = make_user(engine, "ann")
    assert _pull(engine, u, QueueFilter(cid)) is not None  # the first pull freezes and keys every item
    seen: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):  # type: ignore[no-untyped-def]
        if "sample_key IS NULL LIMIT 1" in statement:
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        v = make_user(engine, "bea")
        assert _pull(engine, v, QueueFilter(cid)) is not None
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert len(seen) == 1
    statement, parameters = seen[0]
    with engine.connect() as conn:
        plan = " | ".join(str(r[3]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
    assert "ix_item_unkeyed" in plan, plan
    assert "ix_item_sample (collection_id=?)" not in plan, plan
