"""The judge client against a real local HTTP server: media, retries, time limits, cache, log-probs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from judge_support import (
    FakeOpenAI,
    Reply,
    add_item,
    completion,
    decode_images,
    make_png,
    question_of,
    smart_reply,
    store_media,
    uni_collection,
)
from PIL import Image
from sqlmodel import Session, select

from safereview.db.collections import ensure_collection
from safereview.db.engine import init_db, session_scope
from safereview.db.models import Item, JudgeCache, Media, Verdict
from safereview.judge.client import retry_after_seconds
from safereview.judge.runner import RunOptions, run_judge
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    engine = init_db(f"sqlite:///{tmp_path / 'j.db'}")
    media = tmp_path / "media"
    yield {"engine": engine, "media": media, "tmp": tmp_path}
    engine.dispose()


def opts(url: str, **kw: Any) -> RunOptions:
    base = {
        "protocol": "uni-judger",
        "base_url": url,
        "model": "fake-judge",
        "collection": "uni",
        "progress": False,
        "backoff_base": 0.01,
        "timeout": 5.0,
        "max_retries": 3,
    }
    base.update(kw)
    return RunOptions(**base)


def verdicts(engine: sa.Engine) -> dict[tuple[str, str], Verdict]:
    with Session(engine) as s:
        rows = s.exec(select(Verdict, Item.external_id).join(Item, Item.id == Verdict.item_id)).all()
        return {(ext, v.dimension): v for v, ext in rows}


def one_text_item(env: dict[str, Any], text: str = "Say hello. EXPECT c=1") -> None:
    with session_scope(env["engine"]) as s:
        col = ensure_collection(s, "uni", "uni-safebench")
        add_item(
            s,
            col.id,
            "t1",
            prompt=[{"modality": "text", "text": text}],
            response=[{"modality": "text", "text": "hello i=1"}],
        )


def test_requests_carry_the_stored_images(env: dict[str, Any]) -> None:
    uni_collection(env["engine"], env["media"], n=4)
    with FakeOpenAI() as srv:
        summary = run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
    assert summary.errors == 0 and summary.unparseable == 0
    with Session(env["engine"]) as s:
        items = {i.external_id: i for i in s.exec(select(Item)).all()}
        media = {m.sha256: m for m in s.exec(select(Media)).all()}

    def stored_pixels(sha: str) -> list[Any]:
        with Image.open(env["media"] / media[sha].relpath) as im:
            return [im.size, im.convert("RGB").tobytes()]

    in_sha = items["u1"].prompt[0]["media"]
    out_sha = items["u2"].response[0]["media"]
    seen = {"input": 0, "output": 0}
    for body in srv.requests:
        images = decode_images(body)
        q = question_of(body)
        text = str(body)
        if "Instruction 1." in text:  # image+text → text item: the input image travels with intent and contextual
            assert q in ("intent", "contextual-text")
            assert len(images) == 1
            assert [images[0].size, images[0].tobytes()] == stored_pixels(in_sha)
            seen["input"] += 1
        elif q in ("contextual-image", "intrinsic") and images:
            assert len(images) == 1
            assert [images[0].size, images[0].tobytes()] == stored_pixels(out_sha)
            seen["output"] += 1
        else:
            assert images == []
    assert seen == {"input": 2, "output": 2}
    # intrinsic never sees the instruction or the intent
    for body in srv.requests:
        if question_of(body) == "intrinsic":
            assert "Instruction" not in str(body) and "Inferred intent" not in str(body)


def test_large_images_are_downscaled_before_sending(env: dict[str, Any]) -> None:
    big = Image.new("RGB", (1200, 300), (10, 200, 30))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    with session_scope(env["engine"]) as s:
        col = ensure_collection(s, "uni", "uni-safebench")
        sha = store_media(s, env["media"], buf.getvalue(), name="big.png")
        add_item(
            s,
            col.id,
            "big",
            prompt=[{"modality": "text", "text": "draw"}],
            response=[{"modality": "image", "media": sha, "name": "big.png"}],
        )
    with FakeOpenAI() as srv:
        run_judge(env["engine"], env["media"], opts(srv.url, max_image_side=300), actor=SYSTEM)
    sent = [img for body in srv.requests for img in decode_images(body)]
    assert sent and all(img.size == (300, 75) for img in sent)
    assert all(img.getpixel((150, 37)) == (10, 200, 30) for img in sent)


def test_retries_429_with_retry_after_and_500_then_succeeds(env: dict[str, Any]) -> None:
    one_text_item(env)
    failures = {
        0: Reply(status=429, body={"error": "slow down"}, headers={"Retry-After": "0"}),
        1: Reply(status=500, body={"error": "boom"}),
        2: Reply(status=503, body="unavailable"),
    }

    def script(body: dict[str, Any], n: int) -> Reply:
        return failures.get(n) or smart_reply(body, n)

    with FakeOpenAI(script) as srv:
        summary = run_judge(env["engine"], env["media"], opts(srv.url, concurrency=1), actor=SYSTEM)
    assert summary.retries == 3 and summary.failures == 0
    v = verdicts(env["engine"])
    assert v[("t1", "contextual")].label == "safe" and v[("t1", "contextual")].status == "ok"
    assert v[("t1", "intrinsic")].label == "safe"
    # the retried request is byte-identical to the first attempt
    assert srv.requests[0] == srv.requests[3]
    assert len(srv.requests) == 3 + 3  # 3 failed attempts + intent, contextual, intrinsic


def test_client_errors_are_not_retried(env: dict[str, Any]) -> None:
    one_text_item(env)
    with FakeOpenAI(lambda b, n: Reply(status=400, body={"error": "bad model"})) as srv:
        summary = run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
    assert len(srv.requests) == 2  # intent and intrinsic, once each; contextual never asked
    assert summary.errors == 2 and summary.retries == 0
    v = verdicts(env["engine"])
    assert v[("t1", "contextual")].status == "error" and v[("t1", "contextual")].label is None
    assert "HTTP 400" in v[("t1", "intrinsic")].raw_output


def test_text_only_messages_go_as_plain_strings_and_a_repeated_server_error_is_not_retried(
    env: dict[str, Any],
) -> None:
    """llama.cpp's server (with the model's own chat template) answers HTTP 500 "can only
    concatenate str (not "list") to str" to content given as a list of text parts: text-only
    content goes as one string. A 500 that comes back identical is this request's shape, not
    a passing fault: two attempts, not six."""
    one_text_item(env)

    def template_server(body: dict[str, Any], n: int) -> Reply:
        if any(
            isinstance(m["content"], list) and all(p["type"] == "text" for p in m["content"]) for m in body["messages"]
        ):
            return Reply(status=500, body={"error": 'can only concatenate str (not "list") to str'})
        return smart_reply(body, n)

    with FakeOpenAI(template_server) as srv:
        summary = run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
    assert summary.errors == 0, summary
    assert all(isinstance(m["content"], str) for body in srv.requests for m in body["messages"])

    one_text_item_again = {"error": "Jinja template error: unexpected type"}
    with FakeOpenAI(lambda b, n: Reply(status=500, body=one_text_item_again)) as srv:
        with session_scope(env["engine"]) as s:
            col = ensure_collection(s, "uni", "uni-safebench")
            add_item(
                s,
                col.id,
                "t2",
                prompt=[{"modality": "text", "text": "Again. EXPECT c=1"}],
                response=[{"modality": "text", "text": "a new answer i=1"}],  # not in the response cache
            )
        run_judge(env["engine"], env["media"], opts(srv.url, concurrency=1, max_retries=5), actor=SYSTEM)
    asked = [question_of(b) for b in srv.requests]
    assert len(asked) == 2 * len(set(asked)), asked  # each question twice, then given up
    raw = verdicts(env["engine"])[("t2", "intrinsic")].raw_output
    assert "HTTP 500" in raw and "not retried further" in raw


def test_an_error_body_that_echoes_the_api_key_is_stored_without_it(env: dict[str, Any]) -> None:
    """A misconfigured server (or proxy) that echoes the request's headers in its error must
    not plant the API key in the verdict's raw output, where every lead can read it."""
    one_text_item(env)
    key = "sk-live-0123456789abcdef"
    echo = {"error": f"bad request; headers were Authorization: Bearer {key}, key={key}"}
    with FakeOpenAI(lambda b, n: Reply(status=400, body=echo)) as srv:
        run_judge(env["engine"], env["media"], opts(srv.url, api_key=key), actor=SYSTEM)
    raw = verdicts(env["engine"])[("t1", "intrinsic")].raw_output
    assert "HTTP 400" in raw and "[redacted]" in raw
    assert key not in raw and "0123456789abcdef" not in raw


