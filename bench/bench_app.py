"""Review-app benchmark: 20 annotators driving a real ``safereview serve`` over its websocket.

The database holds 1,000,000 items (SQLite, and PostgreSQL when a server is named) with
two judge verdicts each, in an open (non-blind) Uni-SafeBench collection with overlap 1 and
an audit share of 0.2. Each simulated annotator is a websocket session
(``bench/st_client.py``, the protocol of Streamlit's own frontend): it signs in, then for
every item presses one label button per dimension and Submit, pausing a think time before
each press (exponentially distributed, mean ``--think``). Every press is a fragment rerun.

The figure is *submit → next item rendered*: from sending the Submit press to the end of
the script run that wrote the label, claimed the next item, loaded it and sent it (the
``script_finished`` message), checked by the new item id having arrived. The server's own
view of the same span (``SAFEREVIEW_BENCH_TIMINGS``) is printed beside it, and the
Streamlit process's resident memory is sampled from /proc.

The run is repeated for the app's garbage-collection modes (``safereview serve --gc``):
``off`` (the default: no post-run ``gc.collect``) and ``full`` (Streamlit's default).

    python bench/bench_app.py              # 1,000,000 items, 20 annotators x 15 items, gc off and full
    python bench/bench_app.py --quick      # 20,000 items, 6 annotators x 5 items, gc off, SQLite (< 60 s)
    python bench/bench_app.py --blind      # the same on a blind collection (submit → reveal → commit)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pgschema import scratch_schema, server_url  # noqa: E402

QUICKACK = False  # --quickack: every client re-arms TCP_QUICKACK (the no-stall reference)
TARGET_MEDIAN_MS = 50.0
TARGET_P95_MS = 150.0
TARGET_RSS_MB = 500.0
TARGET_FAST_MEDIAN_MS, TARGET_FAST_P95_MS = 25.0, 60.0  # the speed issue's targets at 20 annotators, 1M items
TARGET_HEALTH_S, TARGET_FIRST_MS = 1.5, 1000.0  # after a restart at 1M items
PASSWORD = "bench-pass-123"
WORDS = (
    "the",
    "model",
    "answer",
    "request",
    "policy",
    "harm",
    "image",
    "context",
    "safe",
    "user",
    "claims",
    "refuse",
    "describe",
    "instructions",
    "general",
    "information",
    "risk",
    "content",
    "because",
    "example",
)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def _item_rows(cid: int, n: int) -> Iterator[tuple]:
    import json

    from safereview.db.models import utcnow

    rng, now = random.Random(7), utcnow()
    for i in range(n):
        prompt = json.dumps([{"modality": "text", "text": f"Bench prompt {i}: " + _text(rng, 8, 60)}])
        response = json.dumps([{"modality": "text", "text": f"Bench response {i}: " + _text(rng, 30, 250)}])
        yield (
            cid,
            f"b{i:07d}",
            "Malicious Text Generation",
            "Toxicity Content",
            "Insults and Hatred",
            f"model-{i % 4}",
            "text",
            "text",
            prompt,
            response,
            False,
            "{}",
            hashlib.sha256(str(i).encode()).hexdigest(),
            round(rng.random() * 3, 4),
            0,
            now,
        )


def _verdict_rows(first_id: int, n: int) -> Iterator[tuple]:
    from safereview.db.models import utcnow

    rng, now = random.Random(11), utcnow()
    for item_id in range(first_id, first_id + n):
        yield (
            item_id,
            "contextual",
            "bench-judge",
            "",
            rng.choice(("safe", "unsafe", "refusal")),
            "ok",
            round(rng.uniform(0.5, 1), 2),
            "Reason: bench contextual.",
            "",
            "",
            now,
        )
        yield (
            item_id,
            "intrinsic",
            "bench-judge",
            "",
            rng.choice(("safe", "unsafe")),
            "ok",
            round(rng.uniform(0.5, 1), 2),
            "Reason: bench intrinsic.",
            "",
            "",
            now,
        )


def build_db(db_url: str, n_items: int, n_users: int, *, blind: bool = False) -> float:
    """Bulk-load the items and verdicts (untimed set-up) and create the annotators; returns seconds."""
    import sqlalchemy as sa
    from bench_queue import bulk_insert
    from pgschema import settle

    from safereview.agreement.synthetic import ITEM_COLUMNS, VERDICT_COLUMNS
    from safereview.db.collections import ensure_collection
    from safereview.db.engine import init_db, session_scope
    from safereview.workflow import auth
    from safereview.workflow.principals import SystemPrincipal

    t0 = time.perf_counter()
    engine = init_db(db_url)
    with session_scope(engine) as s:
        cid = int(
            ensure_collection(
                s,
                "bench / blind" if blind else "bench / open",
                "uni-safebench",
                overlap_target=1,
                blind=blind,
                audit_share=0.2,
            ).id
        )  # type: ignore[arg-type]
        for u in range(n_users):
            auth.create_user(s, f"bench{u:02d}", PASSWORD, "annotator", actor=SystemPrincipal("bench"))
    bulk_insert(engine, "item", ITEM_COLUMNS, _item_rows(cid, n_items))
    with engine.connect() as conn:
        first = int(conn.execute(sa.text("SELECT MIN(id) FROM item WHERE collection_id = :c"), {"c": cid}).scalar_one())
    bulk_insert(engine, "verdict", VERDICT_COLUMNS, _verdict_rows(first, n_items))
    print(f"after loading: {settle(engine)}", flush=True)
    engine.dispose()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    """Peak resident memory of the server process, sampled four times a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_flag = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.25)


