"""Many reviewers pulling at once (threads and separate processes) never exceed the overlap target.

Runs on a SQLite file (WAL, several connections/processes) and on PostgreSQL.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from workflow_support import make_collection, make_user, process_worker, review_until_empty, slot_invariants

from safereview.db.models import Annotation, Assignment


def _check(engine: sa.Engine, cid: int, results: list[list[int]], n_items: int, k: int) -> None:
    assert slot_invariants(engine, cid) == []
    counts = Counter(i for items in results for i in items)
    assert len(counts) == n_items and set(counts.values()) == {k}  # every item exactly k times
    for items in results:
        assert len(items) == len(set(items))  # nobody holds two slots of one item
    with Session(engine) as s:
        assert len(s.exec(select(Annotation)).all()) == n_items * k
        assert all(a.status == "done" for a in s.exec(select(Assignment)))


def test_threads_pull_concurrently(db_url: str, engine: sa.Engine) -> None:
    n_items, k, n_users = 40, 3, 6
    cid = make_collection(engine, n_items=n_items, k=k, audit_share=0.3)
    users = [make_user(engine, f"t{i}") for i in range(n_users)]
    start = time.time() + 0.3
    with ThreadPoolExecutor(n_users) as pool:
        results = list(
            pool.map(lambda iu: review_until_empty(db_url, iu[1].id, cid, start_at=start, seed=iu[0]), enumerate(users))
        )
    _check(engine, cid, results, n_items, k)


@pytest.mark.slow  # spawns worker processes
def test_processes_pull_concurrently(db_url: str, engine: sa.Engine) -> None:
    n_items, k, n_users = 30, 2, 4
    cid = make_collection(engine, n_items=n_items, k=k, audit_share=0.3)
    users = [make_user(engine, f"p{i}") for i in range(n_users)]
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=process_worker, args=(db_url, u.id, cid, i, ready, go, results)) for i, u in enumerate(users)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        go.set()  # all processes pull at the same moment
        out = dict(results.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [v for v in out.values() if isinstance(v, str)]
    assert not errors, errors
    got = list(out.values())
    _check(engine, cid, got, n_items, k)
    assert sum(1 for r in got if r) >= 2  # the work really was shared between processes