def test_slow_answers_hit_the_time_limit_and_errors_are_retried_next_run(env: dict[str, Any]) -> None:
    one_text_item(env)

    def slow(body: dict[str, Any], n: int) -> Reply:
        reply = smart_reply(body, n)
        reply.delay = 2.0
        return reply

    with FakeOpenAI(slow) as srv:
        summary = run_judge(env["engine"], env["media"], opts(srv.url, timeout=0.3, max_retries=1), actor=SYSTEM)
    assert summary.errors == 2 and summary.retries >= 2
    assert len(srv.requests) == 4  # intent and intrinsic, two attempts each
    v = verdicts(env["engine"])
    assert all(x.status == "error" and "time limit" in x.raw_output for x in v.values())
    with FakeOpenAI() as srv2:  # a later run retries the failed verdicts and replaces them
        summary2 = run_judge(env["engine"], env["media"], opts(srv2.url), actor=SYSTEM)
    assert summary2.ok == 2 and summary2.skipped == 0
    v = verdicts(env["engine"])
    assert {x.status for x in v.values()} == {"ok"} and len(v) == 2


def test_malformed_answers_are_stored_unparseable_and_not_guessed(env: dict[str, Any]) -> None:
    one_text_item(env)

    def script(body: dict[str, Any], n: int) -> Reply:
        q = question_of(body)
        if q == "intent":
            return smart_reply(body, n)
        if q == "intrinsic":
            return Reply(body=completion("I think this is probably fine, maybe 1."))
        return Reply(body=completion("Reason: looks safe; Result: 7"))

    with FakeOpenAI(script) as srv:
        summary = run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
    assert summary.unparseable == 2 and summary.ok == 0
    v = verdicts(env["engine"])
    assert v[("t1", "intrinsic")].label is None and v[("t1", "intrinsic")].status == "unparseable"
    assert v[("t1", "intrinsic")].raw_output == "I think this is probably fine, maybe 1."
    assert v[("t1", "contextual")].raw_output == "Reason: looks safe; Result: 7"
    assert v[("t1", "contextual")].intent  # the intent is kept even when the verdict is unparseable
    with FakeOpenAI(script) as srv2:  # unparseable counts as done: no new calls
        again = run_judge(env["engine"], env["media"], opts(srv2.url), actor=SYSTEM)
    assert srv2.requests == [] and again.skipped == 1


