"""Shared fixtures for the workflow tests: collections with many items, users without argon2 cost."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from db.collections import ensure_collection
from db.engine import session_scope
from db.models import Collection, Item, User, utcnow
from workflow.auth import unusable_hash
from workflow.queue import clear_caches


def make_collection(engine: sa.Engine, name: str = "c", *, taxonomy: str = "vlsu", n_items: int = 10,
                    k: int = 2, audit_share: float = 0.2, blind: bool = True,
                    task_types: Sequence[str] = ("image-text",), categories: Sequence[str] = ("C1",),
                    models: Sequence[str] = ("m",), priorities: Sequence[float] | None = None,
                    seed: int = 0) -> int:
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
        rows.append({
            "collection_id": cid, "external_id": f"{name}-{i}", "task_type": task_types[i % len(task_types)],
            "category": categories[i % len(categories)], "subcategory": "", "model": models[i % len(models)],
            "input_modalities": "image+text", "output_modalities": "text",
            "prompt": [{"modality": "text", "text": f"prompt {i}"}], "response": [], "refused": False,
            "meta": {}, "content_hash": f"h{i}", "priority": priorities[i] if priorities is not None else rng.random(),
            "slots_taken": 0, "created_at": now,
        })
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(Item.__table__), rows[start:start + 5000])  # type: ignore[attr-defined]
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
        rows = s.execute(sa.text(
            "SELECT item.id, item.slots_taken, "
            "(SELECT COUNT(*) FROM assignment a WHERE a.item_id = item.id AND a.status IN ('leased', 'done')) "
            "FROM item WHERE item.collection_id = :c"), {"c": collection_id}).all()
    problems = []
    for item_id, taken, held in rows:
        if taken != held:
            problems.append(f"item {item_id}: slots_taken {taken} but {held} leased/done assignments")
        if held > k:
            problems.append(f"item {item_id}: {held} slots held > overlap target {k}")
    return problems
