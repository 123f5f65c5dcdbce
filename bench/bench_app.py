"""Review-app benchmark: concurrent annotators driving a real ``safereview serve`` in chromium.

Each simulated annotator is a Playwright page in one headless chromium: it signs in, then
labels items (clicks on the label buttons and Submit: with many windows only the focused
one receives key presses) with a short think time.
The latency measured is *inside the browser*: from the Submit press (pointer down, or Ctrl+Enter) to the moment
the next item's id is in the DOM and the script run has finished (MutationObserver +
``performance.now()``), so Playwright's own round trips are not counted. The Streamlit
process's resident memory is sampled from /proc while the sessions run.

The run is repeated for the app's garbage-collection modes (``safereview serve --gc``):
``full`` (Streamlit's default post-run ``gc.collect``), ``off`` (no post-run collection)
and ``freeze`` (post-run collection kept, start-up heap frozen with ``gc.freeze()``).

    python bench/bench_app.py            # 20 annotators × 15 items, all three modes
    python bench/bench_app.py --quick    # 4 annotators × 4 items, default mode only (< 60 s)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM = "/usr/bin/chromium"
TARGET_MEDIAN_MS = 50.0
TARGET_P95_MS = 150.0
TARGET_RSS_MB = 500.0
PASSWORD = "bench-pass-123"

INSTALL_JS = """
() => {
  window.__lat = [];
  const itemOf = () => {
    for (const el of document.querySelectorAll("[data-testid='stCaptionContainer']")) {
      const m = el.textContent.match(/· item (\\S+)/);
      if (m) return m[1];
    }
    return null;
  };
  window.__item = itemOf;
  let pending = null;
  const app = document.querySelector("[data-testid='stApp']");
  const check = () => {
    if (!pending) return;
    const it = itemOf();
    if (it && it !== pending.from) pending.seen = pending.seen || performance.now();
    if (pending.seen && app.getAttribute("data-test-script-state") === "notRunning") {
      window.__lat.push([pending.seen - pending.t0, performance.now() - pending.t0]);
      pending = null;
    }
  };
  const start = () => { pending = {t0: performance.now(), from: itemOf(), seen: null}; };
  document.addEventListener("keydown", e => { if (e.key === "Enter" && e.ctrlKey) start(); }, true);
  document.addEventListener("pointerdown", e => {
    if (e.target.closest && e.target.closest(".st-key-rv_submit")) start();
  }, true);
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true,
    attributes: true, attributeFilter: ["data-test-script-state"]});
}
"""


def build_db(db_url: str, n_items: int, n_users: int) -> None:
    """An open (non-blind) collection of text items with verdicts, and the bench users."""
    from db.collections import ensure_collection
    from db.engine import init_db, session_scope
    from db.models import Item, Verdict
    from workflow import auth

    engine = init_db(db_url)
    rng = random.Random(7)
    with session_scope(engine) as s:
        col = ensure_collection(s, "bench / open", "uni-safebench", overlap_target=1, blind=False, audit_share=0.2)
        for i in range(n_items):
            prompt = [{"modality": "text", "text": f"Bench prompt {i}: " + "words " * rng.randint(5, 60)}]
            response = [{"modality": "text", "text": f"Bench response {i}: " + "reply " * rng.randint(20, 200)}]
            item = Item(collection_id=col.id, external_id=f"b{i:05d}", task_type="Malicious Text Generation",
                        category="Toxicity Content", subcategory="Insults and Hatred", model="bench-model",
                        prompt=prompt, response=response, priority=rng.random(),
                        content_hash=hashlib.sha256(f"{i}".encode()).hexdigest())
            s.add(item)
            s.flush()
            for dim, label in (("contextual", rng.choice(["safe", "unsafe", "refusal"])),
                               ("intrinsic", rng.choice(["safe", "unsafe"]))):
                s.add(Verdict(item_id=item.id, dimension=dim, judge_id="bench-judge", label=label,
                              probability=round(rng.uniform(0.5, 1), 2), rationale="Reason: bench."))
        for u in range(n_users):
            auth.create_user(s, f"bench{u:02d}", PASSWORD, "annotator")
    engine.dispose()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_flag = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.25)


def start_server(db_url: str, media_root: Path, gc_mode: str, log: Path) -> tuple[subprocess.Popen, str]:
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(Path(sys.executable).parent / "safereview"), "serve", "--db", db_url, "--media-root", str(media_root),
           "--host", "127.0.0.1", "--port", str(port), "--gc", gc_mode]
    env = {**os.environ, "SAFEREVIEW_CACHE_DIR": str(media_root.parent / "derived"),
           "SAFEREVIEW_BENCH_TIMINGS": str(log.with_suffix(".timings"))}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/_stcore/health", timeout=2).text.strip() == "ok":
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        time.sleep(0.2)
    raise TimeoutError("server did not become healthy")


async def annotator(browser, base: str, username: str, n_items: int, think_s: float,  # type: ignore[no-untyped-def]
                    rng: random.Random) -> list[tuple[float, float]]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await ctx.new_page()
    await page.goto(base, timeout=180_000)
    await page.wait_for_selector(".st-key-signin_username input", timeout=180_000)
    await page.locator(".st-key-signin_username input").fill(username)
    await page.locator(".st-key-signin_password input").fill(PASSWORD)
    await page.keyboard.press("Enter")
    try:
        await page.wait_for_selector(".st-key-rv_submit", timeout=180_000)
    except Exception:
        await page.screenshot(path=f"/tmp/bench-fail-{username}.png")
        raise
    await page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=180_000)
    await page.wait_for_timeout(500)
    await page.evaluate(INSTALL_JS)
    for i in range(n_items):
        # clicks, not key presses: keyboard events only reach the focused one of the 20 windows
        await page.locator(".st-key-rv_lab_0_0 button").click()
        await page.wait_for_selector(".st-key-rv_lab_0_0 button[kind='primary']", timeout=90_000)
        await page.locator(".st-key-rv_lab_1_0 button").click()
        await page.wait_for_selector(".st-key-rv_lab_1_0 button[kind='primary']", timeout=90_000)
        await page.locator(".st-key-rv_submit button").click()
        await page.wait_for_function(f"() => window.__lat.length >= {i + 1}", timeout=90_000)
        await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))
    lat = await page.evaluate("() => window.__lat")
    await ctx.close()
    return [(float(a), float(b)) for a, b in lat]


async def drive(base: str, n_users: int, n_items: int, think_s: float) -> list[tuple[float, float]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-renderer-backgrounding",
            "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows"])
        rngs = [random.Random(100 + u) for u in range(n_users)]
        # stagger sign-ins a little, as people do; then everyone labels concurrently
        tasks = []
        for u in range(n_users):
            tasks.append(asyncio.create_task(annotator(browser, base, f"bench{u:02d}", n_items, think_s, rngs[u])))
            await asyncio.sleep(0.6)
        results = await asyncio.gather(*tasks)
        await browser.close()
    return [x for r in results for x in r]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def run_mode(gc_mode: str, n_users: int, n_items: int, think_s: float, work: Path) -> dict[str, float]:
    db_path = work / f"bench-{gc_mode}.db"
    db_url = f"sqlite:///{db_path}"
    build_db(db_url, n_items=n_users * n_items + 200, n_users=n_users)
    proc, base = start_server(db_url, work / f"media-{gc_mode}", gc_mode, work / f"server-{gc_mode}.log")
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        started = time.perf_counter()
        lat = asyncio.run(drive(base, n_users, n_items, think_s))
        wall = time.perf_counter() - started
    finally:
        sampler.stop_flag.set()
        sampler.join()
        final_rss = rss_mb(proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    done = [b for _, b in lat]
    timings = work / f"server-{gc_mode}.timings"
    server = [float(line.split("\t")[1]) for line in timings.read_text().splitlines()] if timings.exists() else [0.0]
    return {"n": len(done), "median_ms": statistics.median(done), "p95_ms": pct(done, 0.95),
            "server_median_ms": statistics.median(server), "server_p95_ms": pct(server, 0.95),
            "rss_peak_mb": max(sampler.peak, final_rss), "wall_s": wall}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 annotators × 4 items, the default gc mode only")
    ap.add_argument("--users", type=int, default=None, help="concurrent annotators (default 20; quick 6)")
    ap.add_argument("--items", type=int, default=None, help="items each annotator labels (default 15; quick 6)")
    ap.add_argument("--think", type=float, default=1.0, help="mean think time between items, seconds")
    ap.add_argument("--modes", default=None, help="comma-separated gc modes (default full,off,freeze)")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: install Debian's chromium to run this benchmark")
        return 1
    users = args.users or (4 if args.quick else 20)
    items = args.items or (4 if args.quick else 15)
    modes = (args.modes or ("off" if args.quick else "full,off,freeze")).split(",")
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-app-")
    try:
        for mode in modes:
            r = run_mode(mode, users, items, args.think, Path(tmp))
            rows.append((mode, r))
            print(f"  measured gc={mode}: {r['n']} submits", flush=True)
    finally:
        if os.environ.get("BENCH_KEEP") != "1":  # keep the databases and server logs for a post-mortem
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nreview app: {users} concurrent annotators × {items} items, think time ~{args.think:.1f} s "
          "(submit → next item rendered, measured in the browser)")
    print(f"{'gc mode':<8} {'n':>4} {'browser p50':>12} {'browser p95':>12} {'server p50':>11} {'server p95':>11} "
          f"{'RSS MB':>7} {'srv p50/tgt':>12} {'srv p95/tgt':>12} {'brw p50/tgt':>12} {'RSS/tgt':>8}")
    for mode, r in rows:
        print(f"{mode:<8} {r['n']:>4} {r['median_ms']:>12.1f} {r['p95_ms']:>12.1f} {r['server_median_ms']:>11.1f} "
              f"{r['server_p95_ms']:>11.1f} {r['rss_peak_mb']:>7.0f} {r['server_median_ms'] / TARGET_MEDIAN_MS:>12.2f} "
              f"{r['server_p95_ms'] / TARGET_P95_MS:>12.2f} {r['median_ms'] / TARGET_MEDIAN_MS:>12.2f} "
              f"{r['rss_peak_mb'] / TARGET_RSS_MB:>8.2f}")
    print(f"targets: median < {TARGET_MEDIAN_MS:.0f} ms, p95 < {TARGET_P95_MS:.0f} ms, RSS < {TARGET_RSS_MB:.0f} MB "
          "(ratio < 1 meets the target). browser = Submit press to next item rendered and idle, measured in "
          "chromium (includes its rendering on this machine); server = submit callback to the end of the fragment "
          "run that produced the next item.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
