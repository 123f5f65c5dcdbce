"""Shared fixtures for the workflow tests: collections with many items, users without argon2 cost."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.collections import ensure_collection
from safereview.db.engine import session_scope
from safereview.db.models import Collection, Item, User, utcnow
from safereview.workflow.auth import unusable_hash
from safereview.workflow.query_cache import clear_caches


def make_collection(
    engine: sa.Engine,
    name: str = "c",
    *,
    taxonomy: str = "vlsu",
    n_items: int = 10,
    k: int = 2,
    audit_share: float = 0.2,
    blind: bool = True,
    task_types: Sequence[str] = ("image-text",),
    categories: Sequence[str] = ("C1",),
    models: Sequence[str] = ("m",),
    priorities: Sequence[float] | None = None,
    seed: int = 0,
) -> int:
    """A collection with ``n_items`` items bulk-inserted; returns its id.

    Task type, category and model cycle through the given sequences; priorities are the
    given ones, else random.
    """
    clear_caches()
    with session_scope(engine) as s:
        col = ensure_collection(s, name, taxonomy, overlap_target=k, audit_share=audit_share, blind=blind)
        cid = int(col.id)  # type: ignore[arg-type]
    rng = random.Random(seed)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for i in range(n_items):
        rows.append(
            {
                "collection_id": cid,
                "external_id": f"{name}-{i}",
                "task_type": task_types[i % len(task_types)],
                "category": categories[i % len(categories)],
                "subcategory": "",
                "model": models[i % len(models)],
                "input_modalities": "image+text",
                "output_modalities": "text",
                "prompt": [{"modality": "text", "text": f"prompt {i}"}],
                "response": [],
                "refused": False,
                "meta": {},
                "content_hash": f"h{i}",
                "priority": priorities[i] if priorities is not None else rng.random(),
                "slots_taken": 0,
                "created_at": now,
            }
        )
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(Item.__table__), rows[start : start + 5000])  # type: ignore[attr-defined]
    return cid


def make_user(engine: sa.Engine, username: str, role: str = "annotator") -> User:
    """A user without a usable password (queue/annotation tests need no argon2 work)."""
    with session_scope(engine) as s:
        u = User(username=username, role=role, password_hash=unusable_hash())
        s.add(u)
        s.flush()
        s.refresh(u)
        s.expunge(u)
    return u


def slot_invariants(engine: sa.Engine, collection_id: int) -> list[str]:
    """Problems with the slot bookkeeping (empty list = consistent).

    For every item: slots_taken equals its leased + done assignments and never exceeds k.
    """
    with Session(engine) as s:
        col = s.get(Collection, collection_id)
        assert col is not None
        k = col.overlap_target
        rows = s.execute(
            sa.text(
                "SELECT item.id, item.slots_taken, "
                "(SELECT COUNT(*) FROM assignment a WHERE a.item_id = item.id AND a.status IN ('leased', 'done')) "
                "FROM item WHERE item.collection_id = :c"
            ),
            {"c": collection_id},
        ).all()
    problems = []
    for item_id, taken, held in rows:
        if taken != held:
            problems.append(f"item {item_id}: slots_taken {taken} but {held} leased/done assignments")
        if held > k:
            problems.append(f"item {item_id}: {held} slots held > overlap target {k}")
    return problems


VLSU_SAFE = {"image": "safe", "text": "safe", "joint": "safe"}


def detached_user(engine: sa.Engine, user_id: int) -> User:
    """The user row, detached from its session: what a worker passes to every service call."""
    with Session(engine) as s:
        user = s.get(User, user_id)
        assert user is not None
        s.expunge(user)
    return user


def review_until_empty(
    db_url: str,
    user_id: int,
    collection_id: int,
    *,
    start_at: float | None = None,
    seed: int = 0,
    max_items: int = 10_000,
) -> list[int]:
    """Pull and submit until the queue is empty; returns the item ids this user reviewed.

    Runs in threads and in spawned processes (it builds its own engine from ``db_url``);
    ``start_at`` (a ``time.time()``) lines the workers up so they pull at the same moment.
    """
    import time

    from safereview.db.engine import make_engine
    from safereview.workflow.annotations import submit
    from safereview.workflow.queue import QueueFilter, next_item

    engine = make_engine(db_url)
    rng = random.Random(seed)
    user = detached_user(engine, user_id)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    done: list[int] = []
    try:
        while len(done) < max_items:
            a = next_item(engine, user, QueueFilter(collection_id), rng=rng)
            if a is None:
                break
            for attempt in range(20):
                try:
                    with session_scope(engine) as s:
                        submit(s, user, a.id, VLSU_SAFE)  # type: ignore[arg-type]
                    break
                except sa.exc.OperationalError:
                    time.sleep(0.01 * (attempt + 1))
            done.append(a.item_id)
    finally:
        engine.dispose()
    return done


def process_worker(db_url: str, user_id: int, collection_id: int, seed: int, ready: Any, go: Any, results: Any) -> None:
    """Entry point of a spawned reviewer process: import, report ready, wait for "go", review."""
    import safereview.workflow.annotations  # noqa: F401  (import before the start line, not after)

    ready.put(user_id)
    go.wait(60)
    try:
        results.put((user_id, review_until_empty(db_url, user_id, collection_id, seed=seed)))
    except BaseException as exc:  # report instead of hanging the parent
        results.put((user_id, repr(exc)))