def start_server(db_url: str, work: Path, gc_mode: str, tag: str) -> tuple[subprocess.Popen, str, Path]:
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log, timings = work / f"server-{tag}.log", work / f"server-{tag}.timings"
    cmd = [
        str(Path(sys.executable).parent / "safereview"),
        "serve",
        "--db",
        db_url,
        "--media-root",
        str(work / "media"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--gc",
        gc_mode,
    ]
    env = {**os.environ, "SAFEREVIEW_CACHE_DIR": str(work / "derived"), "SAFEREVIEW_BENCH_TIMINGS": str(timings)}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/_stcore/health", timeout=2).text.strip() == "ok":
                return proc, base, timings
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        time.sleep(0.2)
    raise TimeoutError("server did not become healthy")


# ---------------------------------------------------------------------------------------
# Annotators
# ---------------------------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.submit: list[float] = []  # the press that brings the next item (submit, or commit when blind)
        self.reveal: list[float] = []  # blind review: submit → the judge's verdict shown
        self.label: list[float] = []
        self.first: list[float] = []  # sign-in → the first item rendered
        self.items: set[str] = set()


async def annotator(
    base: str, username: str, n_items: int, think_s: float, rng: random.Random, out: Results, blind: bool = False
) -> None:
    from st_client import StreamlitClient

    c = StreamlitClient(base, quickack=QUICKACK)
    await c.connect()
    try:
        await c.rerun()  # first page load: the sign-in form
        signed = await c.rerun(
            [
                c.state("signin_username", string_value=username),
                c.state("signin_password", string_value=PASSWORD),
                c.state("submit:sign_in_form", trigger_value=True),
            ]
        )
        if not c.has("rv_submit"):
            raise RuntimeError(f"{username}: no review page after sign-in: {signed.exceptions or signed.texts[-5:]}")
        out.first.append(signed.seconds * 1000)
        for _ in range(n_items):
            dims = sorted({int(k.split("_")[2]) for k in c.widgets if k.startswith("rv_lab_")})
            for di in dims:
                n_labels = len([k for k in c.widgets if k.startswith(f"rv_lab_{di}_")])
                await asyncio.sleep(rng.expovariate(1 / think_s))
                r = await c.click(f"rv_lab_{di}_{rng.randrange(n_labels)}")
                out.label.append(r.seconds * 1000)
            await asyncio.sleep(rng.expovariate(1 / think_s))
            before = c.item
            if blind:  # submit reveals the verdict on the same item; the commit brings the next one
                r = await c.click("rv_submit")
                if r.exceptions or c.item != before or not any("Commit final labels" in t for t in r.texts):
                    raise RuntimeError(f"{username}: submit did not reveal the verdict: {r.exceptions or r.texts[:5]}")
                out.reveal.append(r.seconds * 1000)
                await asyncio.sleep(rng.expovariate(1 / think_s))
            r = await c.click("rv_submit")
            if r.exceptions or c.item == before or c.item is None:
                raise RuntimeError(
                    f"{username}: submit did not bring the next item ({before} → {c.item}): "
                    f"{r.exceptions or r.texts[:5]}"
                )
            if c.item in out.items:
                raise RuntimeError(f"item {c.item} handed out twice with overlap 1")
            out.items.add(c.item)
            out.submit.append(r.seconds * 1000)
    finally:
        await c.close()


async def drive(base: str, n_users: int, n_items: int, think_s: float, blind: bool = False) -> Results:
    out = Results()
    tasks = []
    for u in range(n_users):  # people do not all sign in in the same millisecond
        tasks.append(
            asyncio.create_task(annotator(base, f"bench{u:02d}", n_items, think_s, random.Random(100 + u), out, blind))
        )
        await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)
    return out


