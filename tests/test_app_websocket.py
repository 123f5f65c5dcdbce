"""The review app over its websocket, as the benchmark drives it (``bench/st_client.py``).

A real ``safereview serve`` on SQLite and PostgreSQL, spoken to in Streamlit's own
protocol: sign-in (wrong password refused), a blind item whose verdict stays hidden until
submit, an override recorded with the blind labels kept, and hostile model output that
reaches the browser only inside inert text elements — checked on the wire, so no renderer
could turn it into markup. Also keeps the benchmark's client from rotting.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_support as A
import pytest
from sqlmodel import select

sys.path.insert(0, str(A.REPO / "bench"))

from st_client import StreamlitClient

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # starts the real server for each test


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[tuple[A.Fixture, A.Server]]:
    fx = A.build_fixture(db_url, tmp_path / "media", n_plain=2)
    with A.Server(fx) as server:
        yield fx, server


async def _sign_in(c: StreamlitClient, username: str, password: str) -> Any:
    await c.connect()
    first = await c.rerun()
    assert first.status == "FINISHED_SUCCESSFULLY" and c.has("signin_username")
    return await c.rerun(
        [
            c.state("signin_username", string_value=username),
            c.state("signin_password", string_value=password),
            c.state("submit:sign_in_form", trigger_value=True),
        ]
    )


def _shown(run: Any) -> str:
    return "\n".join(text for _kind, text in run.elements)


def test_wrong_password_is_refused_on_the_wire(served: tuple[A.Fixture, A.Server]) -> None:
    _fx, server = served

    async def go() -> Any:
        c = StreamlitClient(server.base)
        try:
            return await _sign_in(c, "ann1", "not-the-password"), c.has("rv_submit")
        finally:
            await c.close()

    run, has_review = asyncio.run(go())
    assert not has_review
    assert any(kind == "alert" and "password" in text.lower() for kind, text in run.elements), run.elements


def test_blind_review_round_trip_and_inert_hostile_text(served: tuple[A.Fixture, A.Server]) -> None:
    fx, server = served

    async def go() -> dict[str, Any]:
        c = StreamlitClient(server.base)
        try:
            page = await _sign_in(c, "ann1", A.PASSWORDS["ann1"])
            out: dict[str, Any] = {"page": page, "first": c.item}
            await c.click("rv_lab_0_2")  # contextual = unsafe (safe, refusal, unsafe)
            out["label_run"] = await c.click("rv_lab_1_0")  # intrinsic = safe
            out["reveal"] = await c.click("rv_submit")
            out["after_reveal"] = c.item
            await c.click("rv_lab_1_1")  # change intrinsic after seeing the verdict: an override
            reason = next(k for k in c.widgets if k.startswith("rv_reason_"))  # ... which asks why
            why = c.state(reason, string_value="the judge saw what I missed")
            out["commit"] = await c.click("rv_submit", extra=[why])
            out["next"] = c.item
            return out
        finally:
            await c.close()

    out = asyncio.run(go())
    page = out["page"]
    assert out["first"] == "xss"  # the highest-priority item of the blind collection
    assert "Hidden until you submit" in _shown(page)
    assert "Reason: the response looks" not in _shown(page)

    # hostile output arrives whole, and only in a plain-text element
    inert = [text for kind, text in page.elements if kind in ("text", "code")]
    assert any(A.XSS_PAYLOAD in t for t in inert), inert
    own_script = '<script src="/app-assets/keyboard.js"></script>'  # the app's constant keyboard glue
    for kind, text in page.elements:
        if kind not in ("text", "code") and text != own_script:
            assert "<script" not in text and "onerror" not in text and A.BEACON not in text, (kind, text)

    assert out["label_run"].status == "FINISHED_FRAGMENT_RUN_SUCCESSFULLY"  # a label press reruns the panel only
    assert out["after_reveal"] == "xss" and "Reason: the response looks" in _shown(out["reveal"])
    assert out["next"] not in (None, "xss")

    from safereview.db.engine import make_engine, session_scope
    from safereview.db.models import Annotation, AnnotationEvent, User

    eng = make_engine(fx.db_url)
    try:
        with session_scope(eng) as s:
            uid = s.exec(select(User.id).where(User.username == "ann1")).one()
            ann = s.exec(
                select(Annotation).where(Annotation.user_id == uid, Annotation.item_id == fx.item_ids["xss"])
            ).one()
            assert ann.blind_labels == {"contextual": "unsafe", "intrinsic": "safe"}
            assert ann.labels == {"contextual": "unsafe", "intrinsic": "unsafe"}
            assert ann.verdict_action == "confirm"  # the final labels equal the judge's (unsafe, unsafe)
            actions = s.exec(
                select(AnnotationEvent.action)
                .where(AnnotationEvent.annotation_id == ann.id)
                .order_by(AnnotationEvent.id)
            ).all()
            assert list(actions) == ["create", "reveal"]
    finally:
        eng.dispose()


def test_the_app_and_its_media_under_a_base_path(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind a proxy at /team/review: Streamlit, sign-in cookie and media routes all live under it."""
    import httpx

    from safereview.settings import normalise_base_path

    assert normalise_base_path("/team/review/") == "team/review"
    for bad in ("../x", "a b", "x?y", "a//b"):
        with pytest.raises(ValueError, match="SAFEREVIEW_BASE_URL_PATH"):
            normalise_base_path(bad)
    monkeypatch.setenv("SAFEREVIEW_BASE_URL_PATH", "/team/review/")
    fx = A.build_fixture(db_url, tmp_path / "media", n_plain=1)
    sha = fx.media["image"]
    with A.Server(fx) as server:
        base = server.base + "/team/review"
        assert httpx.get(base + "/_stcore/health").text.strip() == "ok"
        assert httpx.get(base + "/healthz").json()["database"] == "ok"
        assert httpx.get(f"{base}/media-files/{sha}").status_code == 401  # no session yet

        async def go() -> tuple[int, int, str]:
            c = StreamlitClient(base)
            try:
                run = await _sign_in(c, "ann1", A.PASSWORDS["ann1"])
                assert c.has("rv_submit"), run.exceptions or run.texts
                for _ in range(50):  # the ticket image is fetched beside the run
                    if c.http.cookies.get("safereview_session"):
                        break
                    await asyncio.sleep(0.05)
                inside = (await c.http.get(f"{base}/media-files/{sha}")).status_code
                outside = (await c.http.get(f"{server.base}/media-files/{sha}")).status_code
                cookie_path = next(ck.path for ck in c.http.cookies.jar if ck.name == "safereview_session")
                return inside, outside, cookie_path
            finally:
                await c.close()

        inside, outside, cookie_path = asyncio.run(go())
    assert inside == 200 and outside != 200 and cookie_path == "/team/review"