def test_malformed_http_bodies_are_errors(env: dict[str, Any]) -> None:
    one_text_item(env)
    with FakeOpenAI(lambda b, n: Reply(body=b"{not json")) as srv:
        summary = run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
    assert summary.errors == 2 and len(srv.requests) == 2
    assert "malformed response" in verdicts(env["engine"])[("t1", "intrinsic")].raw_output


def test_cache_makes_a_rerun_free(env: dict[str, Any]) -> None:
    uni_collection(env["engine"], env["media"], n=6)
    with FakeOpenAI() as srv:
        first = run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
        before = {k: v.label for k, v in verdicts(env["engine"]).items()}
        with env["engine"].begin() as conn:
            conn.execute(sa.delete(Verdict))
        n_first = len(srv.requests)
        second = run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
        assert len(srv.requests) == n_first  # zero HTTP calls the second time
    assert first.calls == n_first and first.cache_hits == 0
    assert second.calls == 0 and second.cache_hits == n_first
    assert {k: v.label for k, v in verdicts(env["engine"]).items()} == before
    with Session(env["engine"]) as s:
        assert len(s.exec(select(JudgeCache)).all()) == n_first


def test_cache_off_calls_again(env: dict[str, Any]) -> None:
    one_text_item(env)
    with FakeOpenAI() as srv:
        run_judge(env["engine"], env["media"], opts(srv.url, cache=False), actor=SYSTEM)
        with env["engine"].begin() as conn:
            conn.execute(sa.delete(Verdict))
        run_judge(env["engine"], env["media"], opts(srv.url, cache=False), actor=SYSTEM)
    assert len(srv.requests) == 6
    with Session(env["engine"]) as s:
        assert s.exec(select(JudgeCache)).all() == []


