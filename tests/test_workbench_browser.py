"""The review workbench as reviewers live in it, on the demo, in Debian's chromium (Playwright).

One test per promise: reasons are not lost at the reveal step; Undo brings the item back;
a gold label is never pre-chosen; the label keys work right after a collection switch; and
images stay blurred and greyscale on screen until the reviewer shows them. Skips only when
/usr/bin/chromium is missing and SAFEREVIEW_REQUIRE_BROWSER is not "1" (CI sets it).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_support as A
import pytest
from sqlmodel import Session, select
from test_app_browser import ARTIFACTS, CHROME_ARGS, CHROMIUM, _require_browser, current_item, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORDS = {"admin": "admin-demo-2026", "lead": "lead-demo-2026", "alice": "alice-demo-2026", "bob": "bob-demo-2026"}
UNI = "uni-safebench / demo-unified-model"
VLSU = "vlsu / demo"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[A.Server]:
    """The demo exactly as ``safereview demo`` builds it (with its accounts), served."""
    _require_browser()
    from safereview.cli.app_cmds import ensure_demo_users
    from safereview.dataio.demo import build_demo_folder

    Path(ARTIFACTS).mkdir(exist_ok=True)
    d = tmp_path_factory.mktemp("workbench") / "demo"
    build_demo_folder(d, finish=ensure_demo_users)
    fx = A.Fixture(db_url=f"sqlite:///{d / 'safereview.db'}", media_root=d / "media")
    with A.Server(fx) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(demo: A.Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        yield b
        b.close()


def _page(browser: Any, server: A.Server, username: str, path: str = "") -> Any:
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.goto(server.base)
    wait_idle(page)
    page.locator(".st-key-signin_username input").fill(username)
    page.locator(".st-key-signin_password input").fill(PASSWORDS[username])
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid='stSidebar']", timeout=20_000)
    wait_idle(page)
    if path:
        page.goto(f"{server.base}/{path}")
        wait_idle(page)
    return page


def _pick_collection(page: Any, name: str) -> None:
    """Choose a collection in the sidebar with the mouse, as a person would."""
    option = page.locator("[role='option']", has_text=name).first
    for attempt in range(3):  # a click that lands while the page reruns (a loaded machine) leaves it closed
        wait_idle(page)
        page.locator(".st-key-rv_collection").click()
        try:
            option.wait_for(timeout=10_000)
            break
        except Exception:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    option.click()
    page.wait_for_function("name => document.body.innerText.includes(name + ' · item ')", arg=name, timeout=20_000)
    wait_idle(page)


def _focused(page: Any) -> str:
    return page.evaluate("() => document.activeElement ? document.activeElement.tagName : ''")


def _annotation(server: A.Server, username: str, external_id: str) -> Any:
    from safereview.db.engine import make_engine
    from safereview.db.models import Annotation, Item, User

    engine = make_engine(server.fx.db_url)
    try:
        with Session(engine) as s:
            return s.exec(
                select(Annotation)
                .join(Item, Item.id == Annotation.item_id)  # type: ignore[arg-type]
                .join(User, User.id == Annotation.user_id)  # type: ignore[arg-type]
                .where(User.username == username, Item.external_id == external_id)
            ).one()
    finally:
        engine.dispose()


def test_label_keys_work_right_after_a_collection_switch(demo: A.Server, browser: Any) -> None:
    page = _page(browser, demo, "admin", "review")
    _pick_collection(page, UNI)
    assert page.evaluate("() => document.activeElement.closest('[data-testid=\"stSidebar\"]')") is None
    page.keyboard.press("1")  # no click into the page first: the select let go of the keyboard
    page.wait_for_selector(".st-key-rv_lab_0_0 button[kind='primary']", timeout=30_000)
    # Escape leaves a sidebar text field too, after which the keys label again
    page.locator(".st-key-rv_collection").click()
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    page.keyboard.press("2")
    page.wait_for_selector(".st-key-rv_lab_0_1 button[kind='primary']", timeout=30_000)
    page.context.close()


def test_the_reason_for_a_change_after_the_reveal_is_asked_for_and_kept(demo: A.Server, browser: Any) -> None:
    page = _page(browser, demo, "alice")
    _pick_collection(page, UNI)
    item = current_item(page)
    page.keyboard.press("1")  # contextual = safe
    page.wait_for_selector(".st-key-rv_lab_0_0 button[kind='primary']", timeout=30_000)
    page.keyboard.press("q")  # intrinsic = safe
    page.wait_for_selector(".st-key-rv_lab_1_0 button[kind='primary']", timeout=30_000)
    page.keyboard.press("Control+Enter")
    page.get_by_text("Your blind labels", exact=False).wait_for(timeout=30_000)
    # the rationale box is still there at the reveal step; N writes in it, Esc goes back to the keys
    page.keyboard.press("n")
    assert _focused(page) == "TEXTAREA"
    page.keyboard.type("first look: a harmless tip")
    page.keyboard.press("Escape")
    assert _focused(page) != "TEXTAREA"
    wait_idle(page)
    page.keyboard.press("3")  # contextual = unsafe: a blind label changed after seeing the judge
    page.wait_for_selector("[class*='st-key-rv_reason_'] input", timeout=30_000)
    page.keyboard.press("f")  # Flag works at the reveal step
    page.wait_for_selector(".st-key-rv_flag button[kind='primary']", timeout=30_000)
    wait_idle(page)
    page.keyboard.press("Control+Enter")  # no reason yet: refused, still on the item
    page.get_by_text("after seeing the judge", exact=False).first.wait_for(timeout=30_000)
    wait_idle(page)  # the warning arrives before the run ends; a key pressed mid-run can lose its focus
    assert current_item(page) == item
    page.keyboard.press("n")  # N goes to the reason box when it is shown
    assert _focused(page) == "INPUT"
    page.keyboard.type("the judge saw the chemicals I missed")
    page.keyboard.press("Escape")
    wait_idle(page)
    page.screenshot(path=str(ARTIFACTS / "workbench-reveal-reason.png"), full_page=True)
    page.keyboard.press("Control+Enter")
    try:
        page.wait_for_function(
            "prev => !document.body.innerText.includes('· item ' + prev + ' ·')", arg=item, timeout=30_000
        )
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "workbench-reveal-reason-FAILED.png"), full_page=True)
        raise
    ann = _annotation(demo, "alice", item)
    assert ann.blind_labels == {"contextual": "safe", "intrinsic": "safe"}
    assert ann.labels["contextual"] == "unsafe" and ann.flagged
    assert ann.rationale == "first look: a harmless tip"
    assert ann.reveal_reason == "the judge saw the chemicals I missed"
    page.context.close()


def test_undo_brings_the_item_back_as_it_was(demo: A.Server, browser: Any) -> None:
    page = _page(browser, demo, "bob")
    _pick_collection(page, UNI)
    item = current_item(page)
    page.keyboard.press("1")
    page.wait_for_selector(".st-key-rv_lab_0_0 button[kind='primary']", timeout=30_000)
    page.keyboard.press("q")
    page.wait_for_selector(".st-key-rv_lab_1_0 button[kind='primary']", timeout=30_000)
    page.keyboard.press("Control+Enter")
    page.get_by_text("Your blind labels", exact=False).wait_for(timeout=30_000)
    page.keyboard.press("Control+Enter")  # commit: the next item comes
    page.wait_for_function(
        "prev => !document.body.innerText.includes('· item ' + prev + ' ·')", arg=item, timeout=30_000
    )
    page.keyboard.press("u")
    page.get_by_text(f"Undid your last change to item {item}", exact=False).wait_for(timeout=30_000)
    assert current_item(page) == item
    page.get_by_text("Your blind labels", exact=False).wait_for(timeout=30_000)  # back at the reveal step
    assert _annotation(demo, "bob", item).verdict_action is None  # not confirmed until committed again
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "prev => !document.body.innerText.includes('· item ' + prev + ' ·')", arg=item, timeout=30_000
    )
    assert _annotation(demo, "bob", item).verdict_action in ("confirm", "override")
    page.context.close()


def test_a_gold_label_is_never_chosen_for_the_lead(demo: A.Server, browser: Any) -> None:
    page = _page(browser, demo, "lead", "gold")
    record = page.get_by_role("button", name="Record decision")
    record.wait_for(timeout=20_000)
    assert record.is_disabled()
    assert page.locator("[data-testid='stRadio'] input:checked").count() == 0  # nothing pre-selected
    page.locator("[data-testid='stRadio'] label", has_text="unsafe").first.click()
    wait_idle(page)
    assert record.is_disabled()  # a note and a confirmation are still missing
    page.get_by_label("Why (required; kept with the decision)").fill("policy 4.2: instructions for a hazard")
    page.keyboard.press("Control+Enter")
    wait_idle(page)
    page.locator("[data-testid='stCheckbox'] label").first.click()
    wait_idle(page)
    assert not record.is_disabled()
    page.screenshot(path=str(ARTIFACTS / "workbench-adjudication.png"), full_page=True)
    page.context.close()


def _looks(png: bytes) -> tuple[float, float]:
    """Sharpness and mean saturation of a screenshot's middle: blur lowers the first, greyscale the second.

    Sharpness is the mean absolute difference between neighbouring pixels (both directions);
    the middle excludes the frame, whose edge stays sharp however blurred the picture is.
    """
    import numpy as np
    from PIL import Image, ImageStat

    im = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = im.size
    im = im.crop((w // 5, h // 5, w - w // 5, h - h // 5))
    grey = np.asarray(im.convert("L"), dtype=np.float64)
    sharpness = float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
    saturation = ImageStat.Stat(im.convert("HSV")).mean[1]
    return sharpness, saturation


def test_images_are_blurred_and_grey_on_screen_until_shown(demo: A.Server, browser: Any) -> None:
    page = _page(browser, demo, "lead", "review")
    _pick_collection(page, VLSU)
    shielded = page.locator(".sr-shield img").first
    shielded.wait_for(timeout=20_000)
    page.wait_for_function("() => [...document.querySelectorAll('.sr-shield img')].every(i => i.complete)")
    page.get_by_text("Images and video are blurred until you show them", exact=False).first.wait_for(timeout=30_000)
    assert "blur" in shielded.evaluate("el => getComputedStyle(el).filter")
    before = _looks(shielded.screenshot(path=str(ARTIFACTS / "workbench-image-shielded.png")))
    page.screenshot(path=str(ARTIFACTS / "workbench-media-shielded.png"), full_page=True)
    page.keyboard.press("m")  # show this item's media
    page.wait_for_selector(".sr-shield", state="detached", timeout=30_000)
    shown = page.locator(".sr-media img").first
    page.wait_for_function("() => [...document.querySelectorAll('.sr-media img')].every(i => i.complete)")
    assert shown.evaluate("el => getComputedStyle(el).filter") == "none"
    after = _looks(shown.screenshot(path=str(ARTIFACTS / "workbench-image-shown.png")))
    assert before[1] < 3.0 < after[1], (before, after)  # greyscale until shown
    assert after[0] > 2.5 * before[0], (before, after)  # blurred until shown
    page.screenshot(path=str(ARTIFACTS / "workbench-media-shown.png"), full_page=True)
    page.context.close()
