"""The review app in a real browser: `safereview serve` + Debian's chromium via Playwright.

Skips only when /usr/bin/chromium is missing and SAFEREVIEW_REQUIRE_BROWSER is not "1"
(CI sets it, so a missing browser fails there).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_support as A
import httpx
import pytest
from sqlmodel import Session, select

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = A.REPO / "test-artifacts"
CHROME_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_browser() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("SAFEREVIEW_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing but SAFEREVIEW_REQUIRE_BROWSER=1", pytrace=False)
        pytest.skip(f"{CHROMIUM} not installed")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[A.Server]:
    _require_browser()
    d = tmp_path_factory.mktemp("app-browser")
    fx = A.build_fixture(f"sqlite:///{d / 'app.db'}", d / "media")
    with A.Server(fx) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(served: A.Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        yield b
        b.close()


def wait_idle(page: Any, timeout: float = 20_000) -> None:
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout)
    page.wait_for_timeout(150)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)


def sign_in(page: Any, base: str, username: str, ready: str = ".st-key-rv_submit") -> None:
    """Sign in and wait for the landing page (``ready``: annotators land on Review, leads on Queue status)."""
    page.goto(base)
    wait_idle(page)
    page.locator(".st-key-signin_username input").fill(username)
    page.locator(".st-key-signin_password input").fill(A.PASSWORDS[username])
    page.keyboard.press("Enter")
    page.wait_for_selector(ready, timeout=20_000)
    wait_idle(page)


def current_item(page: Any) -> str:
    """External id shown in the review header caption (``… · item <id> · …``)."""
    text = page.locator("[data-testid='stCaptionContainer']", has_text="· item ").first.inner_text()
    return text.split("· item ", 1)[1].split(" ·", 1)[0].strip()


def press(page: Any, key: str) -> None:
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # not in a text field
    page.keyboard.press(key)


def test_keyboard_labelling_inert_text_and_no_outside_requests(served: A.Server, browser: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    sign_in(page, served.base, "ann1")

    seen: list[str] = []
    for n in range(3):
        item = current_item(page)
        seen.append(item)
        if item == "xss":
            # the payload is visible literally, nothing of it became markup or ran
            page.get_by_text("<script>window.__pwned = 1</script>", exact=False).wait_for(timeout=5000)
            assert page.get_by_text(f"![x]({A.BEACON})", exact=False).count() == 1
            assert page.locator("img[src*='203.0.113.9']").count() == 0
            assert page.locator("img[src='x']").count() == 0
            assert page.locator("a[href^='javascript']").count() == 0
            assert page.evaluate("() => window.__pwned") is None
            page.screenshot(path=str(ARTIFACTS / "review-xss-item.png"), full_page=True)
        press(page, "1")  # contextual = safe
        page.wait_for_selector(".st-key-rv_lab_0_0 button[kind='primary']", timeout=10_000)
        press(page, "q")  # intrinsic = safe
        page.wait_for_selector(".st-key-rv_lab_1_0 button[kind='primary']", timeout=10_000)
        press(page, "Control+Enter")  # submit: blind collection, so the verdict is revealed
        page.get_by_text("Your blind labels", exact=False).wait_for(timeout=10_000)
        if n == 0:
            page.screenshot(path=str(ARTIFACTS / "review-reveal.png"), full_page=True)
        press(page, "Control+Enter")  # commit final labels -> next item
        page.wait_for_function(
            "prev => !document.body.innerText.includes('· item ' + prev + ' ·')", arg=item, timeout=10_000
        )
        wait_idle(page)
    assert len(set(seen)) == 3
    page.screenshot(path=str(ARTIFACTS / "review-after-three.png"), full_page=True)

    outside = [u for u in requests if not u.startswith(served.base)]
    assert outside == [], outside

    from safereview.db.engine import make_engine
    from safereview.db.models import Annotation, Item, User

    eng = make_engine(served.fx.db_url)
    with Session(eng) as s:
        uid = s.exec(select(User.id).where(User.username == "ann1")).one()
        rows = s.exec(
            select(Annotation, Item.external_id)
            .join(Item, Item.id == Annotation.item_id)
            .where(Annotation.user_id == uid)
        ).all()
    eng.dispose()
    assert sorted(ext for _, ext in rows) == sorted(seen)
    for ann, ext in rows:
        assert ann.labels == {"contextual": "safe", "intrinsic": "safe"}
        assert ann.blind_labels == {"contextual": "safe", "intrinsic": "safe"}
        # the xss item's judge said unsafe/unsafe, the others safe/safe
        assert ann.verdict_action == ("override" if ext == "xss" else "confirm")
        assert ann.time_spent_s is not None and ann.time_spent_s >= 0

    # the session cookie the media route relies on: HttpOnly and SameSite=Strict
    cookie = next(c for c in context.cookies() if c["name"] == "safereview_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    context.close()


def test_media_route_needs_a_session(served: A.Server, browser: Any) -> None:
    sha = served.fx.media["image"]
    url = f"{served.base}/media-files/{sha}"
    anon = httpx.get(url)
    assert anon.status_code in (401, 403)
    assert httpx.get(f"{url}/view.webp").status_code in (401, 403)
    forged = httpx.get(url, cookies={"safereview_session": "not-a-real-token"})
    assert forged.status_code in (401, 403)

    context = browser.new_context()
    page = context.new_page()
    sign_in(page, served.base, "ann2")
    token = next(c["value"] for c in context.cookies() if c["name"] == "safereview_session")
    with httpx.Client(cookies={"safereview_session": token}) as client:
        r = client.get(url)
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/png"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
        part = client.get(url, headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and len(part.content) == 100
        assert part.headers["content-range"].startswith("bytes 0-99/")
        view = client.get(f"{url}/view.webp")
        assert view.status_code == 200 and view.content[:4] == b"RIFF" and view.content[8:12] == b"WEBP"
        assert client.get(f"{served.base}/media-files/{'0' * 64}").status_code == 404
        # sign out revokes the session: the same cookie stops working
        page.locator(".st-key-sign_out button").click()
        page.wait_for_selector(".st-key-signin_username", timeout=20_000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and client.get(url).status_code == 200:
            time.sleep(0.5)
        assert client.get(url).status_code in (401, 403)
    context.close()


def test_security_headers_and_health(served: A.Server) -> None:
    r = httpx.get(served.base + "/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "img-src 'self' data: blob:" in csp
    assert "203.0.113.9" not in csp and "http:" not in csp.replace("'self'", "")
    assert r.headers["x-content-type-options"] == "nosniff"
    h = httpx.get(served.base + "/healthz")
    assert h.status_code == 200 and h.json()["database"] == "ok"


def test_gold_snapshot_downloads_are_built_when_clicked(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> None:
    """A lead makes a snapshot and downloads it: the deferred Parquet is the snapshot's rows."""
    import pyarrow.parquet as pq

    from safereview.agreement.gold import COLUMNS
    from safereview.db.engine import make_engine
    from safereview.db.models import Annotation, GoldSnapshot, User

    d = tmp_path_factory.mktemp("gold-browser")
    fx = A.build_fixture(f"sqlite:///{d / 'app.db'}", d / "media")
    engine = make_engine(fx.db_url)
    with Session(engine) as s:  # two annotators agree on two items of the blind collection
        users = {u.username: u.id for u in s.exec(select(User)).all()}
        for ext in ("t0", "t1"):
            for name in ("ann1", "ann2"):
                s.add(
                    Annotation(
                        item_id=fx.item_ids[ext],
                        user_id=users[name],
                        labels={"contextual": "safe", "intrinsic": "safe"},
                    )
                )
        s.commit()
    with A.Server(fx) as srv:
        page = browser.new_page(accept_downloads=True, viewport={"width": 1400, "height": 1000})
        sign_in(page, srv.base, "lead", ready=".st-key-qs_collection")
        page.goto(f"{srv.base}/gold")
        wait_idle(page)
        page.get_by_role("tab", name="Gold snapshots").click()
        page.locator(".st-key-gold_create button").click()
        page.wait_for_selector(".st-key-gold_dl_parquet a", timeout=30_000)
        wait_idle(page)
        with page.expect_download(timeout=30_000) as dl:
            page.locator(".st-key-gold_dl_parquet a").click()
        out = d / "downloaded.parquet"
        dl.value.save_as(out)
        assert dl.value.suggested_filename.startswith("gold-") and dl.value.suggested_filename.endswith(".parquet")
        page.screenshot(path=str(ARTIFACTS / "gold-downloads.png"), full_page=True)
        page.close()
    table = pq.read_table(out)
    with Session(engine) as s:
        snap = s.exec(select(GoldSnapshot)).one()
    engine.dispose()
    assert table.column_names == list(COLUMNS) and table.num_rows == snap.n_rows == 4  # 2 items x 2 dimensions
    assert set(table.column("label").to_pylist()) == {"safe"}
    assert set(table.column("snapshot_id").to_pylist()) == {snap.id}


def test_a_page_beyond_ones_role_says_so(served: A.Server, browser: Any) -> None:
    """An annotator following a lead's link to /agreement is told why they see another page."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    sign_in(page, served.base, "ann1")
    page.goto(f"{served.base}/agreement")
    wait_idle(page)
    page.get_by_text("Agreement is not open to your role (annotator)", exact=False).wait_for(timeout=10_000)
    context.close()


def test_a_link_to_ones_landing_page_by_name_opens_it(served: A.Server, browser: Any) -> None:
    """The landing page is served at "/"; a link naming it (a lead's /queue_status, an
    annotator's /review) opens it too, with no "Page not found" dialog on the way."""
    landing = ("[data-testid='stHeading']:has-text('Queue status')", ".st-key-rv_submit")
    for username, name, ready in (("lead", "queue_status", landing[0]), ("ann1", "review", landing[1])):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        sign_in(page, served.base, username, ready)
        page.goto(f"{served.base}/{name}")
        wait_idle(page)
        page.wait_for_selector(ready, timeout=20_000)
        wait_idle(page)
        assert page.get_by_text("Page not found").count() == 0, username
        assert page.url.rstrip("/") == served.base.rstrip("/"), page.url  # now at the landing page's own address
        context.close()
