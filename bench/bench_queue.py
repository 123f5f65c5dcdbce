"""Queue benchmark: submit + next with 20 reviewers on 1,000,000 items (SQLite and PostgreSQL).

    python bench/bench_queue.py            # 1,000,000 items
    python bench/bench_queue.py --quick    # 50,000 items, fewer operations (< 60 s)

Targets (per operation, under 20 concurrent reviewers): median < 10 ms, p99 < 50 ms.

The reviewers are threads of one Python process, so Python-side work (SQLAlchemy, the ORM)
of all 20 is serialised by the GIL; the latencies below therefore include GIL waits that
separate app replicas (processes) would not have. A single-reviewer row is printed as the
no-contention baseline. PostgreSQL runs when ``SAFEREVIEW_BENCH_PG`` (or
``SAFEREVIEW_TEST_PG``) names a server; the bench works in a throw-away schema.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from pgschema import scratch_schema, server_url, settle
from sqlmodel import Session, SQLModel

from safereview.agreement.synthetic import ITEM_COLUMNS
from safereview.db import bulk
from safereview.db.collections import ensure_collection
from safereview.db.engine import init_db, normalise_url, session_scope
from safereview.db.models import User, utcnow
from safereview.workflow.annotations import submit, submit_and_next
from safereview.workflow.auth import unusable_hash
from safereview.workflow.query_cache import clear_caches
from safereview.workflow.queue import QueueFilter, next_item
from safereview.workflow.tx import write_scope

TARGET_MEDIAN_MS = 10.0
TARGET_P99_MS = 50.0
LABELS = {"image": "safe", "text": "safe", "joint": "safe"}


def _rows(cid: int, n: int, seed: int = 7):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    now = utcnow()
    cats = [f"C{i}" for i in range(1, 16)]
    for i in range(n):
        # ~30 % of items have no verdict yet (priority 0: a large tie group, the realistic worst case)
        prio = 0.0 if rng.random() < 0.3 else round(rng.random() * 3, 4)
        yield (
            cid,
            f"b{i}",
            "image-text",
            cats[i % 15],
            "",
            f"model-{i % 4}",
            "image+text",
            "text",
            '[{"modality": "text", "text": "prompt"}]',
            "[]",
            False,
            "{}",
            f"{i:064x}",
            prio,
            0,
            now,
        )


def bulk_insert(engine: sa.Engine, table: str, columns: tuple[str, ...], rows: Iterable[tuple]) -> None:
    """Untimed set-up: ``db.bulk.bulk_insert`` (executemany on SQLite, COPY on PostgreSQL) in
    one transaction, then ANALYZE so the planner knows the table's size."""
    with engine.begin() as conn:
        bulk.bulk_insert(conn, SQLModel.metadata.tables[table], columns, rows, process=("created_at",))
        conn.exec_driver_sql(f"ANALYZE {table}")


def setup(url: str, n_items: int, n_users: int) -> tuple[sa.Engine, int, list[User], float]:
    engine = init_db(url)
    with session_scope(engine) as s:
        cid = int(ensure_collection(s, "bench", "vlsu", overlap_target=2, audit_share=0.2).id)  # type: ignore[arg-type]
        users = [User(username=f"r{i}", password_hash=unusable_hash()) for i in range(n_users)]
        s.add_all(users)
        s.flush()
        for u in users:
            s.refresh(u)
            s.expunge(u)
    t0 = time.perf_counter()
    bulk_insert(engine, "item", ITEM_COLUMNS, _rows(cid, n_items))
    print(f"after loading: {settle(engine)}", flush=True)
    clear_caches()
    return engine, cid, users, time.perf_counter() - t0


