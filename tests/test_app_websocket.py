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


def test_a_session_id_alone_does_not_resume_a_sign_in(served: tuple[A.Fixture, A.Server]) -> None:
    """The Streamlit session id is in every upload URL. Reconnecting with another person's
    id used to sign the stranger in as them; the sign-in is bound to the browser that made
    it, so the stranger sees the sign-in form, and the owner's own reconnection still works."""
    _fx, server = served

    async def go() -> dict[str, Any]:
        owner, stranger, back = (StreamlitClient(server.base) for _ in range(3))
        try:
            await _sign_in(owner, "ann1", A.PASSWORDS["ann1"])
            assert owner.has("rv_submit") and owner.session_id
            await stranger.connect(resume_session=owner.session_id)
            hijack = await stranger.rerun()
            out = {"stranger_form": stranger.has("signin_username"), "stranger_review": stranger.has("rv_submit")}
            out["stranger_text"] = _shown(hijack)
            # the owner's browser reconnects (same cookies, same session id): still signed in
            back.http.cookies = owner.http.cookies
            await back.connect(resume_session=owner.session_id)
            await back.rerun()
            out["owner_review"] = back.has("rv_submit")
            return out
        finally:
            for c in (owner, stranger, back):
                await c.close()

    out = asyncio.run(go())
    assert out["stranger_form"] and not out["stranger_review"], out["stranger_text"]
    assert "ann1" not in out["stranger_text"]
    assert out["owner_review"]


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


def test_a_page_on_another_origin_cannot_open_the_websocket(served: tuple[A.Fixture, A.Server]) -> None:
    """Cross-site websocket hijacking: a page served from another local port (or any other site)
    is refused at the handshake; the app's own origin and clients without an Origin are not."""
    import asyncio
    from urllib.parse import urlsplit

    import websockets

    _, srv = served
    netloc = urlsplit(srv.base).netloc
    other_port = f"http://127.0.0.1:{int(netloc.rsplit(':', 1)[1]) + 1}"

    async def handshake(origin: str | None) -> int | None:
        try:
            ws = await websockets.connect(
                f"ws://{netloc}/_stcore/stream", subprotocols=["streamlit"], origin=origin, open_timeout=10
            )
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return None

    for origin in (other_port, "http://localhost:8501", "https://evil.example", "null"):
        assert asyncio.run(handshake(origin)) == 403, origin
    assert asyncio.run(handshake(srv.base)) is None  # the app's own origin
    assert asyncio.run(handshake(None)) is None  # not a browser page: no cross-site risk


def test_nobody_uploads_before_signing_in(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit's upload route takes files from any session and holds them in memory; the app
    refuses it until the browser carries a valid sign-in cookie of a role that imports, and
    caps what one session (and all) may hold."""

    monkeypatch.setenv("SAFEREVIEW_MAX_UPLOAD_MB", "1")  # caps: 3 MB per session, 5 MB in total
    fx = A.build_fixture(db_url, tmp_path / "media", n_plain=1)
    with A.Server(fx) as srv:
        _uploads(srv)


def _uploads(srv: A.Server) -> None:
    import asyncio

    import httpx

    payload = {"file": ("big.bin", b"x" * (1 << 20), "application/octet-stream")}
    url = f"{srv.base}/_stcore/upload_file/0123456789abcdef/abc"
    stranger = httpx.put(url, files=payload, timeout=30)
    assert stranger.status_code == 403 and stranger.text == "sign in first"
    metrics = httpx.get(f"{srv.base}/_stcore/metrics", timeout=30)  # session counts, cache names: not public
    assert metrics.status_code == 403 and metrics.text == "sign in first"

    async def signed_in(who: str) -> dict[str, httpx.Response]:
        c = StreamlitClient(srv.base)
        try:
            await _sign_in(c, who, A.PASSWORDS[who])
            for _ in range(50):  # the page's one-time ticket becomes the session cookie
                if c.http.cookies.get("safereview_session"):
                    break
                await asyncio.sleep(0.1)
            assert c.http.cookies.get("safereview_session")
            own = f"{srv.base}/_stcore/upload_file/{c.session_id}/abc"
            out = {"small": await c.http.put(own, files=payload)}
            big = b"x" * (3 << 20)  # the server runs with a 1 MB upload limit: over the session's cap
            out["big"] = await c.http.put(own, files={"file": ("big.bin", big, "application/octet-stream")})

            async def no_size() -> Any:  # a chunked body: no Content-Length to check against the cap
                yield b"x" * 1024

            out["unsized"] = await c.http.put(own, content=no_size())
            return out
        finally:
            await c.close()

    annotator = asyncio.run(signed_in("ann1"))
    assert annotator["small"].status_code == 403 and "role" in annotator["small"].text  # only importers upload
    admin = asyncio.run(signed_in("admin"))
    # past our checks (Streamlit's own XSRF and session checks follow)
    assert admin["small"].text not in ("sign in first", "your role may not upload files"), admin["small"].text
    assert admin["big"].status_code == 413 and "too much uploaded" in admin["big"].text
    assert admin["unsized"].status_code == 411


def test_streamlit_upload_manager_seam_is_what_the_caps_read() -> None:
    """The upload caps read Streamlit's in-memory file manager; an upgrade that changes it must
    fail here rather than silently turn the caps off (server._uploads_held returns 0 when absent)."""
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    manager = MemoryUploadedFileManager("/_stcore/upload_file")
    manager.add_file("s1", UploadedFileRec(file_id="f", name="a", type="x", data=b"abc"))
    with manager._lock:
        assert {sid: sum(len(f.data) for f in files.values()) for sid, files in manager.file_storage.items()} == {
            "s1": 3
        }
