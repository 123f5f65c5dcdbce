"""``safereview judge`` / ``stats`` end to end on SQLite and PostgreSQL, dry runs and resume after a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from judge_support import FakeOpenAI, Reply, add_item, make_png, smart_reply, store_media, uni_collection
from sqlmodel import Session, select
from typer.testing import CliRunner

from safereview.cli.main import app
from safereview.db.collections import ensure_collection
from safereview.db.engine import init_db, session_scope
from safereview.db.models import Gold, GoldSnapshot, Item, JudgeConfig, Verdict
from safereview.judge.metrics import wilson
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be

runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    return result


def test_judge_fills_every_item_and_dimension(db_url: str, tmp_path: Path) -> None:
    engine = init_db(db_url)
    media = tmp_path / "media"
    info = uni_collection(engine, media, n=8)
    with FakeOpenAI() as srv:
        r = cli(
            "judge",
            "--protocol",
            "uni-judger",
            "--base-url",
            srv.url + "/v1",
            "--model",
            "fake/judge-7b",
            "--collection",
            "uni",
            "--concurrency",
            "4",
            "--json",
            "--db",
            db_url,
            "--media-root",
            str(media),
        )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["items"] == 8 and summary["rule"] == 4 and summary["ok"] == 12
    with Session(engine) as s:
        rows = s.exec(select(Verdict, Item.external_id).join(Item, Item.id == Verdict.item_id)).all()
        configs = s.exec(select(JudgeConfig)).all()
    got = {(ext, v.dimension): v for v, ext in rows}
    assert len(rows) == 16
    for ext, dims in info["expected"].items():
        for dim, label in dims.items():
            assert got[(ext, dim)].label == label, (ext, dim)
    assert len(configs) == 1 and configs[0].protocol == "uni-judger" and configs[0].model == "fake/judge-7b"
    jid = configs[0].id
    assert jid.startswith("uni-judger:fake/judge-7b:") and len(jid.rsplit(":", 1)[1]) == 8
    assert {v.judge_id for v, _ in rows} == {jid} and {v.judge_version for v, _ in rows} == {configs[0].prompt_version}
    for (_ext, dim), v in got.items():
        if v.status == "ok" and dim == "contextual":
            assert v.intent.startswith("The user wants")

    # stats: the four metrics per task type, with Wilson intervals, from the same verdicts
    r = cli("stats", "--collection", "uni", "--by", "task_type", "--json", "--db", db_url)
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    overall = stats["judge"][0]
    assert overall["group"] == "all"
    ctx = [d["contextual"] for d in info["expected"].values()]
    intr = [d["intrinsic"] for d in info["expected"].values()]
    m = overall["metrics"]
    assert (m["C-Unsafe"]["k"], m["C-Unsafe"]["n"]) == (ctx.count("unsafe"), 8)
    assert (m["C-Reject"]["k"], m["C-Reject"]["n"]) == (ctx.count("refusal"), 8)
    assert (m["I-Unsafe"]["k"], m["I-Unsafe"]["n"]) == (intr.count("unsafe"), 8)
    both = sum(c in ("safe", "refusal") and i == "safe" for c, i in zip(ctx, intr, strict=True))
    assert m["Both-Safe"]["k"] == both
    assert (m["Both-Safe"]["lo"], m["Both-Safe"]["hi"]) == wilson(both, 8)
    assert {g["group"] for g in stats["judge"][1:]} == {
        "malicious-text-generation",
        "image-unsafe",
        "unsafe-t2i-generation",
    }
    assert stats["gold"] == []
    r = cli("stats", "--collection", "uni", "--db", db_url)
    assert r.exit_code == 0 and "C-Unsafe" in r.stdout and "Both-Safe" in r.stdout
    engine.dispose()


def test_stats_puts_gold_beside_the_judge(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'g.db'}"
    engine = init_db(db_url)
    media = tmp_path / "media"
    uni_collection(engine, media, n=4)
    with FakeOpenAI() as srv:
        assert (
            cli(
                "judge",
                "--protocol",
                "uni-judger",
                "--base-url",
                srv.url,
                "--model",
                "m",
                "--json",
                "--db",
                db_url,
                "--media-root",
                str(media),
            ).exit_code
            == 0
        )
    with session_scope(engine) as s:
        items = s.exec(select(Item).order_by(Item.id)).all()
        snap = GoldSnapshot(method="majority", collection_ids=[items[0].collection_id], n_rows=8)
        s.add(snap)
        s.flush()
        for it in items:  # humans call everything contextually unsafe and intrinsically safe
            s.add(
                Gold(
                    snapshot_id=snap.id,
                    item_id=it.id,
                    dimension="contextual",
                    label="unsafe",
                    method="majority",
                    n_annotators=2,
                )
            )
            s.add(
                Gold(
                    snapshot_id=snap.id,
                    item_id=it.id,
                    dimension="intrinsic",
                    label="safe",
                    method="majority",
                    n_annotators=2,
                )
            )
    r = cli("stats", "--collection", "uni", "--json", "--db", db_url)
    stats = json.loads(r.stdout)
    gold = stats["gold"][0]["metrics"]
    assert (gold["C-Unsafe"]["k"], gold["C-Unsafe"]["n"]) == (4, 4)
    assert (gold["I-Unsafe"]["k"], gold["Both-Safe"]["k"]) == (0, 0)
    assert "not a random sample" in stats["gold_describes"]
    assert stats["gold_snapshot_id"] is not None
    pop = stats["population"]["groups"]["all"]["C-Unsafe"]
    assert pop["human"]["n_labelled"] == 0  # the gold rows came from no review sample: no design-based figure
    r = cli("stats", "--collection", "uni", "--db", db_url)
    text = " ".join(r.stdout.split())  # the explanation wraps at the terminal's width
    assert "human" in text and "corrected" in text and "review sample" in text
    engine.dispose()


def test_vlsu_protocol_grades_image_text_and_joint(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'v.db'}"
    engine = init_db(db_url)
    media = tmp_path / "media"
    with session_scope(engine) as s:
        col = ensure_collection(s, "vlsu-run", "vlsu")
        for k in range(3):
            sha = store_media(s, media, make_png(k), name=f"v{k}.png")
            add_item(
                s,
                col.id,
                f"v{k}",
                category="C9: Interpersonal Violence",
                prompt=[
                    {"modality": "image", "media": sha, "name": f"v{k}.png"},
                    {"modality": "text", "text": f"caption {k} txt={k % 3} jnt={(k + 1) % 3}"},
                ],
            )
        add_item(s, col.id, "textonly", prompt=[{"modality": "text", "text": "just words txt=2 jnt=2"}])
    with FakeOpenAI() as srv:
        r = cli(
            "judge",
            "--protocol",
            "vlsu",
            "--base-url",
            srv.url,
            "--model",
            "m",
            "--json",
            "--collection",
            "vlsu-run",
            "--db",
            db_url,
            "--media-root",
            str(media),
        )
    assert r.exit_code == 0, r.output
    qs = sorted(srv.questions())
    assert qs.count("image") == 3 and qs.count("text") == 4 and qs.count("joint") == 4
    for body in srv.requests:  # the text-alone call never carries the image and vice versa
        content = body["messages"][1]["content"]
        if "ONE TEXT" in body["messages"][0]["content"]:
            assert isinstance(content, str)  # text only: a plain string, as every chat template takes
        else:
            assert isinstance(content, str) or {p["type"] for p in content} <= {"text", "image_url"}
    sev = {0: "safe", 1: "borderline", 2: "unsafe"}
    with Session(engine) as s:
        got = {
            (ext, v.dimension): v
            for v, ext in s.exec(select(Verdict, Item.external_id).join(Item, Item.id == Verdict.item_id)).all()
        }
    assert len(got) == 12
    for k in range(3):
        assert got[(f"v{k}", "text")].label == sev[k % 3]
        assert got[(f"v{k}", "joint")].label == sev[(k + 1) % 3]
        assert got[(f"v{k}", "image")].label == "borderline"  # no marker in an image: the server answers 1
    assert got[("textonly", "image")].status == "rule" and got[("textonly", "image")].label == "safe"
    assert got[("textonly", "text")].label == "unsafe"
    r = cli("stats", "--collection", "vlsu-run", "--json", "--db", db_url)
    stats = json.loads(r.stdout)
    assert stats["kind"] == "label-shares"
    assert stats["judge"][0]["metrics"]["joint:unsafe"]["k"] == 2  # v1 (jnt=2) and textonly
    # the wrong protocol for a collection is refused with a clear message
    r = cli(
        "judge",
        "--protocol",
        "uni-judger",
        "--base-url",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--collection",
        "vlsu-run",
        "--db",
        db_url,
        "--media-root",
        str(media),
    )
    assert r.exit_code == 2 and "contextual" in r.stderr
    engine.dispose()


def test_dry_run_prints_request_bodies_and_calls_nothing(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'd.db'}"
    engine = init_db(db_url)
    media = tmp_path / "media"
    uni_collection(engine, media, n=3)
    with FakeOpenAI() as srv:
        r = cli(
            "judge",
            "--protocol",
            "uni-judger",
            "--base-url",
            srv.url,
            "--model",
            "m",
            "--dry-run",
            "--limit",
            "3",
            "--db",
            db_url,
            "--media-root",
            str(media),
        )
    assert r.exit_code == 0, r.output
    assert srv.requests == []
    requests = json.loads(r.stdout)
    questions = [q["question"] for q in requests]
    # 3 items: text→text, image+text→text, text→image (the 4th kind, a refusal, needs no call)
    assert sorted(questions) == sorted(
        ["intent"] * 3 + ["intrinsic-text"] * 2 + ["intrinsic-image"] + ["contextual-text"] * 2 + ["contextual-image"]
    )
    assert any("dry run: the intent" in json.dumps(q["body"]) for q in requests if q["question"].startswith("cont"))
    urls = [
        p["image_url"]["url"]
        for q in requests
        for m in q["body"]["messages"]
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "image_url"
    ]
    assert urls and all(u.startswith("data:image/png;base64,") and "base64 chars]" in u for u in urls)
    assert all(q["body"]["temperature"] == 0 for q in requests)
    assert {q["body"]["max_tokens"] for q in requests} == {300, 400}
    r = cli(
        "judge",
        "--protocol",
        "uni-judger",
        "--base-url",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--dry-run",
        "--max-tokens",
        "4096",
        "--db",
        db_url,
        "--media-root",
        str(media),
    )
    assert {q["body"]["max_tokens"] for q in json.loads(r.stdout)} == {4096}
    with Session(engine) as s:
        assert s.exec(select(Verdict)).all() == [] and s.exec(select(JudgeConfig)).all() == []
    engine.dispose()


@pytest.mark.slow
def test_resume_after_kill_has_no_duplicates_and_no_gaps(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'k.db'}"
    engine = init_db(db_url)
    media = tmp_path / "media"
    n_items = 12
    uni_collection(engine, media, n=n_items)
    n_rule = sum(1 for k in range(n_items) if k % 4 == 3)

    def slow(body: dict[str, Any], n: int) -> Reply:
        reply = smart_reply(body, n)
        reply.delay = 0.25
        return reply

    def count_verdicts() -> int:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(Verdict)).scalar_one()

    args = [
        "-c",
        "from safereview.cli.main import app; app()",
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
            [sys.executable, *args, "--base-url", srv.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 60
            while count_verdicts() < 6 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        first_requests = len(srv.requests)
    committed = count_verdicts()
    assert 6 <= committed < 2 * n_items  # killed mid-run with part of the work committed
    with Session(engine) as s:
        done_items = {v.item_id for v in s.exec(select(Verdict)).all()}
    with FakeOpenAI() as srv2:
        out = subprocess.run(
            [sys.executable, *args, "--base-url", srv2.url], capture_output=True, text=True, timeout=120
        )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    # an item's verdicts are committed together, so every item seen before the kill is complete
    assert summary["skipped"] == len(done_items) >= 3
    with Session(engine) as s:
        rows = s.exec(select(Verdict)).all()
    keys = [(v.item_id, v.dimension) for v in rows]
    assert len(keys) == len(set(keys)) == 2 * n_items  # every item and dimension, each once
    assert all(v.status in ("ok", "rule") for v in rows)
    assert sum(v.status == "rule" for v in rows) == 2 * n_rule
    # finished items were not asked again; only the unfinished remainder was
    with Session(engine) as s:
        finished_before = {i.external_id for i in s.exec(select(Item)).all() if i.id in done_items}
    asked_again = {ext for ext in (_external_of(b) for b in srv2.requests) if ext}
    assert asked_again and not asked_again & finished_before
    assert first_requests > 0
    engine.dispose()


def _external_of(body: dict[str, Any]) -> str | None:
    import re

    m = re.search(r"Instruction (\d+)\.|answer (\d+) ", json.dumps(body))
    if not m:
        return None
    return f"u{m.group(1) or m.group(2)}"


def test_judge_streams_items_in_chunks_and_judges_only_what_is_missing(tmp_path: Path, monkeypatch: Any) -> None:
    """Items are planned by id and loaded a few at a time; finished pairs are never asked again."""
    import safereview.judge.runner as runner_mod
    from safereview.judge.runner import RunOptions, run_judge

    monkeypatch.setattr(runner_mod, "LOAD_CHUNK", 3)  # 8 items: chunks of 3, 3, 2 with 4 workers
    engine = init_db(f"sqlite:///{tmp_path / 'chunks.db'}")
    media = tmp_path / "media"
    info = uni_collection(engine, media, n=8)
    with FakeOpenAI() as srv:
        opts = RunOptions(
            protocol="uni-judger",
            base_url=srv.url + "/v1",
            model="fake/judge-7b",
            collection="uni",
            concurrency=4,
            cache=False,
        )
        first = run_judge(engine, media, opts, actor=SYSTEM)
        with session_scope(engine) as s:  # forget two answers: one whole item, one dimension of another
            u1, u4 = (s.exec(select(Item.id).where(Item.external_id == e)).one() for e in ("u1", "u4"))
            for v in s.exec(select(Verdict).where(Verdict.item_id.in_([u1, u4]))).all():  # type: ignore[attr-defined]
                if v.item_id == u1 or v.dimension == "intrinsic":
                    s.delete(v)
        n_before = len(srv.requests)
        second = run_judge(engine, media, opts, actor=SYSTEM)
        again = srv.requests[n_before:]
    assert first.items == 8 and first.skipped == 0
    assert second.items == 2 and second.skipped == 6
    # the image item u1 was re-judged with its picture: the media refs of its chunk were loaded
    assert any(
        part.get("type") == "image_url"
        for body in again
        for m in body["messages"]
        if isinstance(m.get("content"), list)
        for part in m["content"]
    )
    with Session(engine) as s:
        rows = s.exec(select(Verdict, Item.external_id).join(Item, Item.id == Verdict.item_id)).all()
    assert sorted((ext, v.dimension) for v, ext in rows) == sorted(
        (ext, dim) for ext, dims in info["expected"].items() for dim in dims
    )  # no gaps, no duplicates
    assert all(v.label == info["expected"][ext][v.dimension] for v, ext in rows)
    engine.dispose()


def test_the_run_summary_says_when_log_probabilities_never_came_and_why_verdicts_failed(tmp_path: Path) -> None:
    """A server that ignores ``logprobs`` (or fails on some items) is named in the summary, not hidden in counts."""
    from safereview.judge.runner import RunOptions, run_judge

    engine = init_db(f"sqlite:///{tmp_path / 'lp.db'}")
    media = tmp_path / "media"
    uni_collection(engine, media, n=4)

    def no_logprobs(body: dict[str, Any], n: int) -> Reply:
        return smart_reply({**body, "logprobs": False}, n)  # answers, never with log-probabilities

    with FakeOpenAI(no_logprobs) as srv:
        opts = RunOptions(
            protocol="uni-judger", base_url=srv.url + "/v1", model="fake/judge", collection="uni", logprobs=True
        )
        summary = run_judge(engine, media, opts, actor=SYSTEM)
    assert summary.ok > 0 and summary.with_probability == 0
    assert any("no usable log-probabilities" in n for n in summary.notes)
    assert "no usable log-probabilities" in " ".join(summary.as_dict()["notes"])
    with FakeOpenAI() as srv:  # the same request with log-probabilities: no such note
        opts = RunOptions(
            protocol="uni-judger",
            base_url=srv.url + "/v1",
            model="fake/judge-lp",
            collection="uni",
            logprobs=True,
            cache=False,
        )
        summary = run_judge(engine, media, opts, actor=SYSTEM)
    assert summary.with_probability > 0 and not any("log-probabilities" in n for n in summary.notes)
    with FakeOpenAI(lambda body, n: Reply(status=400, body={"error": {"message": "bad request"}})) as srv:
        opts = RunOptions(
            protocol="uni-judger",
            base_url=srv.url + "/v1",
            model="fake/judge-broken",
            collection="uni",
            max_retries=0,
            cache=False,
        )
        summary = run_judge(engine, media, opts, actor=SYSTEM)
    assert summary.errors > 0 and summary.notes and all("failed:" in n for n in summary.notes)


def test_the_cli_prints_ids_and_paths_as_they_are(tmp_path: Path) -> None:
    """Judge ids, model names and formats are data, not rich markup or emoji codes: a model
    called "llama" once printed its judge id as "uni-judger🦙…", and an export's "[jsonl]"
    vanished as a style tag."""
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    engine = init_db(db_url)
    media = tmp_path / "media"
    uni_collection(engine, media, n=2)
    with FakeOpenAI() as srv:
        r = cli(
            *("judge", "--protocol", "uni-judger", "--base-url", srv.url, "--model", "llama", "-c", "uni"),
            *("--db", db_url, "--media-root", str(media)),
        )
    assert r.exit_code == 0, r.output
    assert "judge run: uni-judger:llama:" in r.stdout and "\N{LLAMA}" not in r.stdout
    out = tmp_path / "items [v1].jsonl"
    r = cli("export", "items", "-c", "uni", "--out", str(out), "--db", db_url)
    assert r.exit_code == 0, r.output
    assert "items [v1].jsonl" in " ".join(r.stdout.split()) and "[jsonl]" in r.stdout
    engine.dispose()
