"""Abuse benchmark: does an unauthenticated attacker slow a working annotator down?

A real ``safereview serve`` (SQLite) and one annotator driving it over the websocket
(``bench/st_client.py``): label every dimension, submit, and time *submit → next item
rendered*. Phases alternate in one run, so the machine's drift hits every phase alike:

- ``baseline``: the annotator alone;
- ``sign-in spam``: three more websocket connections submit the sign-in form as fast as
  the server answers, with random usernames and passwords (the attack that pushed a submit
  from 48 ms to 863 ms when argon2 ran inside SQLite's write lock);
- ``upload spam``: five strangers (no sign-in) PUT 50 MB bodies to Streamlit's upload
  route in a loop (the attack that took the server from 575 to 1,571 MB).

Printed: per phase the annotator's median and p95, the ratio to the baseline of the same
round, the attackers' request count, and the server's resident memory before and at its
peak during the upload spam. Targets (issue "Security II"): attacked/baseline median ≤ 1.5,
RSS growth under upload spam ≤ 50 MB.

    python bench/bench_abuse.py            # 3 rounds x 3 phases x 15 submits
    python bench/bench_abuse.py --quick    # 1 round x 3 phases x 6 submits (about a minute)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_app import PASSWORD, Sampler, build_db, pct, rss_mb, start_server  # noqa: E402

TARGET_RATIO = 1.5
TARGET_RSS_GROWTH_MB = 50.0
UPLOAD_BYTES = 50 << 20


async def _signed_in_annotator(base: str, username: str) -> Any:
    from st_client import StreamlitClient

    c = StreamlitClient(base)
    await c.connect()
    await c.rerun()
    await c.rerun(
        [
            c.state("signin_username", string_value=username),
            c.state("signin_password", string_value=PASSWORD),
            c.state("submit:sign_in_form", trigger_value=True),
        ]
    )
    if not c.has("rv_submit"):
        raise RuntimeError(f"{username}: no review page after sign-in")
    return c


async def _review(c: Any, n: int, think_s: float, rng: random.Random) -> list[float]:
    """``n`` items: label every dimension, submit; the submit → next item times in ms."""
    times = []
    for _ in range(n):
        dims = sorted({int(k.split("_")[2]) for k in c.widgets if k.startswith("rv_lab_")})
        for di in dims:
            n_labels = len([k for k in c.widgets if k.startswith(f"rv_lab_{di}_")])
            await asyncio.sleep(rng.expovariate(1 / think_s))
            await c.click(f"rv_lab_{di}_{rng.randrange(n_labels)}")
        await asyncio.sleep(rng.expovariate(1 / think_s))
        before = c.item
        r = await c.click("rv_submit")
        if r.exceptions or c.item in (None, before):
            raise RuntimeError(f"submit did not bring the next item: {r.exceptions or r.texts[:5]}")
        times.append(r.seconds * 1000)
    return times


async def _signin_spammer(base: str, stop: asyncio.Event, count: list[int], seed: int) -> None:
    from st_client import StreamlitClient

    rng = random.Random(seed)
    c = StreamlitClient(base)
    await c.connect()
    try:
        await c.rerun()
        while not stop.is_set():
            await c.rerun(
                [
                    c.state("signin_username", string_value=f"user{rng.randrange(10**9)}"),
                    c.state("signin_password", string_value=f"guess-{rng.randrange(10**12)}"),
                    c.state("submit:sign_in_form", trigger_value=True),
                ]
            )
            count[0] += 1
    finally:
        await c.close()


async def _upload_spammer(base: str, stop: asyncio.Event, count: list[int], seed: int) -> None:
    """PUT a 50 MB multipart body to the upload route, again and again, streaming one
    pre-built megabyte (so the attacker's own CPU stays out of the measurement)."""
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    chunk = os.urandom(1 << 20)
    while not stop.is_set():
        path = f"{parts.path}/_stcore/upload_file/{seed:08x}-stranger/{count[0]}"
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
            f"Content-Length: {UPLOAD_BYTES}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(head)
            sent = 0
            while sent < UPLOAD_BYTES and not reader.at_eof():
                writer.write(chunk[: min(len(chunk), UPLOAD_BYTES - sent)])
                await writer.drain()
                sent += len(chunk)
            await asyncio.wait_for(reader.read(256), timeout=10)
            writer.close()
        except (TimeoutError, OSError):
            pass  # the server closes a refused upload's connection mid-body
        count[0] += 1


def attack(kind: str, base: str) -> int:
    """Run as its own process (``--attack``) until SIGTERM; print the number of attempts."""
    import signal

    async def go() -> int:
        stop, count = asyncio.Event(), [0]
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        spam = _signin_spammer if kind == "signin" else _upload_spammer
        n = 3 if kind == "signin" else 5
        await asyncio.gather(*(spam(base, stop, count, k) for k in range(n)), return_exceptions=True)
        return count[0]

    print(asyncio.run(go()), flush=True)
    return 0


async def _phase(
    base: str, c: Any, kind: str, n: int, think_s: float, rng: random.Random, timings: Path
) -> dict[str, Any]:
    attacker = None
    if kind != "baseline":
        flag = "signin" if kind == "sign-in spam" else "upload"
        attacker = subprocess.Popen(
            [sys.executable, __file__, "--attack", flag, "--base", base], stdout=subprocess.PIPE, text=True
        )
        await asyncio.sleep(2.0)  # let the attack reach its pace first
    done = len(timings.read_text().splitlines()) if timings.exists() else 0
    times = await _review(c, n, think_s, rng)
    server = [float(x.split("\t")[1]) for x in timings.read_text().splitlines()[done:]] if timings.exists() else []
    attempts = 0
    if attacker is not None:
        attacker.terminate()
        out, _ = attacker.communicate(timeout=60)
        attempts = int(out.strip() or 0)
    return {"kind": kind, "times": times, "server": server, "attacks": attempts}


async def _run(
    base: str, rounds: int, n: int, think_s: float, pid: int, timings: Path
) -> tuple[list[dict[str, Any]], float, float]:
    c = await _signed_in_annotator(base, "bench00")
    rng = random.Random(7)
    phases: list[dict[str, Any]] = []
    rss_before = rss_mb(pid)
    rss_peak = rss_before
    try:
        await _review(c, 3, think_s, rng)  # warm-up
        for r in range(rounds):
            for kind in ("baseline", "sign-in spam", "baseline", "upload spam"):
                sampler = Sampler(pid)
                sampler.start()
                res = await _phase(base, c, kind, n, think_s, rng, timings)
                sampler.stop_flag.set()
                sampler.join()
                res["round"], res["rss_peak"] = r, max(sampler.peak, rss_mb(pid))
                if kind == "upload spam":
                    rss_peak = max(rss_peak, res["rss_peak"])
                phases.append(res)
                print(f"[round {r + 1}] {kind}: {statistics.median(res['times']):.1f} ms median", flush=True)
    finally:
        await c.close()
    return phases, rss_before, rss_peak


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round x 6 submits per phase")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--per-phase", type=int, default=None, help="submits per phase")
    ap.add_argument("--think", type=float, default=0.3, help="mean pause before each press, seconds")
    ap.add_argument("--attack", choices=("signin", "upload"), help=argparse.SUPPRESS)  # the attacker process
    ap.add_argument("--base", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.attack:
        return attack(args.attack, args.base)
    rounds = args.rounds or (1 if args.quick else 3)
    n = args.per_phase or (6 if args.quick else 15)
    tmp = Path(tempfile.mkdtemp(prefix="bench-abuse-"))
    try:
        url = f"sqlite:///{tmp}/abuse.db"
        build_db(url, 5_000, 1)
        proc, base, timings = start_server(url, tmp, "off", "abuse")
        try:
            phases, rss_before, rss_peak = asyncio.run(_run(base, rounds, n, args.think, proc.pid, timings))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(phases, rss_before, rss_peak, args.think)
    return 0


def report(phases: list[dict[str, Any]], rss_before: float, rss_peak: float, think_s: float) -> None:
    print(
        f"\nan annotator's submit → next item (ms) with attackers beside it; think ~{think_s:g} s per press, "
        "phases interleaved; ratio = phase median / median of the baselines of the same round; "
        "server = the server's own submit → next span; attackers run in their own process"
    )
    print(
        f"{'round':>5} {'phase':<13} {'n':>3} {'p50':>7} {'p95':>7} {'ratio':>6} {'server p50':>11} "
        f"{'attacks':>8} {'peak RSS MB':>12}"
    )
    worst = 0.0
    for ph in phases:
        base = [t for p in phases if p["round"] == ph["round"] and p["kind"] == "baseline" for t in p["times"]]
        ratio = statistics.median(ph["times"]) / statistics.median(base)
        if ph["kind"] != "baseline":
            worst = max(worst, ratio)
        print(
            f"{ph['round'] + 1:>5} {ph['kind']:<13} {len(ph['times']):>3} {statistics.median(ph['times']):>7.1f} "
            f"{pct(ph['times'], 0.95):>7.1f} {ratio:>6.2f} {statistics.median(ph['server'] or [float('nan')]):>11.1f} "
            f"{ph['attacks']:>8} {ph['rss_peak']:>12.0f}"
        )
    for kind in ("baseline", "sign-in spam", "upload spam"):
        times = [t for p in phases if p["kind"] == kind for t in p["times"]]
        p50, p95 = statistics.median(times), pct(times, 0.95)
        print(f"all rounds {kind:<13} n={len(times):>3} p50 {p50:7.1f}  p95 {p95:7.1f}")
    growth = rss_peak - rss_before
    print(
        f"worst attacked/baseline median ratio {worst:.2f} (target ≤ {TARGET_RATIO}); server RSS {rss_before:.0f} MB "
        f"before, {rss_peak:.0f} MB at the peak of upload spam: +{growth:.0f} MB (target ≤ {TARGET_RSS_GROWTH_MB:.0f})"
    )
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end "
        "(attackers, annotator and server share the machine)"
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
