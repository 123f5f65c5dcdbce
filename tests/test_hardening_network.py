"""Attacks over the network, as an attacker on the machine or another site would make them.

The Streamlit session id reused from another browser, a page on another origin opening
the websocket, strangers and annotators uploading, and the seam the upload caps read. The
server is a real ``safereview serve`` (SQLite and PostgreSQL) spoken to in Streamlit's own
protocol (``bench/st_client.py``), as in ``tests/test_app_websocket.py``. Each test counts
its attempts for ``bench/reliability_report.py``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_support as A
import hardening_support as H
import pytest
from starlette.testclient import TestClient
from test_app_server import signed_in, token_for
from test_app_websocket import _shown, _sign_in

sys.path.insert(0, str(A.REPO / "bench"))

from st_client import StreamlitClient

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture
def fx(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[A.Fixture]:
    with A.app_pointed_at(A.build_fixture(db_url, tmp_path / "media", n_plain=1), monkeypatch) as fixture:
        yield fixture


@pytest.fixture
def client(fx: A.Fixture) -> Iterator[TestClient]:
    """The app's own routes and middleware alone (no Streamlit), as in tests/test_app_server.py."""
    with A.routes_client() as c:
        yield c


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[tuple[A.Fixture, A.Server]]:
    fx = A.build_fixture(db_url, tmp_path / "media", n_plain=2)
    with A.Server(fx) as server:
        yield fx, server


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
    H.tally(attacks_tried=1, attacks_held=1)


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
    H.tally(attacks_tried=4, attacks_held=4)


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
    H.tally(attacks_tried=5, attacks_held=5)


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


def test_a_ticket_does_nothing_in_another_browser(client: TestClient, fx: A.Fixture) -> None:
    """Login CSRF: the attacker signs in, then sends the victim's browser to the ticket URL
    (an <img> on any page). The ticket is bound to the attacker's browser, so the victim's
    browser gets no session cookie, and the attacker's own browser still can redeem it."""
    from safereview.review_app import runtime

    victim = client
    victim.get("/healthz")
    victim_id = victim.cookies[runtime.BROWSER_COOKIE]
    r = victim.get("/healthz")
    assert "set-cookie" not in r.headers, "the id is given once, not rotated on every request"
    with TestClient(victim.app) as attacker:
        attacker.get("/healthz")
        attacker_id = attacker.cookies[runtime.BROWSER_COOKIE]
        assert attacker_id != victim_id and len(attacker_id) >= 24
        ticket = runtime.tickets.issue(token_for(fx, "ann2"), attacker_id)
        forged = victim.get(f"/auth/session?ticket={ticket}")
        assert forged.status_code == 403 and "safereview_session" not in forged.headers.get("set-cookie", "")
        assert runtime.SESSION_COOKIE not in victim.cookies
        assert attacker.get(f"/auth/session?ticket={ticket}").status_code == 200
    # a ticket issued to a connection without a browser id is never redeemable
    lost = runtime.tickets.issue(token_for(fx, "ann2"), None)
    assert victim.get(f"/auth/session?ticket={lost}").status_code == 403
    victim.cookies.clear()
    assert victim.get(f"/auth/session?ticket={lost}").status_code == 403
    H.tally(attacks_tried=3, attacks_held=3)


def test_downloads_need_the_sign_in_cookie_and_the_role(client: TestClient, fx: A.Fixture) -> None:
    """Files leave only through the authenticated route (Streamlit's download button served
    them from /media/<id> to anyone holding the URL). Gold needs the export role; a file a
    page prepared is for its own user. The 200 for a lead is the browser test's download."""
    from safereview.review_app import runtime, server

    gold = server.download_url("gold", 1, "csv")
    assert client.get(gold).status_code == 401
    signed_in(client, fx, "ann1")
    assert client.get(gold).status_code == 403
    assert client.get(server.download_url("gold", 1, "xlsx")).status_code in (403, 404)
    client.cookies.clear()
    signed_in(client, fx, "lead")
    assert client.get(server.download_url("gold", 999, "csv")).status_code == 404  # no such snapshot

    ids = {name: token_for(fx, name) for name in ("ann1", "ann2")}
    from safereview.review_app.server import user_for_token

    key = runtime.downloads.put(int(user_for_token(ids["ann1"]).id), "rejects.jsonl", "application/jsonl", b"{}\n")
    url = server.download_url("file", key)
    client.cookies.clear()
    assert client.get(url).status_code == 401
    client.cookies.set(runtime.SESSION_COOKIE, ids["ann2"])
    assert client.get(url).status_code == 404  # someone else's
    client.cookies.set(runtime.SESSION_COOKIE, ids["ann1"])
    r = client.get(url)
    assert r.status_code == 200 and r.content == b"{}\n"
    assert r.headers["content-disposition"] == 'attachment; filename="rejects.jsonl"'
    assert r.headers["cache-control"] == "no-store"
    H.tally(attacks_tried=5, attacks_held=5)


def test_a_ticket_issued_by_one_replica_is_redeemed_by_another(sqlite_url: str, tmp_path: Path) -> None:
    """Two app processes on one database, as behind a load balancer without sticky cookies
    for plain HTTP: the browser signs in over replica A's websocket, and its ticket image is
    served by replica B, which sets the session cookie; both replicas then serve media to it
    and A's page sees the cookie in place. (Tickets used to live in one process.)"""
    import httpx

    fx = A.build_fixture(sqlite_url, tmp_path / "media", n_plain=1)
    with A.Server(fx) as a, A.Server(fx, log=tmp_path / "replica-b.log") as b:

        async def go() -> dict[str, Any]:
            c = StreamlitClient(a.base)
            c.ticket_origin = b.base
            try:
                await _sign_in(c, "ann1", A.PASSWORDS["ann1"])
                for _ in range(100):
                    if c.http.cookies.get("safereview_session"):
                        break
                    await asyncio.sleep(0.1)
                media = f"/media-files/{fx.media['image']}"
                return {
                    "cookie": bool(c.http.cookies.get("safereview_session")),
                    "on_b": (await c.http.get(b.base + media)).status_code,
                    "on_a": (await c.http.get(a.base + media)).status_code,
                    "stranger": httpx.get(b.base + media, timeout=30).status_code,
                }
            finally:
                await c.close()

        out = asyncio.run(go())
    assert out == {"cookie": True, "on_b": 200, "on_a": 200, "stranger": 401}, out
