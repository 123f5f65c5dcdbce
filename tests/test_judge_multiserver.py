"""``safereview judge`` over several servers: spread, failover when one dies mid-run, 429
back-off, per-server counts, and the cache and resume guarantees unchanged."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from judge_support import FakeOpenAI, Reply, completion, smart_reply, uni_collection
from sqlmodel import Session, select
from typer.testing import CliRunner

from safereview.cli.main import app
from safereview.db.engine import init_db
from safereview.db.models import Item, Verdict
from safereview.judge.client import ChatClient, encode_body
from safereview.judge.runner import JudgeSetupError, RunOptions, run_judge
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")
runner = CliRunner()


def slow_smart(body: dict[str, Any], n: int) -> Reply:
    """The smart judge, taking 30 ms per answer, so a run lasts long enough to kill a server in it."""
    reply = smart_reply(body, n)
    reply.delay = 0.03
    return reply


def dead_url() -> str:
    """A local address nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def judge_cli(db_url: str, media: Path, *urls: str, extra: tuple[str, ...] = ("--json",)) -> Any:
    args = ["judge", "--protocol", "uni-judger", "--model", "fake/judge", "--collection", "uni"]
    for url in urls:
        args += ["--base-url", url]
    args += ["--concurrency", "2", *extra, "--db", db_url, "--media-root", str(media)]
    return runner.invoke(app, args, env={"COLUMNS": "200"}, catch_exceptions=False)


def verdict_rows(engine: sa.Engine) -> list[tuple[str, Verdict]]:
    with Session(engine) as s:
        return [(ext, v) for v, ext in s.exec(select(Verdict, Item.external_id).join(Item, Item.id == Verdict.item_id))]


