"""Judge client overhead against a local fake OpenAI server that answers instantly.

Two measurements, cache off, concurrency 64 (target: >= 300 requests/s on a 2-core box),
plus a reference row (plain httpx with one 64-connection pool, the obvious design this
client avoids):

- *client*: ``ChatClient.ask`` alone — body building, canonical JSON, SHA-256 key,
  HTTP round trip over keep-alive connections, response parsing;
- *pipeline*: ``run_judge`` over a Uni-SafeBench collection of text items — protocol
  prompts, strict parsing, verdict writes in committed batches (SQLite), i.e. what
  ``safereview judge`` costs per request beyond the model itself.

The fake server runs in its own process so its work does not share the client's GIL.
Usage: ``python bench/bench_judge.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

TARGET_RPS = 300.0
CONCURRENCY = 64


def _serve(url_q: Any, stop: Any) -> None:
    from judge_support import FakeOpenAI, Reply, completion

    answer = completion("Reason: benchmark; Result: 1")

    def instant(body: dict[str, Any], n: int) -> Reply:
        return Reply(body=answer)

    with FakeOpenAI(instant) as srv:
        url_q.put(srv.url)
        stop.wait()


async def _client_run(url: str, n: int) -> tuple[float, float]:
    from safereview.judge.client import ChatClient

    messages = [{"role": "system", "content": "You are a judge."}]
    async with ChatClient(base_url=url, model="bench", concurrency=CONCURRENCY, cache=None) as client:
        start, cpu = time.perf_counter(), time.process_time()
        answers = await asyncio.gather(
            *(client.ask("bench", [*messages, {"role": "user", "content": f"item {i}"}], 50) for i in range(n))
        )
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    bad = sum(a.text is None for a in answers)
    if bad:
        raise SystemExit(f"{bad} requests failed")
    return n / elapsed, n / cpu


async def _reference_run(url: str, n: int) -> tuple[float, float]:
    """For comparison: one httpx.AsyncClient with a 64-connection pool behind a semaphore."""
    import json
    import socket

    import httpx

    from safereview.judge.client import chat_url

    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(transport=transport) as http:

        async def one(i: int) -> None:
            body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": f"item {i}"}]})
            async with sem:
                (await http.post(chat_url(url), content=body)).raise_for_status()

        await asyncio.gather(*(one(i) for i in range(CONCURRENCY)))  # open the connections
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def _pipeline_run(url: str, n_items: int) -> tuple[float, float]:
    from safereview.db.collections import ensure_collection
    from safereview.db.engine import init_db, session_scope
    from safereview.db.models import Item
    from safereview.judge.runner import RunOptions, run_judge
    from safereview.workflow.principals import SystemPrincipal

    with tempfile.TemporaryDirectory() as tmp:
        engine = init_db(f"sqlite:///{tmp}/bench.db")
        with session_scope(engine) as s:
            col = ensure_collection(s, "bench", "uni-safebench")
            s.add_all(
                [
                    Item(
                        collection_id=col.id,
                        external_id=f"b{i}",
                        content_hash=f"{i:064d}",
                        prompt=[{"modality": "text", "text": f"instruction {i}"}],
                        response=[{"modality": "text", "text": f"response {i}"}],
                    )
                    for i in range(n_items)
                ]
            )
        opts = RunOptions(
            protocol="uni-judger",
            base_url=url,
            model="bench",
            collection="bench",
            concurrency=CONCURRENCY,
            cache=False,
            progress=False,
            batch_size=50,
        )
        cpu = time.process_time()
        summary = run_judge(engine, Path(tmp) / "media", opts, actor=SystemPrincipal("bench"))
        cpu = time.process_time() - cpu
        engine.dispose()
    if summary.calls != 3 * n_items:
        raise SystemExit(f"expected {3 * n_items} calls, got {summary.calls}")
    return summary.calls / summary.seconds, summary.calls / cpu


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (< 60 s)")
    args = ap.parse_args(argv)
    n_req, n_items, repeats = (1200, 200, 3) if args.quick else (6000, 1500, 5)

    ctx = mp.get_context("spawn")
    url_q, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(url_q, stop), daemon=True)
    server.start()
    try:
        url = url_q.get(timeout=30)
        asyncio.run(_client_run(url, 200))  # warm-up: connections, imports
        client = [asyncio.run(_client_run(url, n_req)) for _ in range(repeats)]
        pipeline = [_pipeline_run(url, n_items) for _ in range(repeats)]
        reference = [asyncio.run(_reference_run(url, n_req // 4)) for _ in range(repeats)]
    finally:
        stop.set()
        server.join(timeout=5)
        if server.is_alive():
            server.terminate()

    rows = [
        ("client (ChatClient.ask)", client, f"{n_req} requests"),
        ("pipeline (run_judge, SQLite)", pipeline, f"{n_items} items × 3 calls"),
    ]
    ref_row = ("reference: 1 client, 64-conn pool", reference, f"{n_req // 4} requests")
    print(
        f"judge client overhead, cache off, concurrency {CONCURRENCY}, {repeats} repeats "
        f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    print(
        f"{'measure':34} {'work':22} {'median req/s':>12} {'min':>6} {'max':>6} {'target':>6} {'ratio':>6}"
        f" {'req/CPU-s':>10}"
    )
    ok = True
    for name, vals, work in rows:
        wall = [v[0] for v in vals]
        per_cpu = statistics.median(v[1] for v in vals)
        med = statistics.median(wall)
        ratio = med / TARGET_RPS
        ok &= ratio >= 1.0
        print(
            f"{name:34} {work:22} {med:12.0f} {min(wall):6.0f} {max(wall):6.0f} {TARGET_RPS:6.0f} {ratio:6.2f}"
            f" {per_cpu:10.0f}"
        )
    name, vals, work = ref_row
    wall = [v[0] for v in vals]
    print(
        f"{name:34} {work:22} {statistics.median(wall):12.0f} {min(wall):6.0f} {max(wall):6.0f} {'':>6} {'':>6}"
        f" {statistics.median(v[1] for v in vals):10.0f}"
    )
    print("target met" if ok else "BELOW TARGET (req/CPU-s is the client's own cost: the ceiling without contention)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
