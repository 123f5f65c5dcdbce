"""Replicas behind nginx: 20 annotators through the proxy with 1 and 3 replicas, and after losing one.

A PostgreSQL database of ``--items`` text items (two verdicts each, one open Uni-SafeBench
collection, overlap 1), app replicas started as the shipped systemd unit starts them
(``deploy/safereview@.service``, ``deploy/safereview.env``) and Debian's nginx on the shipped
site (``safereview.deploy``), all on this machine. Annotators are websocket clients
(``bench/fleet.py`` over ``bench/st_client.py``), each from a loopback address of its own:
sign in, then per item one label press per dimension and Submit, with an exponential think
time (mean ``--think``) before each press.

Four windows of ``--seconds`` each, measured once every annotator has submitted (sign-ins
and warm-up are not timed):

1. one replica, straight to it (no proxy): the reference for what the proxy costs;
2. the same replica through nginx;
3. three replicas through nginx;
4. the same three after the replica serving the most annotators is SIGKILLed at the start
   of the window: its annotators reconnect through the proxy (signed in again from their
   session cookie) and carry on on the other two.

Beside them, one annotator alone labels 20 items straight to the replica and 20 through
nginx, twice in turn: what the proxy adds to a press when nothing else competes.

Figures: submits per second (one item's labels each: demand-bound with a think time, so
equal rates mean nobody was held up), submit → next item rendered (median and p95), a label
press (median), the replicas' resident memory, the reconnect time of the killed replica's
annotators, and the load average; ratios against window 2. No figure is asserted.

    python bench/bench_replicas.py             # 100,000 items, 20 annotators, think ~1 s, 60 s windows
    python bench/bench_replicas.py --quick     # 20,000 items, 10 annotators, 20 s windows

Needs PostgreSQL (``SAFEREVIEW_BENCH_PG`` or ``SAFEREVIEW_TEST_PG``) and nginx; says so and
exits 0 without them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_app  # noqa: E402
import fleet  # noqa: E402
from pgschema import scratch_schema, server_url  # noqa: E402

from safereview import deploy  # noqa: E402

SEEN: list[fleet.Annotator] = []  # every client of the run: what each saw stored is compared with the database


def _window(annotators: list[fleet.Annotator], lo: float, hi: float) -> dict[str, Any]:
    submits = [
        s
        for a in annotators
        for s in a.submits
        if s.seconds is not None and s.outcome == "stored" and lo <= s.sent < hi
    ]
    ms = [s.seconds * 1000 for s in submits if s.seconds is not None]
    presses = [sec * 1000 for a in annotators for at, sec in a.presses if lo <= at < hi]
    return {
        "n": len(ms),
        "rate": len(ms) / max(hi - lo, 1e-9),
        "p50": fleet.percentile(ms, 0.5),
        "p95": fleet.percentile(ms, 0.95),
        "label": fleet.percentile(presses, 0.5),
        "load": os.getloadavg()[0],
    }


async def _shift(
    base: str,
    users: list[str],
    think: float,
    seconds: float,
    replicas: list[fleet.Replica],
    proxy: fleet.Proxy | None = None,
    kill: bool = False,
) -> dict[str, Any]:
    """Annotators sign in and work; one window is measured, then (``kill``) a replica dies and
    a second window is measured."""
    dims = fleet.uni_safebench_dims()
    annotators = [
        fleet.Annotator(
            base, u, bench_app.PASSWORD, dims, think, random.Random(1000 + i), local_address=f"127.0.0.{20 + i}"
        )
        for i, u in enumerate(users)
    ]
    tasks = [asyncio.create_task(a.run(time.monotonic() + 3600, start_delay=0.2 * i)) for i, a in enumerate(annotators)]
    out: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 300
        while any(not a.stored and not a.error for a in annotators):
            if time.monotonic() > deadline:
                raise TimeoutError("annotators did not all start")
            await asyncio.sleep(0.5)
        errors = [f"{a.username}: {a.error}" for a in annotators if a.error]
        if errors:
            raise RuntimeError("; ".join(errors))
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        t1 = time.monotonic()
        out["before"] = _window(annotators, t0, t1)
        out["before"]["rss"] = [r.rss_mb() for r in replicas]
        out["before"]["nginx"] = proxy.rss_mb() if proxy is not None else float("nan")
        if kill:
            assert proxy is not None
            where = await fleet.probe_replicas(annotators, proxy)
            victim_addr = Counter(where.values()).most_common(1)[0][0]
            victim = next(r for r in replicas if r.addr == victim_addr)
            moved = [a for a in annotators if where.get(a.username) == victim_addr]
            t_kill = time.monotonic()
            victim.kill()
            await asyncio.sleep(seconds)
            t2 = time.monotonic()
            out["after"] = _window(annotators, t_kill, t2)
            out["after"]["rss"] = [r.rss_mb() for r in replicas if r is not victim]
            out["after"]["nginx"] = proxy.rss_mb()
            reconnects = [x for a in moved for x in a.reconnects]
            out["kill"] = {
                "victim": victim_addr,
                "moved": len(moved),
                "reconnected": sum(1 for a in moved if a.reconnects),
                "reconnect_p50": fleet.percentile(reconnects, 0.5),
                "reconnect_max": max(reconnects, default=float("nan")),
            }
    finally:
        for a in annotators:
            a.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    errors = [f"{a.username}: {a.error}" for a in annotators if a.error]
    if errors:
        raise RuntimeError("; ".join(errors))
    SEEN.extend(annotators)
    if "kill" in out:  # every press in hand has finished: what remains in doubt was never answered
        out["kill"]["outcomes"] = dict(Counter(s.outcome for a in annotators for s in a.submits))
        out["kill"]["in_doubt"] = [
            f"{a.username} ({a.drops} drops, reconnects {[round(x, 2) for x in a.reconnects]})"
            for a in annotators
            for _s in a.in_doubt
        ]
    return out


async def _solo(bases: list[tuple[str, str]], user: str, n_items: int, rounds: int = 2) -> dict[str, dict[str, float]]:
    """One annotator alone, alternating between the bases (straight to the replica, through nginx):
    what the proxy adds to a press when nothing else competes for it."""
    dims = fleet.uni_safebench_dims()
    submits: dict[str, list[float]] = {name: [] for name, _ in bases}
    presses: dict[str, list[float]] = {name: [] for name, _ in bases}
    for r in range(rounds):
        for name, base in bases:
            a = fleet.Annotator(base, user, bench_app.PASSWORD, dims, 0.3, random.Random(7 + r))
            task = asyncio.create_task(a.run(time.monotonic() + 600))
            while len(a.stored) < n_items + 2 and not a.error and not task.done():
                await asyncio.sleep(0.2)
            a.stop()
            await task
            SEEN.append(a)
            if a.error:
                raise RuntimeError(f"solo on {base}: {a.error}")
            done = [s for s in a.submits if s.outcome == "stored" and s.seconds is not None]
            submits[name] += [s.seconds * 1000 for s in done[2:]]  # type: ignore[operator]  # the first two warm up
            presses[name] += [sec * 1000 for _at, sec in a.presses[4:]]
    return {
        name: {"p50": fleet.percentile(submits[name], 0.5), "label": fleet.percentile(presses[name], 0.5)}
        for name, _ in bases
    }


async def _warm(replicas: list[fleet.Replica], user: str) -> None:
    """One annotator, two items, straight to each replica: first imports and page compilation."""
    dims = fleet.uni_safebench_dims()
    for r in replicas:
        a = fleet.Annotator(f"http://{r.addr}", user, bench_app.PASSWORD, dims, 0.05, random.Random(1))
        task = asyncio.create_task(a.run(time.monotonic() + 120))
        while len(a.stored) < 2 and not a.error and not task.done():
            await asyncio.sleep(0.2)
        a.stop()
        await task
        SEEN.append(a)
        if a.error:
            raise RuntimeError(f"warm-up on {r.addr}: {a.error}")


def _proxy(replicas: list[fleet.Replica], work: Path, name: str) -> fleet.Proxy:
    site = deploy.Site(
        replicas=tuple(r.addr for r in replicas),
        listen=f"127.0.0.1:{fleet.free_port()}",
        server_name="127.0.0.1",
        access_log="logs/safereview.access.log",
    )
    return fleet.Proxy(site, work / name).start()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 items, 10 annotators, 20 s windows")
    ap.add_argument("--items", type=int, default=None, help="items in the database (default 100,000)")
    ap.add_argument("--users", type=int, default=None, help="concurrent annotators (default 20)")
    ap.add_argument("--think", type=float, default=1.0, help="mean pause before each press, seconds (default 1)")
    ap.add_argument("--seconds", type=float, default=None, help="length of each measured window (default 60)")
    args = ap.parse_args(argv)
    n_items = args.items or (20_000 if args.quick else 100_000)
    n_users = args.users or (10 if args.quick else 20)
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    pg = server_url()
    if not pg or fleet.nginx_binary() is None:
        print("[bench_replicas] skipped: needs PostgreSQL (SAFEREVIEW_BENCH_PG or SAFEREVIEW_TEST_PG) and nginx")
        return 0
    import sqlalchemy as sa

    scratch = contextlib.ExitStack()
    url = scratch.enter_context(scratch_schema(pg, "bench_rep"))
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    users = [f"bench{u:02d}" for u in range(n_users)]
    warm_user = f"bench{n_users:02d}"
    solo_user = f"bench{n_users + 1:02d}"
    solo: dict[str, dict[str, float]] = {}
    rows: list[tuple[str, dict[str, Any]]] = []
    kill: dict[str, Any] = {}
    db_mb, db_annotations = 0.0, 0
    in_db: dict = {}
    seen: dict = {}
    lost: list = []
    extra: list = []
    started = time.perf_counter()
    try:
        load_s = bench_app.build_db(url, n_items, n_users + 2)
        print(f"{n_items:,} items and {2 * n_items:,} verdicts loaded in {load_s:.0f} s", flush=True)
        text = deploy.env_file(deploy.Env(db_url=url, media_root=str(work / "media")))
        env = {**deploy.read_env_file(text), "SAFEREVIEW_CACHE_DIR": str(work / "derived")}

        one = [fleet.Replica(env, work).start()]
        try:
            one[0].wait_ready()
            asyncio.run(_warm(one, warm_user))
            r = asyncio.run(_shift(f"http://{one[0].addr}", users, args.think, seconds, one))
            rows.append(("1 replica, direct (no proxy)", r["before"]))
            print(f"1 replica direct: {r['before']['n']} submits, p50 {r['before']['p50']:.1f} ms", flush=True)
            proxy = _proxy(one, work, "nginx-1")
            try:
                base = f"http://{proxy.site.listen}"
                r = asyncio.run(_shift(base, users, args.think, seconds, one, proxy))
                rows.append(("1 replica, nginx", r["before"]))
                print(f"1 replica nginx: {r['before']['n']} submits, p50 {r['before']['p50']:.1f} ms", flush=True)
                solo = asyncio.run(
                    _solo([("direct", f"http://{one[0].addr}"), ("nginx", base)], solo_user, 10 if args.quick else 20)
                )
            finally:
                proxy.stop()
        finally:
            one[0].stop()

        three = [fleet.Replica(env, work).start() for _ in range(3)]
        try:
            for rep in three:
                rep.wait_ready()
            asyncio.run(_warm(three, warm_user))
            proxy = _proxy(three, work, "nginx-3")
            try:
                base = f"http://{proxy.site.listen}"
                r = asyncio.run(_shift(base, users, args.think, seconds, three, proxy, kill=True))
                rows.append(("3 replicas, nginx", r["before"]))
                rows.append(("3 replicas, one SIGKILLed", r["after"]))
                kill = r["kill"]
            finally:
                proxy.stop()
        finally:
            for rep in three:
                rep.stop()
        sizes = sa.create_engine(url)
        with sizes.connect() as conn:
            db_mb = (
                conn.execute(
                    sa.text(
                        "SELECT sum(pg_total_relation_size(format('%I.%I', schemaname, tablename)::regclass)) "
                        "FROM pg_tables WHERE schemaname = current_schema()"
                    )
                ).scalar_one()
                / 2**20
            )
            db_annotations = conn.execute(sa.text("SELECT count(*) FROM annotation")).scalar_one()
        sizes.dispose()
        in_db = fleet.stored_labels(url)
        seen = {(a.username, item): labels for a in SEEN for item, labels in a.stored.items()}
        doubt = {(s.username, s.item) for a in SEEN for s in a.in_doubt}
        lost = [k for k, v in seen.items() if in_db.get(k) != v]
        extra = [k for k in in_db if k not in seen and k not in doubt]
    finally:
        if os.environ.get("BENCH_KEEP") != "1":  # BENCH_KEEP=1 keeps logs (replicas, nginx)
            shutil.rmtree(work, ignore_errors=True)
        scratch.close()  # drops the schema

    ref = dict(rows)["1 replica, nginx"]
    if db_mb:
        print(
            f"\ndatabase: {db_mb:,.0f} MB on disk for {n_items:,} items with two verdicts each, "
            f"{db_annotations:,} annotations"
        )
    print(
        f"\nreplicas behind nginx: {n_items:,} items on PostgreSQL, {n_users} annotators, think ~{args.think:g} s "
        f"before each press, {seconds:.0f} s per window (websocket clients; submit → next item rendered)"
    )
    print(
        f"{'setup':<30} {'n':>5} {'submits/s':>9} {'p50 ms':>7} {'p95 ms':>7} {'label p50':>9} "
        f"{'RSS MB (each)':>16} {'nginx MB':>8} {'p50/ref':>7} {'rate/ref':>8} {'load 1m':>7}"
    )
    for name, w in rows:
        rss = "/".join(f"{x:.0f}" for x in w.get("rss", []))
        nginx = w.get("nginx", float("nan"))
        print(
            f"{name:<30} {w['n']:>5} {w['rate']:>9.2f} {w['p50']:>7.1f} {w['p95']:>7.1f} {w['label']:>9.1f} "
            f"{rss:>16} {nginx:>8.1f} {w['p50'] / ref['p50']:>7.2f} {w['rate'] / ref['rate']:>8.2f} {w['load']:>7.1f}"
        )
    print(
        f"labels: {len(in_db):,} in the database, {len(seen):,} seen stored by the clients; "
        + ("every one stored once, nothing else" if not lost and not extra else f"LOST {lost[:5]} EXTRA {extra[:5]}")
    )
    if solo:
        d, n = solo["direct"], solo["nginx"]
        print(
            f"one annotator alone, straight to the replica and through nginx in turn (2 rounds each): submit → next "
            f"p50 {d['p50']:.1f} / {n['p50']:.1f} ms (nginx/direct {n['p50'] / d['p50']:.2f}), label press p50 "
            f"{d['label']:.1f} / {n['label']:.1f} ms ({n['label'] / d['label']:.2f})"
        )
    if kill and kill["in_doubt"]:
        print("submits never resolved (connection lost, no reconnect before the end): " + "; ".join(kill["in_doubt"]))
    if kill:
        print(
            f"killed {kill['victim']} (SIGKILL) serving {kill['moved']} annotators: {kill['reconnected']} reconnected "
            f"through nginx, median {kill['reconnect_p50']:.2f} s, at most {kill['reconnect_max']:.2f} s from the "
            f"drop to their item on screen again; submits by outcome: {kill['outcomes']}"
        )
    print(
        "ref = 1 replica through nginx. submits/s is bounded by the think time (equal rates: nobody held up); "
        "the after-kill window starts at the kill and includes the reconnects."
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {fleet.loadavg()} at the end (clients, replicas, nginx and "
        f"PostgreSQL share it); {time.perf_counter() - started:.0f} s in all"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