def test_a_server_that_dies_mid_run_is_backed_off_and_the_other_finishes_the_run(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = init_db(db_url)
    media = tmp_path / "media"
    info = uni_collection(engine, media, n=40)  # 30 items need three calls each, 10 are refusals (rule)
    with FakeOpenAI(slow_smart) as a, FakeOpenAI(slow_smart) as b:
        killed_at: list[int] = []

        def kill_a_after_some_requests() -> None:
            deadline = time.monotonic() + 30
            while len(a.requests) < 15 and time.monotonic() < deadline:
                time.sleep(0.002)
            a.kill()  # the 15th request (30 ms to answer) is most likely dropped in flight
            killed_at.append(len(a.requests))

        killer = threading.Thread(target=kill_a_after_some_requests)
        killer.start()
        r = judge_cli(db_url, media, a.url, b.url + "/v1")
        killer.join()
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        bodies = {encode_body(x) for x in [*a.requests, *b.requests]}
        n_a, n_b = len(a.requests), len(b.requests)

    assert killed_at and n_a == killed_at[0]  # nothing reached the dead server after the kill
    assert summary["items"] == 40 and summary["errors"] == 0 and summary["failures"] == 0
    assert summary["ok"] == 60 and summary["rule"] == 20 and summary["verdicts"] == 80
    # every (item, dimension) written exactly once, with the smart judge's labels
    rows = verdict_rows(engine)
    assert len(rows) == 80 and len({(ext, v.dimension) for ext, v in rows}) == 80
    assert {(ext, v.dimension): v.label for ext, v in rows} == {
        (ext, dim): label for ext, dims in info["expected"].items() for dim, label in dims.items()
    }
    assert all(v.status in ("ok", "rule") for _, v in rows)

    # per-server counts: each distinct request answered once, somewhere
    sa_, sb = summary["servers"]
    assert [sa_["url"], sb["url"]] == [a.url, b.url + "/v1"]
    assert summary["calls"] == len(bodies) == 90 and summary["cache_hits"] == 0
    assert sa_["answered"] + sb["answered"] == summary["calls"]
    assert 0 < sa_["answered"] <= n_a  # it answered some before it died
    assert sa_["failed"] >= max(1, n_a - sa_["answered"])  # the ones dropped in flight, then refused connections
    assert sa_["backed_off"] and sa_["backoffs"] >= 1
    assert sa_["sent_elsewhere"] == sa_["failed"]  # every failed attempt was retried on the other server
    assert sb == {**sb, "failed": 0, "refused": 0, "backoffs": 0, "backed_off": False}
    assert sb["answered"] == n_b
    assert summary["retries"] == sa_["failed"]
    assert any(f"server {a.url} was backed off at the end" in note for note in summary["notes"])

    # resume: the same command again finds nothing to do (the dead server is not even tried)
    with FakeOpenAI() as b2:
        again = judge_cli(db_url, media, a.url, b2.url)
        assert again.exit_code == 0, again.output
        assert b2.requests == []
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert second["items"] == 0 and second["skipped"] == 40 and second["calls"] == 0
    assert all(s["answered"] == s["failed"] == 0 and not s["backed_off"] for s in second["servers"])

    # cache: with the verdicts gone, a re-run is answered entirely from the cache, whatever the servers
    before = {(ext, v.dimension): v.label for ext, v in verdict_rows(engine)}
    with engine.begin() as conn:
        conn.execute(sa.delete(Verdict))
    with FakeOpenAI() as b3:
        third_run = judge_cli(db_url, media, b3.url, a.url)  # another order: the same judge
        assert third_run.exit_code == 0, third_run.output
        assert b3.requests == []
    third = json.loads(third_run.stdout.strip().splitlines()[-1])
    assert third["judge_id"] == summary["judge_id"]
    assert third["calls"] == 0 and third["cache_hits"] == 90 and third["verdicts"] == 80
    assert {(ext, v.dimension): v.label for ext, v in verdict_rows(engine)} == before
    engine.dispose()


def test_the_summary_prints_a_per_server_table(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 't.db'}"
    engine = init_db(db_url)
    media = tmp_path / "media"
    uni_collection(engine, media, n=4)
    dead = dead_url()
    with FakeOpenAI() as live:
        r = judge_cli(db_url, media, dead, live.url, extra=())
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "servers" in out and "sent elsewhere" in out and "back-offs" in out
    lines = {url: next(line for line in out.splitlines() if url in line and "│" in line) for url in (dead, live.url)}
    assert "backed off" in lines[dead] and "backed off" not in lines[live.url]
    assert f"note: server {dead} was backed off at the end" in out
    with Session(engine) as s:
        assert {v.status for v in s.exec(select(Verdict)).all()} == {"ok", "rule"}

    # one server: the summary looks as it always did
    with FakeOpenAI() as live:
        with engine.begin() as conn:
            conn.execute(sa.delete(Verdict))
        r = judge_cli(db_url, media, live.url, extra=("--no-cache",))
    assert r.exit_code == 0 and "verdicts written" in r.stdout and "sent elsewhere" not in r.stdout
    engine.dispose()


def test_a_429_with_retry_after_moves_the_traffic_to_the_other_server_without_waiting(tmp_path: Path) -> None:
    engine = init_db(f"sqlite:///{tmp_path / 'r.db'}")
    media = tmp_path / "media"
    info = uni_collection(engine, media, n=8)

    def limited(body: dict[str, Any], n: int) -> Reply:
        return Reply(status=429, body={"error": "rate limited"}, headers={"Retry-After": "30"})

    with FakeOpenAI(limited) as a, FakeOpenAI(slow_smart) as b:
        opts = RunOptions(
            protocol="uni-judger",
            base_url=[a.url, b.url],
            model="fake/judge",
            collection="uni",
            concurrency=2,
            progress=False,
        )
        started = time.monotonic()
        summary = run_judge(engine, media, opts, actor=SYSTEM)
        elapsed = time.monotonic() - started
        n_a = len(a.requests)
    assert elapsed < 10  # not the 30 s the first server asked for
    assert summary.errors == 0 and summary.failures == 0 and summary.ok == 12
    assert {(ext, v.dimension): v.label for ext, v in verdict_rows(engine)} == {
        (ext, dim): label for ext, dims in info["expected"].items() for dim, label in dims.items()
    }
    sa_, sb = summary.servers
    # the requests it got at the start (both its connections) failed together: one back-off
    assert 1 <= n_a <= 2 and sa_["failed"] == n_a and sa_["backoffs"] == 1 and sa_["answered"] == 0
    assert sa_["sent_elsewhere"] == n_a and sa_["backed_off"]
    assert sb["answered"] == summary.calls and not sb["backed_off"]
    assert summary.retries == n_a
    engine.dispose()


def test_a_dead_server_costs_a_request_at_most_one_retry_while_another_answers() -> None:
    """With back-offs of a millisecond the dead server is back in the rotation long before a
    busy live server frees a connection; a request that failed on it must wait for the live
    one rather than spend its last retry on the dead one again. And while the live server
    answers, the dead one gets one request at a time (a probe), not all its connections."""
    with FakeOpenAI(lambda body, n: Reply(body=completion("ok"), delay=0.02)) as live:
        dead = dead_url()

        async def main() -> tuple[list[Any], Any]:
            client = ChatClient(
                base_url=[dead, live.url],
                model="m",
                concurrency=2,
                max_retries=1,
                backoff_base=0.001,
                backoff_max=0.002,
                timeout=5.0,
            )
            async with client:
                answers = await asyncio.gather(
                    *(client.ask("q", [{"role": "user", "content": f"item {i}"}], 10) for i in range(40))
                )
            return answers, client

        answers, client = asyncio.run(main())
    assert [a.error for a in answers if a.text is None] == []
    assert all(a.text == "ok" for a in answers)
    d, lv = client.server_stats()
    assert d.answered == 0 and d.failed >= 1 and d.sent_elsewhere == d.failed
    assert lv.answered == 40 and lv.failed == 0
    assert client.stats.retries == d.failed and client.stats.calls == 40


def test_a_failing_server_gets_one_request_at_a_time_while_another_answers() -> None:
    """After its first failures the broken server is only probed, one request at a time, so
    it holds up at most one request per back-off instead of ``concurrency`` of them."""
    arrivals: list[float] = []

    def broken(body: dict[str, Any], n: int) -> Reply:
        arrivals.append(time.monotonic())
        return Reply(status=503, body={"error": "overloaded"}, delay=0.05)

    with (
        FakeOpenAI(broken) as bad,
        FakeOpenAI(lambda body, n: Reply(body=completion("ok"), delay=0.02)) as live,
    ):

        async def main() -> tuple[list[Any], Any]:
            client = ChatClient(
                base_url=[bad.url, live.url],
                model="m",
                concurrency=3,
                max_retries=2,
                backoff_base=0.001,
                backoff_max=0.002,
            )
            async with client:
                answers = await asyncio.gather(
                    *(client.ask("q", [{"role": "user", "content": f"item {i}"}], 10) for i in range(60))
                )
            return answers, client

        answers, client = asyncio.run(main())
    assert all(a.text == "ok" for a in answers)
    # requests sent before its first failure came back (at the earliest 50 ms after the first
    # arrival) took its connections while it looked healthy; after that it is only probed
    later = [t for t in arrivals if t >= arrivals[0] + 0.05]
    assert len(arrivals) - len(later) <= 3 and len(later) >= 2  # probed again and again (back-offs of ~1 ms)
    assert all(t2 - t1 >= 0.045 for t1, t2 in itertools.pairwise(later)), later  # never two at once
    bad_stats, live_stats = client.server_stats()
    assert bad_stats.failed == len(arrivals) and bad_stats.answered == 0 and live_stats.answered == 60


def test_the_server_list_is_checked_and_is_not_part_of_the_judge_id(tmp_path: Path) -> None:
    engine = init_db(f"sqlite:///{tmp_path / 'c.db'}")
    media = tmp_path / "media"
    uni_collection(engine, media, n=2)
    base = {"protocol": "uni-judger", "model": "m", "collection": "uni", "dry_run": True, "progress": False}
    with pytest.raises(JudgeSetupError, match="given twice"):
        run_judge(engine, media, RunOptions(base_url=["http://h:1", "http://h:1/v1"], **base), actor=SYSTEM)
    with pytest.raises(JudgeSetupError, match="no server"):
        run_judge(engine, media, RunOptions(base_url=[], **base), actor=SYSTEM)
    one = run_judge(engine, media, RunOptions(base_url="http://h:1", **base), actor=SYSTEM)
    two = run_judge(engine, media, RunOptions(base_url=["http://h:2", "http://h:1"], **base), actor=SYSTEM)
    assert one.judge_id == two.judge_id and one.requests == two.requests
    # credentials in a URL stay out of the summary
    keyed = ChatClient(base_url=["https://user:sk-secret-123@h/v1?key=sk-secret-123", "http://h:2"], model="m")
    assert [s.url for s in keyed.server_stats()] == ["https://h/v1", "http://h:2"]
    engine.dispose()


def test_the_same_5xx_from_two_servers_is_a_passing_fault_not_a_refusal() -> None:
    """ "The same answer twice" means from the same server: two overloaded servers answering
    503 once each have not refused the request, and it is retried until one answers."""

    def overloaded_once(body: dict[str, Any], n: int) -> Reply:
        if n == 0:
            return Reply(status=503, body={"error": "overloaded"})
        return Reply(body=completion("ok"))

    with FakeOpenAI(overloaded_once) as a, FakeOpenAI(overloaded_once) as b:

        async def main() -> Any:
            client = ChatClient(base_url=[a.url, b.url], model="m", concurrency=1, max_retries=5, backoff_base=0.001)
            async with client:
                return await client.ask("q", [{"role": "user", "content": "x"}], 10), client

        answer, client = asyncio.run(main())
    assert answer.text == "ok", answer.error
    assert sum(s.refused for s in client.server_stats()) == 0


def test_a_query_string_stays_after_the_path() -> None:
    from safereview.judge.client import chat_url

    assert (
        chat_url("https://gw.example/v1?api-version=2024-06")
        == "https://gw.example/v1/chat/completions?api-version=2024-06"
    )
    assert chat_url("http://h:8000/") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_a_run_whose_every_server_falls_silent_stops_keeps_its_verdicts_and_resumes(tmp_path: Path) -> None:
    """The only server dies mid-run. Instead of backing off for hours (each item failing after
    its retries), the run stops once no server has answered for --give-up-after seconds: the
    verdicts made so far are stored, the command exits 1 and says why, and the same command
    against a live server finishes the rest without redoing any."""
    db_url = f"sqlite:///{tmp_path / 's.db'}"
    engine = init_db(db_url)
    media = tmp_path / "media"
    info = uni_collection(engine, media, n=40)
    with FakeOpenAI(slow_smart) as a:

        def kill_after_some_requests() -> None:
            deadline = time.monotonic() + 30
            while len(a.requests) < 20 and time.monotonic() < deadline:
                time.sleep(0.002)
            a.kill()

        killer = threading.Thread(target=kill_after_some_requests)
        killer.start()
        started = time.monotonic()
        extra = ("--max-retries", "2", "--give-up-after", "1", "--batch-size", "1")
        r = judge_cli(db_url, media, a.url, extra=extra)
        took = time.monotonic() - started
        killer.join()
        answered = len(a.requests)
    assert r.exit_code == 1, r.output
    assert "stopped: no server has answered for " in r.stderr and "last error: Connect" in r.stderr
    assert " made are stored. Run the same command again" in r.stderr
    assert took < 20, took  # not hours of back-off (the back-offs alone would grow to a minute each)
    stored = verdict_rows(engine)
    assert stored, "the verdicts made before the server died are kept"
    assert all(v.status in ("ok", "rule") for _, v in stored)  # nothing half-judged, no error verdict
    assert 0 < len({ext for ext, _ in stored}) < 40 and answered >= 20

    with FakeOpenAI(smart_reply) as b:
        again = judge_cli(db_url, media, b.url)
    assert again.exit_code == 0, again.output
    rows = verdict_rows(engine)
    assert len(rows) == 80 and len({(ext, v.dimension) for ext, v in rows}) == 80
    assert {(ext, v.dimension): v.label for ext, v in rows} == {
        (ext, dim): label for ext, dims in info["expected"].items() for dim, label in dims.items()
    }
    engine.dispose()