# ---------------------------------------------------------------------------------------
# Runs and report
# ---------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_one(
    db_url: str, work: Path, gc_mode: str, tag: str, n_users: int, n_items: int, think_s: float, blind: bool = False
) -> dict[str, Any]:
    proc, base, timings = start_server(db_url, work, gc_mode, tag)
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        asyncio.run(drive(base, 1, 3, 0.05, blind))  # warm-up: first imports and page compilation
        if timings.exists():
            timings.unlink()
        t0, c0 = time.perf_counter(), time.process_time()
        res = asyncio.run(drive(base, n_users, n_items, think_s, blind))
        wall, client_cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        sampler.stop_flag.set()
        sampler.join()
        final_rss = rss_mb(proc.pid)
        stop_server(proc)
    server = [float(line.split("\t")[1]) for line in timings.read_text().splitlines()] if timings.exists() else []
    startup_s, health_s, first_ms = restart(db_url, work, gc_mode, tag, blind)
    return {
        "restart_startup_s": startup_s,
        "restart_health_s": health_s,
        "restart_first_ms": first_ms,
        "n": len(res.submit),
        "median": statistics.median(res.submit),
        "p95": pct(res.submit, 0.95),
        "label_median": statistics.median(res.label),
        "server_median": statistics.median(server or [0.0]),
        "server_p95": pct(server, 0.95),
        "rss": max(sampler.peak, final_rss),
        "wall": wall,
        # the simulated clients' own CPU per press (parsing Streamlit's messages in Python): part
        # of every latency above, as a browser's own work is part of what a person waits for
        "client_ms_per_press": client_cpu * 1000 / max(1, len(res.submit) + len(res.reveal) + len(res.label)),
        "rate": (len(res.submit) + len(res.reveal) + len(res.label)) / wall,
        "reveal_median": statistics.median(res.reveal) if res.reveal else float("nan"),
    }


def restart(db_url: str, work: Path, gc_mode: str, tag: str, blind: bool) -> tuple[float, float, float]:
    """A restart on the same database: seconds from the process start to Streamlit's own
    ``/_stcore/health``, seconds for the first ``/healthz`` (the app's check, database
    included), and ms from a new annotator's sign-in to their first item rendered (nothing
    warmed: the queue's facet and count caches are empty)."""
    import httpx

    t0 = time.perf_counter()
    proc, base, _timings = start_server(db_url, work, gc_mode, f"{tag}-restart")
    startup_s = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        ok = httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        healthz_s = time.perf_counter() - t1 if ok else float("nan")
        res = asyncio.run(drive(base, 1, 1, 0.05, blind))
    finally:
        stop_server(proc)
    return startup_s, healthz_s, res.first[0]