def reviewer(
    engine: sa.Engine,
    user: User,
    cid: int,
    ops: int,
    seed: int,
    out: dict[str, list[float]],
    barrier: threading.Barrier | None,
    think_s: float,
    combined: bool,
) -> None:
    """One reviewer: ``ops`` rounds of (think, submit, next) — as two transactions, or as
    ``submit_and_next`` in one when ``combined``."""
    rng = random.Random(seed)
    flt = QueueFilter(cid)
    if barrier is not None:
        barrier.wait()
    a = next_item(engine, user, flt, rng=rng)
    for _ in range(ops):
        if a is None:
            return
        if think_s > 0:  # the reviewer looks at the item before submitting (exponential think time)
            time.sleep(rng.expovariate(1.0 / think_s))
        if combined:
            t = time.perf_counter()
            _ann, a = submit_and_next(engine, user, a.id, LABELS, flt, rng=rng)  # type: ignore[arg-type]
            out["submit+next"].append((time.perf_counter() - t) * 1000)
            continue
        t = time.perf_counter()
        for attempt in range(10):
            try:
                with write_scope(engine) as s:
                    submit(s, user, a.id, LABELS)  # type: ignore[arg-type]
                break
            except sa.exc.OperationalError:
                time.sleep(0.005 * (attempt + 1))
        out["submit"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        a = next_item(engine, user, flt, rng=rng)
        out["next"].append((time.perf_counter() - t) * 1000)


def run(
    engine: sa.Engine, cid: int, users: list[User], ops: int, think_s: float = 0.0, combined: bool = False
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"next": [], "submit": [], "submit+next": []}
    barrier = threading.Barrier(len(users))
    threads = [
        threading.Thread(target=reviewer, args=(engine, u, cid, ops, i, out, barrier, think_s, combined))
        for i, u in enumerate(users)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def bench_backend(name: str, url: str, n_items: int, ops: int, n_users: int, think_s: float) -> list[tuple]:
    print(f"[{name}] loading {n_items:,} items ...", flush=True)
    engine, cid, users, load_s = setup(url, n_items, n_users)
    print(f"[{name}] loaded in {load_s:.1f} s ({n_items / load_s:,.0f} rows/s)", flush=True)
    engine.dispose()
    from safereview.db.engine import make_engine

    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        engine.dispose()
        engine = sa.create_engine(normalise_url(url), pool_size=n_users + 2, max_overflow=10, pool_pre_ping=True)
    rows = []
    run(engine, cid, users[:1], 20)  # warm caches and the connection pool
    single = run(engine, cid, users[:1], ops)
    rows += [(name, "1 reviewer, back to back", op, single[op]) for op in ("submit", "next")]
    mode = f"{n_users} reviewers, think {think_s:g} s"
    for combined in (False, True):
        t0 = time.perf_counter()
        many = run(engine, cid, users, ops, think_s, combined)
        wall = time.perf_counter() - t0
        ops_done = ("submit+next",) if combined else ("submit", "next")
        rows += [(name, mode, op, many[op]) for op in ops_done]
        total = sum(len(many[op]) for op in ops_done)
        print(f"[{name}] {mode}: {total} {'/'.join(ops_done)} in {wall:.1f} s ({total / wall:.0f}/s)", flush=True)
    t0 = time.perf_counter()
    sat = run(engine, cid, users, max(10, ops // 2))
    wall = time.perf_counter() - t0
    total = len(sat["next"]) + len(sat["submit"])
    print(
        f"[{name}] saturation (no think time): {total} operations in {wall:.1f} s ({total / wall:.0f} ops/s)",
        flush=True,
    )
    rows += [(name, f"{n_users} reviewers, no think (saturation)", op, sat[op]) for op in ("submit", "next")]
    with Session(engine) as s:
        bad = s.execute(sa.text("SELECT COUNT(*) FROM item WHERE slots_taken > 2")).scalar_one()
    assert bad == 0, "overlap target exceeded"
    engine.dispose()
    return rows


def table(rows: list[tuple], n_items: int, n_users: int) -> tuple[str, bool]:
    """The result table and whether the targets were met under think time."""
    buf = io.StringIO()
    buf.write(
        f"\nqueue bench: {n_items:,} items, overlap 2, audit share 0.2, {n_users} reviewer threads "
        f"(one process: GIL shared)\n"
    )
    buf.write(
        f"{'backend':<9} {'load':<38} {'op':<11} {'n':>5} {'median ms':>10} {'p99 ms':>8} "
        f"{'med/target':>11} {'p99/target':>11}\n"
    )
    verdict = []
    for backend, mode, op, vals in rows:
        med, p99 = statistics.median(vals) if vals else float("nan"), pct(vals, 0.99)
        r1, r2 = med / TARGET_MEDIAN_MS, p99 / TARGET_P99_MS
        if "think" in mode and "no think" not in mode:
            verdict.append(r1 < 1 and r2 < 1)
        buf.write(f"{backend:<9} {mode:<38} {op:<11} {len(vals):>5} {med:>10.2f} {p99:>8.2f} {r1:>11.2f} {r2:>11.2f}\n")
    load = os.getloadavg()
    buf.write(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "(1/5/15 min) at the end - other work on the machine inflates every figure\n"
    )
    buf.write(
        f"targets: median < {TARGET_MEDIAN_MS:g} ms, p99 < {TARGET_P99_MS:g} ms for {n_users} reviewers "
        f"with think time: {'met' if verdict and all(verdict) else 'NOT met'}; saturation rows are "
        "throughput information (closed loop, latency = reviewers x service time)\n"
    )
    ok = bool(verdict) and all(verdict)
    return buf.getvalue(), ok


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50,000 items and fewer operations")
    ap.add_argument("--items", type=int, default=None, help="number of items (default 1,000,000; quick 50,000)")
    ap.add_argument("--users", type=int, default=20, help="concurrent reviewers (threads)")
    ap.add_argument("--ops", type=int, default=None, help="submit+next rounds per reviewer (default 100; quick 25)")
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument(
        "--think", type=float, default=None, help="mean think time per item in seconds (default 1.0; quick 0.25)"
    )
    args = ap.parse_args(argv)
    n_items = args.items or (50_000 if args.quick else 1_000_000)
    ops = args.ops or (20 if args.quick else 100)
    think = args.think if args.think is not None else (0.25 if args.quick else 1.0)
    pg = server_url()

    rows: list[tuple] = []
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            rows += bench_backend("sqlite", f"sqlite:///{tmp}/bench.db", n_items, ops, args.users, think)
        print(table(rows, n_items, args.users)[0], flush=True)  # partial results survive a later failure
    if args.backend in ("postgres", "both"):
        if not pg:
            print("[postgres] skipped: set SAFEREVIEW_BENCH_PG or SAFEREVIEW_TEST_PG", flush=True)
        else:
            with scratch_schema(pg) as url:
                rows += bench_backend("postgres", url, n_items, ops, args.users, think)

    text, _ok = table(rows, n_items, args.users)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
