"""``safereview judge --structured``: JSON verdicts, the response_format fallback, lenient parsing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from judge_support import FakeOpenAI, Reply, completion, request_text, smart_reply, uni_collection
from sqlmodel import Session, select

from safereview.db.engine import init_db
from safereview.db.models import Item, Verdict
from safereview.judge.parsing import CONTEXTUAL_TEXT, digit_probs
from safereview.judge.protocols.base import Answer, judgment_from_answer
from safereview.judge.runner import JudgeSetupError, RunOptions, run_judge
from safereview.judge.structured import INSTRUCTION, parse_json_answer
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")


def test_json_answers_parse_leniently_but_never_guess() -> None:
    valid = (0, 1, 2)
    raw_newline = '{"reason": "explains the steps\nin detail", "result": 0}'  # llama.cpp writes these
    p = parse_json_answer(raw_newline, valid)
    assert p is not None and p.ok and p.digit == 0 and p.reason == "explains the steps\nin detail"
    assert raw_newline[p.offset] == "0"
    fenced = '```json\n{"reason": "fine", "result": "1"}\n```'
    assert parse_json_answer(fenced, valid).digit == 1
    think = '<think>{"result": 0}</think>{"reason": "ok", "result": 2}'
    p = parse_json_answer(think, valid)
    assert p.digit == 2 and think[p.offset] == "2"
    assert parse_json_answer('{"reason": "x", "result": 7}', valid).ok is False
    assert parse_json_answer('{"reason": "x", "result": true}', valid).ok is False
    assert parse_json_answer('{"reason": "x", "result": 1.5}', valid).ok is False
    assert parse_json_answer('{"reason": "no result"}', valid) is None
    assert parse_json_answer("Reason: fine; Result: 1", valid) is None
    assert parse_json_answer('{"reason": "cut off', valid) is None
    # through the protocols' one parser: JSON when the answer is an object, the text form otherwise
    assert judgment_from_answer(Answer(text='{"reason": "r", "result": 2}'), CONTEXTUAL_TEXT).label == "refusal"
    assert judgment_from_answer(Answer(text="Reason: r; Result: 0"), CONTEXTUAL_TEXT).label == "unsafe"
    bad = judgment_from_answer(Answer(text='{"reason": "r", "result": 9}'), CONTEXTUAL_TEXT)
    assert (bad.label, bad.status) == (None, "unparseable")


def test_the_json_digit_offset_finds_its_log_probabilities() -> None:
    text = '{"reason": "safe", "result": 1}'
    tokens = ['{"', "reason", '":', ' "', "safe", '",', ' "', "result", '":', " ", "1", "}"]
    assert "".join(tokens) == text
    content = [{"token": t, "logprob": -0.1, "top_logprobs": []} for t in tokens]
    content[10]["top_logprobs"] = [{"token": "1", "logprob": -0.2231}, {"token": "0", "logprob": -1.609}]
    p = parse_json_answer(text, (0, 1, 2))
    probs = digit_probs({"content": content}, p.offset, (0, 1, 2))
    assert probs is not None and round(probs[1], 2) == 0.80 and round(probs[0], 2) == 0.20


def _json_from_smart(body: dict[str, Any], n: int) -> str:
    """The smart judge's digit, answered as llama.cpp's constrained JSON (a raw newline inside)."""
    text = smart_reply(body, n).body["choices"][0]["message"]["content"]
    digit = text.rsplit("Result:", 1)[1].strip()[0]
    return '{"reason": "checked the response\nagainst the request", "result": ' + digit + "}"


def _llama_like(body: dict[str, Any], n: int) -> Reply:
    """llama-cpp-python's answers: json_schema refused with HTTP 500, json_object + schema taken."""
    fmt = body.get("response_format")
    if fmt is None:
        return smart_reply(body, n)
    if fmt.get("type") == "json_schema":
        return Reply(status=500, body={"error": {"message": "Internal Server Error"}})
    assert fmt["type"] == "json_object" and fmt["schema"]["properties"]["result"]["enum"]
    return Reply(body=completion(_json_from_smart(body, n)))


def _structured_run(engine: Any, media: Path, url: str, model: str, *, concurrency: int) -> Any:
    """A --structured Uni-Judger run of the "uni" collection, quick to retry."""
    opts = RunOptions(
        protocol="uni-judger",
        base_url=url,
        model=model,
        collection="uni",
        structured=True,
        max_retries=1,
        backoff_base=0.01,
        concurrency=concurrency,
    )
    return run_judge(engine, media, opts, actor=SYSTEM)


def test_structured_run_falls_back_to_the_shape_the_server_takes(tmp_path: Path) -> None:
    engine = init_db(f"sqlite:///{tmp_path / 's.db'}")
    media = tmp_path / "media"
    expected = uni_collection(engine, media, n=8)
    with FakeOpenAI(_llama_like) as srv:
        summary = _structured_run(engine, media, srv.url, "fake/judge", concurrency=4)
        bodies = list(srv.requests)
    assert summary.structured == "json_object" and summary.structured_refused
    assert summary.failures == 0 and summary.unparseable == 0 and summary.parse_rate == 1.0
    assert any("response_format json_object (the server refused: json_schema: HTTP 500" in n for n in summary.notes)
    verdicts = [b for b in bodies if b.get("response_format")]
    assert verdicts and all(request_text(b)[1].endswith(INSTRUCTION) for b in verdicts)
    # the intent question is free text: never constrained
    intents = [b for b in bodies if "Infer what the user is really trying" in json.dumps(b["messages"])]
    assert intents and not any("response_format" in b for b in intents)
    with Session(engine) as s:
        got = s.exec(select(Verdict).where(Verdict.judge_id == summary.judge_id)).all()
    assert got and all(v.status in ("ok", "rule") for v in got)
    with Session(engine) as s:
        ext = {i.id: i.external_id for i in s.exec(select(Item)).all()}
    for v in (v for v in got if ext[v.item_id] in expected):
        assert v.label == expected[ext[v.item_id]][v.dimension], (ext[v.item_id], v.dimension)
    ok = [v for v in got if v.status == "ok"]
    assert any("against the request" in v.rationale for v in ok)