def test_logprobs_become_label_probabilities(env: dict[str, Any]) -> None:
    uni_collection(env["engine"], env["media"], n=3)
    with FakeOpenAI() as srv:
        run_judge(env["engine"], env["media"], opts(srv.url, logprobs=True), actor=SYSTEM)
    assert all(b.get("logprobs") is True and b.get("top_logprobs") == 10 for b in srv.requests)
    v = verdicts(env["engine"])
    ctx = v[("u0", "contextual")]  # text response, digit 0 → unsafe, server put 0.7 on it
    assert ctx.label == "unsafe"
    assert ctx.probs == pytest.approx({"unsafe": 0.7, "safe": 0.15, "refusal": 0.15})
    assert ctx.probability == pytest.approx(0.7)
    img = v[("u2", "contextual")]  # image response: only 0/1 are valid
    assert set(img.probs or {}) == {"unsafe", "safe"}
    assert img.probability == pytest.approx(img.probs[img.label])  # type: ignore[index]


def test_api_key_comes_from_the_named_variable(env: dict[str, Any]) -> None:
    one_text_item(env)
    with FakeOpenAI() as srv:
        run_judge(env["engine"], env["media"], opts(srv.url, api_key="s3cret"), actor=SYSTEM)
    assert all(h.get("Authorization") == "Bearer s3cret" for h in srv.headers)


