"""What the importer accepts renders inert in the real browser; the media route refuses path
tricks; the import page enforces the upload limit.

Same start-up and skip/require rule as ``tests/test_app_browser.py``: ``safereview serve``
plus Debian's chromium through Playwright; skipped only when /usr/bin/chromium is missing
and ``SAFEREVIEW_REQUIRE_BROWSER`` is not "1". The media-route tests need no browser.

Responsiveness: the import caps text at ``SAFEREVIEW_MAX_TEXT_CHARS`` (the 10 MB text is
refused, ``test_hardening_content.py``); here the largest text the cap allows is rendered
(the app previews long text and says how many characters it left out) and the labelling
buttons must still work afterwards.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import app_support as A
import hardening_support as H
import httpx
import pytest
import sqlalchemy as sa
from test_app_browser import CHROME_ARGS, CHROMIUM, _require_browser, current_item, press, sign_in, wait_idle

from safereview.dataio.importers import import_file
from safereview.db.engine import make_engine, session_scope
from safereview.db.models import User, UserSession, utcnow
from safereview.workflow import auth
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be

pytestmark = [pytest.mark.slow]

MAX_TEXT = 200_000  # the default SAFEREVIEW_MAX_TEXT_CHARS
# GitHub-flavoured markdown links these even when every punctuation character is escaped
AUTOLINK_BAIT = "m www.evil.example http://evil.example/x bob@evil.example"
UPLOAD_MB = 1


def _hostile_items(fx: A.Fixture, work: Path) -> None:
    """Hostile text, the largest allowed text and a mislabelled image, imported like a user would."""
    from dataio_support import write_jsonl

    media = work / "in"
    H.build_media_corpus(media)
    rows = [
        {
            "id": "hostile-all",
            "model": AUTOLINK_BAIT,
            "prompt": "Say all of it.",
            "response": [{"modality": "text", "text": t} for t in H.HOSTILE_TEXT.values()],
        },
        {"id": "big-text", "prompt": "Write a lot.", "response": H.big_text(MAX_TEXT)},
        {
            "id": "odd-image",
            "prompt": [
                {"modality": "image", "path": "png-named.jpg"},
                {"modality": "text", "text": "<b onclick=alert(1)>what</b>"},
            ],
            "response": "An image.",
        },
    ]
    f = write_jsonl(media / "hostile.jsonl", rows)
    eng = make_engine(fx.db_url)
    try:
        rep = import_file(
            eng,
            f,
            collection=fx.blind_collection,
            task_type="Malicious Text Generation",
            media_root=fx.media_root,
            actor=SYSTEM,
        )
        assert rep.ok, rep.errors
        with eng.begin() as conn:  # first in the queue, in this order
            for ext, prio in (("hostile-all", 9.0), ("big-text", 8.0), ("odd-image", 7.0)):
                conn.execute(sa.text("UPDATE item SET priority = :p WHERE external_id = :e"), {"p": prio, "e": ext})
        A.queue_in_priority_order(eng, fx.blind_collection)
    finally:
        eng.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[A.Server]:
    d = tmp_path_factory.mktemp("hardening-browser")
    fx = A.build_fixture(f"sqlite:///{d / 'app.db'}", d / "media", n_plain=1)
    _hostile_items(fx, d)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFEREVIEW_MAX_UPLOAD_MB", str(UPLOAD_MB))
        srv = A.Server(fx)
    with srv:
        yield srv


@pytest.fixture(scope="module")
def browser(served: A.Server) -> Iterator[Any]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        yield b
        b.close()


INERT_JS = """() => ({
  pwned: window.__pwned === undefined ? null : String(window.__pwned),
  handlers: document.querySelectorAll('[onerror],[onload],[onmouseover],[onclick]').length,
  jsLinks: document.querySelectorAll('a[href^="javascript"]').length,
  offsiteLinks: [...document.querySelectorAll('a[href]')].filter(
    a => !a.href.startsWith(location.origin) && !a.getAttribute('href').startsWith('#')).map(a => a.href),
  iframes: document.querySelectorAll('iframe[srcdoc]').length,
  outsideImgs: [...document.images].filter(i => i.src.includes('203.0.113.9')).length,
  beaconStyles: [...document.querySelectorAll('style')].filter(s => s.textContent.includes('203.0.113.9')).length,
  styledSpans: document.querySelectorAll('span[style*="203.0.113.9"]').length,
  text: document.body.innerText,
})"""


def _label_and_next(page: Any, item: str) -> None:
    press(page, "1")
    page.wait_for_selector(".st-key-rv_lab_0_0 button[kind='primary']", timeout=20_000)
    press(page, "q")
    page.wait_for_selector(".st-key-rv_lab_1_0 button[kind='primary']", timeout=20_000)
    press(page, "Control+Enter")  # submit; with a judge verdict the reveal step follows, else the next item
    page.wait_for_function(
        "prev => document.body.innerText.includes('Your blind labels') || "
        "!document.body.innerText.includes('· item ' + prev + ' ·')",
        arg=item,
        timeout=20_000,
    )
    if page.get_by_text("Your blind labels", exact=False).count():
        press(page, "Control+Enter")
    page.wait_for_function(
        "prev => !document.body.innerText.includes('· item ' + prev + ' ·')", arg=item, timeout=20_000
    )
    wait_idle(page)


def test_hostile_items_render_inert_and_nothing_leaves_localhost(served: A.Server, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    sign_in(page, served.base, "ann1")

    assert current_item(page) == "hostile-all"
    state = page.evaluate(INERT_JS)
    for name, text in H.HOSTILE_TEXT.items():  # each payload is visible as literal text
        probe = text.split("\u202e")[0][:40] if name != "zero-width" else "pass"
        assert probe in state["text"], name
    assert "\u202e" in state["text"] and "\u200b" in state["text"]  # kept as characters, not interpreted
    assert "www.evil.example" in state["text"].replace("\u2060", "")  # the model name is shown, as text
    assert {k: v for k, v in state.items() if k != "text"} == {
        "pwned": None,
        "handlers": 0,
        "jsLinks": 0,
        "offsiteLinks": [],
        "iframes": 0,
        "outsideImgs": 0,
        "beaconStyles": 0,
        "styledSpans": 0,
    }
    _label_and_next(page, "hostile-all")

    assert current_item(page) == "big-text"
    shown = page.evaluate("() => document.body.innerText")
    # the app shows a preview of long text and says how much is left out (review_app.ui.safe_text)
    assert "All work and no play" in shown and "more characters not shown" in shown
    _label_and_next(page, "big-text")  # the buttons still work after rendering the longest allowed text

    assert current_item(page) == "odd-image"
    page.wait_for_function(
        "() => [...document.images].some(i => i.src.includes('/media-files/') && i.complete && i.naturalWidth > 0)",
        timeout=20_000,
    )
    state = page.evaluate(INERT_JS)
    assert state["pwned"] is None and state["handlers"] == 0
    srcs = page.evaluate("() => [...document.images].map(i => i.src)")
    assert all(s.startswith((served.base, "data:", "blob:")) for s in srcs), srcs
    _label_and_next(page, "odd-image")

    outside = [u for u in requests if not u.startswith(served.base)]
    assert outside == [], outside
    context.close()
    H.tally(inputs_rendered=len(H.HOSTILE_TEXT) + 2, requests_recorded=len(requests))


def test_upload_over_the_limit_is_refused_on_the_import_page(served: A.Server, browser: Any, tmp_path: Path) -> None:
    big = tmp_path / "too-big.jsonl"
    line = '{"id": "x", "prompt": "' + "y" * 1000 + '"}\n'
    big.write_text(line * (UPLOAD_MB * 1100))
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.goto(served.base)
    wait_idle(page)
    page.locator(".st-key-signin_username input").fill("admin")
    page.locator(".st-key-signin_password input").fill(A.PASSWORDS["admin"])
    page.keyboard.press("Enter")
    page.get_by_role("link", name="Import").first.wait_for(timeout=20_000)
    page.get_by_role("link", name="Import").first.click()
    page.locator("input[type='file']").first.wait_for(state="attached", timeout=20_000)
    wait_idle(page)
    page.get_by_text(f"Uploads up to {UPLOAD_MB} MB", exact=False).wait_for(timeout=10_000)
    page.locator("input[type='file']").first.set_input_files(str(big))
    msg = page.get_by_text("or smaller", exact=False)
    msg.first.wait_for(timeout=20_000)
    assert f"{UPLOAD_MB}" in msg.first.inner_text()
    context.close()
    H.tally(inputs_tried=1, inputs_refused=1, limits_checked=1)


# ---------------------------------------------------------------------------------------
# The authenticated media route (no browser needed)
# ---------------------------------------------------------------------------------------


def _raw_get(base: str, path: str, token: str | None = None) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (httpx would normalise ``..``)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Cookie": f"safereview_session={token}"} if token else {}
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def _token(db_url: str, username: str, *, expired: bool = False) -> str:
    eng = make_engine(db_url)
    try:
        with session_scope(eng) as s:
            user = s.exec(sa.select(User).where(User.username == username)).scalars().one()
            token = auth.start_session(s, user)
            if expired:
                for row in s.exec(sa.select(UserSession).where(UserSession.user_id == user.id)).scalars():
                    row.expires_at = utcnow() - timedelta(seconds=1)
                    s.add(row)
    finally:
        eng.dispose()
    return token


def test_media_route_refuses_path_tricks(served: A.Server) -> None:
    sha = served.fx.media["image"]
    token = _token(served.fx.db_url, "ann2")
    status, image = _raw_get(served.base, f"/media-files/{sha}", token)
    assert status == 200 and image[:4] == b"\x89PNG"  # the control: the route works
    secret = served.fx.media_root.parent / "app.db"
    tricks = [
        "/media-files/../../etc/passwd",
        "/media-files/..%2f..%2fetc%2fpasswd",
        "/media-files/%2e%2e/%2e%2e/app.db",
        f"/media-files/{sha}/../../app.db",
        f"/media-files/{sha}/..%2f..%2fapp.db",
        f"/media-files/{sha.upper()}",
        "/media-files/" + "g" * 64,
        "/media-files/" + sha[:63],
        "/media-files/" + sha + "0",
        f"/media-files/{sha}%00.png",
        f"/media-files/{sha}/view.webp%2f..%2f..",
        "/media-files/*",
        f"/media-files/{sha}/" + "..%5c" * 4 + "app.db",
        "/media-files//etc/passwd",
    ]
    tried = 0
    for path in tricks:
        for tok in (None, token):
            status, body = _raw_get(served.base, path, tok)
            tried += 1
            # refused, or (paths the media route does not match) Streamlit's page shell: never a file
            head = body[:2000].lower()
            app_shell = status == 200 and b"<!doctype html>" in head and b"streamlit" in head
            assert status in (400, 401, 403, 404, 422) or app_shell, (path, status, body[:80])
            assert b"root:" not in body and b"SQLite format" not in body and image not in body, path
    assert secret.is_file()
    H.tally(inputs_tried=tried, inputs_refused=tried)


def test_media_route_refuses_expired_revoked_and_disabled_sessions(served: A.Server) -> None:
    url = f"{served.base}/media-files/{served.fx.media['image']}"
    live = _token(served.fx.db_url, "lead")
    assert httpx.get(url, cookies={"safereview_session": live}).status_code == 200
    expired = _token(served.fx.db_url, "ann1", expired=True)
    assert httpx.get(url, cookies={"safereview_session": expired}).status_code == 401
    victim = _token(served.fx.db_url, "ann2")
    eng = make_engine(served.fx.db_url)
    with session_scope(eng) as s:
        auth.set_disabled(s, "ann2", True, actor=SYSTEM)  # revokes the session
    eng.dispose()
    try:
        assert httpx.get(url, cookies={"safereview_session": victim}).status_code == 401
    finally:
        eng = make_engine(served.fx.db_url)
        with session_scope(eng) as s:
            auth.set_disabled(s, "ann2", False, actor=SYSTEM)
        eng.dispose()
    H.tally(role_action_pairs_checked=3)