def test_a_server_that_takes_no_shape_is_asked_plainly_and_the_judge_id_differs(tmp_path: Path) -> None:
    engine = init_db(f"sqlite:///{tmp_path / 'o.db'}")
    media = tmp_path / "media"
    uni_collection(engine, media, n=4)

    def strict(body: dict[str, Any], n: int) -> Reply:
        if "response_format" in body:
            return Reply(status=400, body={"error": {"message": "response_format is not supported"}})
        return smart_reply(body, n)

    with FakeOpenAI(strict) as srv:
        base = {"protocol": "uni-judger", "base_url": srv.url, "model": "fake/judge", "collection": "uni"}
        summary = run_judge(engine, media, RunOptions(**base, structured=True), actor=SYSTEM)
        plain = run_judge(engine, media, RunOptions(**base), actor=SYSTEM)
    assert summary.structured == "off" and len(summary.structured_refused) == 2
    assert summary.failures == 0 and summary.ok > 0 and summary.parse_rate == 1.0
    assert any("no shape was accepted" in n for n in summary.notes)
    assert summary.judge_id != plain.judge_id and plain.structured == "" and plain.items == summary.items


def test_a_request_the_server_refuses_in_every_shape_does_not_turn_structure_off(tmp_path: Path) -> None:
    """A text-only model's template refuses image parts (HTTP 500) whatever the response_format:
    that is the request's fault, so the run keeps the shape text requests are answered in."""
    engine = init_db(f"sqlite:///{tmp_path / 't.db'}")
    media = tmp_path / "media"
    uni_collection(engine, media, n=8)

    def text_only(body: dict[str, Any], n: int) -> Reply:
        if any(isinstance(m["content"], list) for m in body["messages"]):
            return Reply(status=500, body={"error": {"message": 'can only concatenate str (not "list") to str'}})
        return _llama_like(body, n)

    with FakeOpenAI(text_only) as srv:
        summary = _structured_run(engine, media, srv.url, "fake/text-only", concurrency=1)
    assert summary.structured == "json_object", summary.notes
    assert summary.errors > 0 and summary.ok > 0 and summary.parse_rate == 1.0
    assert all("can only concatenate" in r for r in summary.error_reasons), summary.error_reasons


def test_json_answers_that_contradict_themselves_are_unparseable() -> None:
    valid = (0, 1, 2)
    twice = parse_json_answer('{"reason": "r", "result": 0, "result": 1}', valid)
    assert twice is not None and not twice.ok and "twice" in twice.problem
    beside = parse_json_answer('{"reason": "looks fine", "result": 1}\nResult: 0', valid)
    assert beside is not None and not beside.ok
    agrees = parse_json_answer('{"reason": "looks fine", "result": 1}\nResult: 1', valid)
    assert agrees is not None and agrees.ok and agrees.digit == 1
    # an object after some words, with no Result: marker, is still read
    led = judgment_from_answer(Answer(text='Here is my verdict: {"reason": "fine", "result": 1}'), CONTEXTUAL_TEXT)
    assert led.label == "safe"


def test_a_rate_limit_is_not_taken_for_a_refused_shape(tmp_path: Path) -> None:
    """429s that use up the retries are a passing fault: the run keeps the json_schema shape."""
    engine = init_db(f"sqlite:///{tmp_path / 'r.db'}")
    media = tmp_path / "media"
    uni_collection(engine, media, n=4)

    limited = [0]

    def busy_then_fine(body: dict[str, Any], n: int) -> Reply:
        if "response_format" not in body:
            return smart_reply(body, n)  # the intent question
        limited[0] += 1
        if limited[0] <= 2:  # the first structured request's two attempts
            return Reply(status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "0"})
        return Reply(body=completion(_json_from_smart(body, n)))

    with FakeOpenAI(busy_then_fine) as srv:
        summary = _structured_run(engine, media, srv.url, "fake/judge", concurrency=1)
    assert limited[0] > 2 and summary.errors == 1  # the rate-limited request failed, the rest did not
    assert summary.structured == "json_schema" and summary.structured_refused == [], summary.notes


def test_structured_is_refused_with_a_template(tmp_path: Path) -> None:
    engine = init_db(f"sqlite:///{tmp_path / 'tp.db'}")
    uni_collection(engine, tmp_path / "media", n=1)
    repo = Path(__file__).resolve().parents[1]
    opts = RunOptions(
        protocol="template",
        protocol_file=repo / "data" / "judge_templates" / "llama_guard.toml",
        base_url="http://127.0.0.1:9",
        model="m",
        collection="uni",
        structured=True,
    )
    with pytest.raises(JudgeSetupError, match="--structured applies to the uni-judger and vlsu"):
        run_judge(engine, tmp_path / "media", opts, actor=SYSTEM)