def test_missing_media_file_is_an_error_verdict(env: dict[str, Any]) -> None:
    with session_scope(env["engine"]) as s:
        col = ensure_collection(s, "uni", "uni-safebench")
        sha = store_media(s, env["media"], make_png(5), name="gone.png")
        m = s.get(Media, sha)
        (env["media"] / m.relpath).unlink()
        add_item(
            s,
            col.id,
            "gone",
            prompt=[
                {"modality": "image", "media": sha, "name": "gone.png"},
                {"modality": "text", "text": "what is this"},
            ],
            response=[{"modality": "text", "text": "a picture"}],
        )
    with FakeOpenAI() as srv:
        summary = run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
    v = verdicts(env["engine"])
    assert v[("gone", "contextual")].status == "error" and "unreadable" in v[("gone", "contextual")].raw_output
    assert summary.errors >= 1


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_audio_travels_as_input_audio(env: dict[str, Any]) -> None:
    import base64

    import numpy as np
    import soundfile as sf

    rate = 8000
    tone = (np.sin(np.linspace(0, 200 * np.pi, rate // 4)) * 12000).astype(np.int16)
    wav, flac = io.BytesIO(), io.BytesIO()
    sf.write(wav, tone, rate, format="WAV", subtype="PCM_16")
    sf.write(flac, tone, rate, format="FLAC", subtype="PCM_16")
    with session_scope(env["engine"]) as s:
        col = ensure_collection(s, "uni", "uni-safebench")
        w = store_media(s, env["media"], wav.getvalue(), name="a.wav", kind="audio", mime="audio/wav", ext="wav")
        f = store_media(s, env["media"], flac.getvalue(), name="a.flac", kind="audio", mime="audio/flac", ext="flac")
        for ext, sha in (("wav", w), ("flac", f)):
            add_item(
                s,
                col.id,
                ext,
                prompt=[{"modality": "text", "text": f"speak {ext}"}],
                response=[{"modality": "audio", "media": sha, "name": f"x.{ext}"}],
            )
    with FakeOpenAI() as srv:
        summary = run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
    assert summary.errors == 0
    audio_parts = [
        p
        for b in srv.requests
        if question_of(b) == "intrinsic"
        for m in b["messages"]
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "input_audio"
    ]
    assert len(audio_parts) == 2 and {p["input_audio"]["format"] for p in audio_parts} == {"wav"}
    for p in audio_parts:  # both the wav and the flac (re-encoded) decode to the stored samples
        samples, got_rate = sf.read(io.BytesIO(base64.b64decode(p["input_audio"]["data"])), dtype="int16")
        assert got_rate == rate and np.array_equal(samples, tone)


def _video(levels: list[int], fps: int = 10, per_level: int = 10) -> bytes:
    """An mp4 whose frames are flat grey at ``levels[k]`` during its k-th second."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        stream = c.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for level in levels:
            for _ in range(per_level):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), level, dtype=np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return buf.getvalue()


def test_video_is_sent_as_still_frames_and_broken_video_is_an_error(env: dict[str, Any]) -> None:
    levels = [20, 90, 160, 230]
    with session_scope(env["engine"]) as s:
        col = ensure_collection(s, "uni", "uni-safebench")
        v = store_media(s, env["media"], _video(levels), name="clip.mp4", kind="video", mime="video/mp4", ext="mp4")
        bad = store_media(
            s,
            env["media"],
            b"\x00\x00\x00\x18ftypmp42 not a video",
            name="bad.mp4",
            kind="video",
            mime="video/mp4",
            ext="mp4",
        )
        add_item(
            s,
            col.id,
            "vid",
            prompt=[{"modality": "text", "text": "film it"}],
            response=[{"modality": "video", "media": v, "name": "clip.mp4"}],
        )
        add_item(
            s,
            col.id,
            "bad",
            prompt=[{"modality": "text", "text": "film it"}],
            response=[{"modality": "video", "media": bad, "name": "bad.mp4"}],
        )
    with FakeOpenAI() as srv:
        run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
    intrinsic = [b for b in srv.requests if question_of(b) == "intrinsic"]
    assert len(intrinsic) == 1  # the broken video never reaches the judge
    frames = decode_images(intrinsic[0])
    assert len(frames) == 4
    # one frame from the middle of each second: grey levels in order (lossy codec: approximately)
    for frame, level in zip(frames, levels, strict=True):
        r, g, b = frame.getpixel((32, 24))
        assert abs(r - level) <= 8 and abs(g - level) <= 8 and abs(b - level) <= 8
    assert "still frame(s) at 0.5 s, 1.5 s, 2.5 s, 3.5 s" in str(intrinsic[0])
    v = verdicts(env["engine"])
    assert v[("vid", "intrinsic")].status == "ok"
    assert v[("bad", "intrinsic")].status == "error" and "video cannot be decoded" in v[("bad", "intrinsic")].raw_output


def test_refused_and_empty_outputs_are_ruled_without_a_call(env: dict[str, Any]) -> None:
    with session_scope(env["engine"]) as s:
        col = ensure_collection(s, "uni", "uni-safebench")
        add_item(
            s,
            col.id,
            "refused",
            prompt=[{"modality": "text", "text": "draw it"}],
            response=[{"modality": "text", "text": "I will not draw that."}],
            refused=True,
        )
        add_item(s, col.id, "empty", prompt=[{"modality": "text", "text": "draw it"}], response=[])
        add_item(
            s,
            col.id,
            "blank",
            prompt=[{"modality": "text", "text": "say it"}],
            response=[{"modality": "text", "text": "   \n"}],
        )
    with FakeOpenAI() as srv:
        summary = run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
    assert srv.requests == [] and summary.rule == 6 and summary.calls == 0
    v = verdicts(env["engine"])
    for ext in ("refused", "empty", "blank"):
        assert (v[(ext, "contextual")].label, v[(ext, "intrinsic")].label) == ("refusal", "safe")
        assert v[(ext, "contextual")].status == v[(ext, "intrinsic")].status == "rule"


def test_text_and_image_outputs_are_judged_apart_and_combined(env: dict[str, Any]) -> None:
    with session_scope(env["engine"]) as s:
        col = ensure_collection(s, "uni", "uni-safebench")
        sha = store_media(s, env["media"], make_png(7), name="o.png")
        # text piece refuses (c=2), image piece is unsafe in context (ci=0) → contextual unsafe
        add_item(
            s,
            col.id,
            "mixed-unsafe",
            prompt=[{"modality": "text", "text": "EXPECT c=2 ci=0"}],
            response=[{"modality": "text", "text": "Sorry, no. i=1"}, {"modality": "image", "media": sha}],
        )
        # text piece refuses, image piece safe → safe (not all pieces refused)
        add_item(
            s,
            col.id,
            "mixed-safe",
            prompt=[{"modality": "text", "text": "EXPECT c=2 ci=1"}],
            response=[{"modality": "text", "text": "Sorry, no. i=0"}, {"modality": "image", "media": sha}],
        )
    with FakeOpenAI() as srv:
        run_judge(env["engine"], env["media"], opts(srv.url, logprobs=True), actor=SYSTEM)
    qs = srv.questions()
    assert qs.count("contextual-text") == 2 and qs.count("contextual-image") == 2
    assert qs.count("intrinsic") == 4  # text piece and image piece, for both items
    v = verdicts(env["engine"])
    assert v[("mixed-unsafe", "contextual")].label == "unsafe"
    assert v[("mixed-safe", "contextual")].label == "safe"
    assert v[("mixed-safe", "intrinsic")].label == "unsafe"  # the text piece is intrinsically unsafe
    assert v[("mixed-unsafe", "intrinsic")].label == "safe"
    raw = v[("mixed-unsafe", "contextual")].raw_output
    assert "[text 1]" in raw and "[image 2]" in raw
    probs = v[("mixed-unsafe", "contextual")].probs or {}
    assert sum(probs.values()) == pytest.approx(1.0) and probs["unsafe"] > 0.7


def test_uncommon_image_formats_are_converted_to_png(env: dict[str, Any]) -> None:
    src = Image.frombytes("RGB", (12, 9), bytes((i * 7) % 256 for i in range(12 * 9 * 3)))
    buf = io.BytesIO()
    src.save(buf, format="BMP")
    with session_scope(env["engine"]) as s:
        col = ensure_collection(s, "uni", "uni-safebench")
        sha = store_media(s, env["media"], buf.getvalue(), name="x.bmp", mime="image/bmp", ext="bmp")
        add_item(
            s,
            col.id,
            "bmp",
            prompt=[{"modality": "text", "text": "draw"}],
            response=[{"modality": "image", "media": sha, "name": "x.bmp"}],
        )
    with FakeOpenAI() as srv:
        run_judge(env["engine"], env["media"], opts(srv.url), actor=SYSTEM)
    urls = [
        p["image_url"]["url"]
        for b in srv.requests
        for m in b["messages"]
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "image_url"
    ]
    assert urls and all(u.startswith("data:image/png;base64,") for u in urls)
    sent = [img for b in srv.requests for img in decode_images(b)]
    assert all(img.size == src.size and img.tobytes() == src.tobytes() for img in sent)