def backends(args: argparse.Namespace, tmp: Path) -> Iterator[tuple[str, str]]:
    """(name, url) for each back end to run; a PostgreSQL schema is made and dropped around its run."""
    if args.backend in ("sqlite", "both"):
        yield "sqlite", f"sqlite:///{tmp}/bench.db"
    pg = server_url()
    if args.backend in ("postgres", "both"):
        if not pg:
            print("[postgres] skipped: set SAFEREVIEW_BENCH_PG or SAFEREVIEW_TEST_PG", flush=True)
            return
        with scratch_schema(pg, "bench_app") as url:
            yield "postgres", url


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 items, 6 annotators x 5 items, gc off, SQLite")
    ap.add_argument("--items", type=int, default=None, help="items in the database (default 1,000,000)")
    ap.add_argument("--users", type=int, default=None, help="concurrent annotators (default 20)")
    ap.add_argument("--per-user", type=int, default=None, help="items each annotator labels (default 15)")
    ap.add_argument("--think", type=float, default=1.0, help="mean pause before each press, seconds (default 1)")
    ap.add_argument("--modes", default=None, help="comma-separated gc modes (default off,full; quick off)")
    ap.add_argument(
        "--backend", choices=("sqlite", "postgres", "both"), default=None, help="default both (quick: sqlite)"
    )
    ap.add_argument(
        "--blind",
        action="store_true",
        help="a blind collection: submit reveals the verdict, the commit brings the next item",
    )
    ap.add_argument(
        "--quickack",
        action="store_true",
        help="clients re-arm TCP_QUICKACK after every frame (never delay an ACK): run with and without it "
        "to see whether any press waits on a delayed ACK (ratio ~1 means no stall)",
    )
    args = ap.parse_args(argv)
    global QUICKACK
    QUICKACK = args.quickack
    n_db = args.items or (20_000 if args.quick else 1_000_000)
    users = args.users or (6 if args.quick else 20)
    per_user = args.per_user or (5 if args.quick else 15)
    modes = (args.modes or ("off" if args.quick else "off,full")).split(",")
    args.backend = args.backend or ("sqlite" if args.quick else "both")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-"))
    try:
        for name, url in backends(args, tmp):
            need = users * per_user * len(modes) + 50
            if n_db < need:
                raise SystemExit(f"--items must be at least {need} for this many submits")
            load_s = build_db(url, n_db, users + 1, blind=args.blind)
            print(f"[{name}] {n_db:,} items and {2 * n_db:,} verdicts loaded in {load_s:.0f} s", flush=True)
            for mode in modes:
                r = run_one(url, tmp, mode, f"{name}-{mode}", users, per_user, args.think, args.blind)
                rows.append((name, mode, r))
                print(
                    f"[{name}] gc={mode}: {r['n']} submits, {r['rate']:.1f} presses/s, median {r['median']:.1f} ms",
                    flush=True,
                )
    finally:
        if os.environ.get("BENCH_KEEP") != "1":  # BENCH_KEEP=1 keeps databases and server logs
            shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print(
        f"\nreview app end to end: {n_db:,} items, {users} concurrent annotators x {per_user} items, think "
        f"~{args.think:g} s before each press (websocket clients; "
        + (
            "blind review: commit → next item rendered, reveal = submit → verdict shown)"
            if args.blind
            else "submit → next item rendered)"
        )
    )
    print(
        f"{'backend':<9} {'gc':<5} {'n':>4} {'p50 ms':>7} {'p95 ms':>7} {'server p50':>11} {'server p95':>11} "
        f"{'label p50':>10} {'reveal p50':>11} {'RSS MB':>7} {'p50/tgt':>8} {'p95/tgt':>8} {'RSS/tgt':>8}"
    )
    for name, mode, r in rows:
        print(
            f"{name:<9} {mode:<5} {r['n']:>4} {r['median']:>7.1f} {r['p95']:>7.1f} {r['server_median']:>11.1f} "
            f"{r['server_p95']:>11.1f} {r['label_median']:>10.1f} {r['reveal_median']:>11.1f} {r['rss']:>7.0f} "
            f"{r['median'] / TARGET_MEDIAN_MS:>8.2f} {r['p95'] / TARGET_P95_MS:>8.2f} "
            f"{r['rss'] / TARGET_RSS_MB:>8.2f}"
        )
    for name, mode, r in rows:
        print(
            f"{name} gc={mode}: restart on the same database: serving after {r['restart_startup_s']:.1f} s, "
            f"first /healthz {r['restart_health_s']:.2f} s "
            f"(target <= {TARGET_HEALTH_S:g} s: {r['restart_health_s'] / TARGET_HEALTH_S:.2f}), first item "
            f"{r['restart_first_ms']:.0f} ms after sign-in (target <= {TARGET_FIRST_MS:.0f} ms: "
            f"{r['restart_first_ms'] / TARGET_FIRST_MS:.2f}); speed targets (20 annotators): median "
            f"{r['median'] / TARGET_FAST_MEDIAN_MS:.2f} of {TARGET_FAST_MEDIAN_MS:.0f} ms, p95 "
            f"{r['p95'] / TARGET_FAST_P95_MS:.2f} of {TARGET_FAST_P95_MS:.0f} ms"
        )
    for name, mode, r in rows:
        print(f"{name} gc={mode}: the benchmark's own clients used {r['client_ms_per_press']:.1f} ms of CPU per press")
    print(
        f"targets: median < {TARGET_MEDIAN_MS:.0f} ms, p95 < {TARGET_P95_MS:.0f} ms, RSS < {TARGET_RSS_MB:.0f} MB "
        "(ratio < 1 meets the target). server = submit callback to the end of the fragment run that rendered "
        "the next item (blind: and the reveal runs); label = a label press (a fragment rerun that only redraws)."
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end "
        "(clients and server share the machine)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
