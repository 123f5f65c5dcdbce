"""20 annotators in separate processes (forkserver: fresh, nothing inherited) label one collection for a bounded time.

Afterwards, on SQLite and PostgreSQL: every label a process says it submitted is stored
exactly once (and nothing else is), no item holds more slots than the overlap target,
slots_taken matches the assignments, and the event log replays to exactly the stored rows.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from typing import Any

import hardening_support as H
import pytest
import sqlalchemy as sa
from workflow_support import make_collection, make_user

pytestmark = pytest.mark.slow

N_PROCS = 20
SECONDS = 6.0


def fresh_process_context() -> Any:
    """Separate, fresh processes that share nothing with the test process.

    ``forkserver`` children fork from a clean server process that has imported the modules
    once (preload), not from this process: no inherited engine, connection or lock, as with
    ``spawn``, but without 20 interpreters importing SQLAlchemy at once (minutes on a
    loaded 2-core machine).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["hardening_support", "safereview.workflow.queue", "safereview.workflow.annotations", "safereview.db.engine"]
    )
    return ctx


def test_twenty_processes_label_the_same_collection(db_url: str, engine: sa.Engine) -> None:
    n_items, k = 120, 3
    cid = make_collection(engine, "burst", n_items=n_items, k=k, audit_share=0.3)
    users = [make_user(engine, f"b{i:02d}") for i in range(N_PROCS)]
    ctx = fresh_process_context()
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=H.burst_worker, args=(db_url, u.id, cid, i, SECONDS, ready, go, results))
        for i, u in enumerate(users)
    ]
    with H.plain_main():
        for p in procs:
            p.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        go.set()
        out = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    failed = [r for r in out if isinstance(r[1], str)]
    assert not failed, failed

    submitted = sorted((uid, iid, tuple(sorted(lab.items()))) for uid, done, _ in out for iid, lab in done)
    stored = sorted((uid, iid, tuple(sorted(lab.items()))) for uid, iid, lab in H.stored_labels(engine, cid))
    assert submitted, "no process submitted anything"
    assert stored == submitted  # each submitted label exactly once, nothing unreported
    per_item = Counter(iid for _, iid, _ in stored)
    assert max(per_item.values()) <= k
    assert H.slot_problems(engine) == []
    assert H.replay_problems(engine) == []
    assert H.fk_problems(engine) == []
    assert sum(1 for _, done, _ in out if done) >= 2  # the work really was shared
    H.tally(processes_started=N_PROCS, labels_checked=len(submitted), retried_db_errors=sum(e for _, _, e in out))
