"""SIGKILL in the middle of work, on SQLite and PostgreSQL.

(a) an import of a big generic JSONL, killed once it holds the write transaction;
(b) a judge run: ``tests/test_judge_run.py::test_resume_after_kill_has_no_duplicates_and_no_gaps``
    (SQLite); extended here to both back ends with a consistency check;
(c) an annotation burst, killed after some labels were committed.

Afterwards: foreign keys hold, slots_taken = leased+done assignments, the event log
replays to the stored rows, everything committed before the kill is still there, and
re-running the same command completes the work without duplicates.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hardening_support as H
import pytest
import sqlalchemy as sa
from dataio_support import write_jsonl
from sqlmodel import Session, select
from workflow_support import make_collection, make_user

from safereview.db.engine import normalise_url, sqlite_path
from safereview.db.models import Item, Verdict

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONPATH": str(H.REPO)}
CLI = [sys.executable, "-c", "from safereview.cli.main import app; app()"]


def _kill(proc: subprocess.Popen[bytes] | Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    if hasattr(proc, "wait"):
        proc.wait(timeout=30)
    else:
        proc.join(timeout=30)


def _writing(db_url: str, app_name: str) -> bool:
    """True while another process holds a write transaction on the database."""
    path = sqlite_path(db_url)
    if path is not None:
        con = sqlite3.connect(str(path), timeout=0)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            con.close()
    eng = sa.create_engine(normalise_url(db_url))
    try:
        with eng.connect() as conn:
            return bool(
                conn.execute(
                    sa.text(
                        # a transaction gets an xid once it has written something
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = :a AND backend_xid IS NOT NULL"
                    ),
                    {"a": app_name},
                ).scalar_one()
            )
    finally:
        eng.dispose()


def _tagged(db_url: str, app_name: str) -> str:
    if db_url.startswith("sqlite"):
        return db_url
    return f"{db_url}&application_name={app_name}"


def _items(engine: sa.Engine, collection: str) -> list[str]:
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT i.external_id FROM item i JOIN collection c ON c.id = i.collection_id WHERE c.name = :n"
                ),
                {"n": collection},
            )
        ]


def test_import_killed_mid_write_loses_nothing_and_reruns_cleanly(
    db_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    n_big = 20_000
    small = write_jsonl(tmp_path / "small.jsonl", [{"id": f"s{i}", "prompt": f"small {i}"} for i in range(5)])
    big = write_jsonl(
        tmp_path / "big.jsonl",
        [{"id": f"b{i}", "prompt": f"big prompt {i}", "response": f"answer {i} " * 5} for i in range(n_big)],
    )
    app_name = "hardening_import"
    url = _tagged(db_url, app_name)
    base = [
        *CLI,
        "import",
        "--collection",
        "big",
        "--taxonomy",
        "vlsu",
        "--db",
        url,
        "--media-root",
        str(tmp_path / "media"),
    ]
    done = subprocess.run([*base, str(small)], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    committed = sorted(_items(engine, "big"))

    proc = subprocess.Popen([*base, str(big)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not _writing(db_url, app_name) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "import finished before it could be killed; make the file bigger"
        time.sleep(0.2)
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # all or nothing: the committed small import is intact, nothing of the big one is visible
    assert sorted(_items(engine, "big")) == committed
    assert H.consistency_problems(engine) == []

    again = subprocess.run([*base, str(big)], env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    ids = _items(engine, "big")
    assert len(ids) == len(set(ids)) == n_big + 5
    twice = subprocess.run([*base, str(big)], env=ENV, capture_output=True, text=True, timeout=300)
    assert twice.returncode == 0, twice.stderr
    assert len(_items(engine, "big")) == n_big + 5  # idempotent: no duplicates
    assert H.consistency_problems(engine) == []
    H.tally(processes_killed=1, faults_injected=1, rows_checked=n_big + 5)


def test_judge_run_killed_then_resumed(db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    from judge_support import FakeOpenAI, Reply, smart_reply, uni_collection

    media = tmp_path / "media"
    n_items = 12
    uni_collection(engine, media, n=n_items)

    def slow(body: dict[str, Any], n: int) -> Reply:
        reply = smart_reply(body, n)
        reply.delay = 0.25
        return reply

    def verdict_keys() -> list[tuple[int, str]]:
        with Session(engine) as s:
            return [(v.item_id, v.dimension) for v in s.exec(select(Verdict)).all()]

    args = [
        *CLI,
        "judge",
        "--protocol",
        "uni-judger",
        "--model",
        "m",
        "--collection",
        "uni",
        "--concurrency",
        "2",
        "--batch-size",
        "1",
        "--json",
        "--db",
        db_url,
        "--media-root",
        str(media),
    ]
    with FakeOpenAI(slow) as srv:
        proc = subprocess.Popen(
            [*args, "--base-url", srv.url], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 120
            while len(verdict_keys()) < 6 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert proc.poll() is None, "judge finished before it could be killed"
            _kill(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    before = set(verdict_keys())
    assert 6 <= len(before) < 2 * n_items
    assert H.consistency_problems(engine) == []
    with FakeOpenAI() as srv2:
        out = subprocess.run([*args, "--base-url", srv2.url], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    json.loads(out.stdout.strip().splitlines()[-1])
    keys = verdict_keys()
    assert len(keys) == len(set(keys)) == 2 * n_items and before <= set(keys)
    assert H.consistency_problems(engine) == []
    H.tally(processes_killed=1, faults_injected=1, rows_checked=len(keys))


def test_annotation_burst_killed_then_rerun(db_url: str, engine: sa.Engine) -> None:
    from test_hardening_concurrency import fresh_process_context

    n_items, k = 40, 2
    cid = make_collection(engine, "crash", n_items=n_items, k=k, audit_share=0.3)
    users = [make_user(engine, f"k{i}") for i in range(k)]
    ctx = fresh_process_context()

    def run(user_id: int, seed: int, seconds: float | None, kill_after: int | None) -> list[tuple[int, Any]]:
        ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        p = ctx.Process(
            target=H.burst_worker,
            args=(db_url, user_id, cid, seed, seconds, ready, go, results, kill_after is not None),
        )
        with H.plain_main():
            p.start()
        try:
            ready.get(timeout=120)
            go.set()
            got: list[tuple[int, Any]] = []
            while True:
                msg = results.get(timeout=120)
                if len(msg) == 3:  # the final summary: the worker ran out of work
                    assert not isinstance(msg[1], str), msg
                    assert kill_after is None, "the burst ended before it could be killed"
                    return [(msg[0], x) for x in msg[1]]
                got.append(msg)
                if kill_after is not None and len(got) >= kill_after:
                    _kill(p)
                    return got
        finally:
            if p.is_alive():
                p.kill()
            p.join(timeout=30)

    committed = run(users[0].id, 1, None, kill_after=8)
    stored = {(u, i, tuple(sorted(lab.items()))) for u, i, lab in H.stored_labels(engine, cid)}
    for uid, (iid, labels) in committed:  # nothing reported as committed was lost
        assert (uid, iid, tuple(sorted(labels.items()))) in stored
    assert H.consistency_problems(engine) == []

    # re-run: the same annotator finishes (picking up a lease the killed process held), then the other
    run(users[0].id, 2, None, kill_after=None)
    run(users[1].id, 3, None, kill_after=None)
    rows = H.stored_labels(engine, cid)
    pairs = [(u, i) for u, i, _ in rows]
    assert len(pairs) == len(set(pairs)) == n_items * k  # every slot filled once, no duplicates
    with Session(engine) as s:
        assert {i.slots_taken for i in s.exec(select(Item).where(Item.collection_id == cid))} == {k}
    assert H.consistency_problems(engine) == []
    H.tally(processes_killed=1, faults_injected=1, labels_checked=len(rows))
