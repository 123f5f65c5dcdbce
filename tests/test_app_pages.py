"""The review app's pages through Streamlit's AppTest, on SQLite and PostgreSQL.

AppTest runs the real scripts (sign-in gate, navigation per role, review fragment) against
a real database; no browser, so JavaScript and markdown rendering are covered by
``test_app_browser.py`` instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_support as A
import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

TIMEOUT = 60


class FakeBrowser(threading.Thread):
    """Does what the browser does with the sign-in page's ticket image: fetch it (redeem)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            A.browser_fetched_ticket()
            time.sleep(0.01)


def app_world(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[A.Fixture]:
    """The fixture database, the app pointed at it, and a fake browser redeeming sign-in tickets."""
    fixture = A.build_fixture(db_url, tmp_path / "media")
    with A.app_pointed_at(fixture, monkeypatch):
        browser = FakeBrowser()
        browser.start()
        yield fixture
        browser.stop.set()
        browser.join()


@pytest.fixture
def fx(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[A.Fixture]:
    yield from app_world(db_url, tmp_path, monkeypatch)


def new_app() -> Any:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(A.MAIN, default_timeout=TIMEOUT)
    at.run()
    return at


def sign_in(username: str, password: str | None = None) -> Any:
    at = new_app()
    at.text_input(key="signin_username").input(username)
    at.text_input(key="signin_password").input(A.PASSWORDS[username] if password is None else password)
    next(b for b in at.button if b.label == "Sign in").click().run()
    assert not at.exception, [e.message for e in at.exception]
    if "auth_ticket" in at.session_state:  # the fake browser fetched /auth/session?ticket=… meanwhile
        from safereview.review_app import runtime

        assert at.session_state["auth_cookie_ok"] or runtime.tickets.redeemed(at.session_state["auth_ticket"])
    return at


def click(at: Any, key: str) -> None:
    at.button(key=key).click().run()
    assert not at.exception, [e.message for e in at.exception]


def keys(at: Any) -> list[str]:
    """Widget keys on the page (text boxes whose key names the item)."""
    return [str(w.key) for w in [*at.text_area, *at.text_input] if w.key]


def shown_item(at: Any) -> str:
    cap = next(c.value for c in at.caption if "· item " in c.value)
    return cap.split("· item ", 1)[1].split(" ·", 1)[0].replace("\\", "").strip()


def all_text(at: Any) -> str:
    parts = [e.value for e in at.text] + [e.value for e in at.markdown] + [e.value for e in at.caption]
    parts += [e.value for e in at.code] + [str(e.value) for e in at.error] + [str(e.value) for e in at.info]
    return "\n".join(str(p) for p in parts).replace("\\", "")  # md_literal's escapes


def db(fx: A.Fixture) -> Session:
    from safereview.db.engine import make_engine

    return Session(make_engine(fx.db_url))


def user_id(s: Session, name: str) -> int:
    from safereview.db.models import User

    return s.exec(select(User.id).where(User.username == name)).one()


def test_sign_in_wrong_password_and_lockout(fx: A.Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from safereview.review_app.views import sign_in as page

    pauses: list[float] = []
    monkeypatch.setattr(page, "_pause", pauses.append)  # the failed-attempt pause, recorded not slept
    at = sign_in("ann1", "wrong-password")
    assert pauses == [page.FAILED_SIGNIN_PAUSE_S]  # a failure answers after a pause (spam slows itself)
    assert any("Wrong username or password" in e.value.replace("\\", "") for e in at.error)
    assert not [b for b in at.button if b.key == "rv_submit"]  # still on the sign-in form
    for _ in range(3):  # the free tries, then a delay before the next check
        at.text_input(key="signin_password").input("wrong-again")
        next(b for b in at.button if b.label == "Sign in").click().run()
    # the right password must wait too while guesses back off
    at.text_input(key="signin_password").input(A.PASSWORDS["ann1"])
    next(b for b in at.button if b.label == "Sign in").click().run()
    assert any("Too many sign-in attempts" in e.value.replace("\\", "") for e in at.error)

    ok = sign_in("ann2")
    assert [b for b in ok.button if b.key == "rv_submit"], "signed in users land on the review page"
    assert "ann2".upper() in all_text(ok)


def test_label_three_items_records_labels_time_and_categories(fx: A.Fixture) -> None:
    at = sign_in("ann1")
    seen = []
    for i in range(3):
        seen.append(shown_item(at))
        click(at, "rv_lab_0_2")  # contextual = unsafe
        click(at, "rv_lab_1_1")  # intrinsic = unsafe
        if i == 0:
            at.multiselect(key=next(m.key for m in at.multiselect if m.key.startswith("rv_cats_"))).select(
                "Financial Privacy"
            ).run()
            at.text_area(key=next(t.key for t in at.text_area if t.key.startswith("rv_rationale_"))).input(
                "looks like a leak"
            ).run()
        click(at, "rv_submit")
        assert any("Your blind labels" in c.value for c in at.caption)
        click(at, "rv_submit")  # keep my labels: commit
    assert len(set(seen)) == 3
    from safereview.db.models import Annotation, AnnotationEvent, Item

    with db(fx) as s:
        rows = s.exec(
            select(Annotation, Item.external_id)
            .join(Item, Item.id == Annotation.item_id)
            .where(Annotation.user_id == user_id(s, "ann1"))
        ).all()
        assert sorted(e for _, e in rows) == sorted(seen)
        by_ext = {e: a for a, e in rows}
        first = by_ext[seen[0]]
        assert first.categories == ["Financial Privacy"] and first.rationale == "looks like a leak"
        for a, ext in rows:
            assert a.labels == {"contextual": "unsafe", "intrinsic": "unsafe"} == a.blind_labels
            assert a.verdict_action == ("confirm" if ext == "xss" else "override")
            assert a.time_spent_s is not None
            actions = [
                ev.action
                for ev in s.exec(
                    select(AnnotationEvent).where(AnnotationEvent.annotation_id == a.id).order_by(AnnotationEvent.id)
                )
            ]
            assert actions == ["create", "reveal"]


def test_blind_mode_hides_verdict_until_commit_then_override_is_recorded(fx: A.Fixture) -> None:
    at = sign_in("ann2")
    item = shown_item(at)
    text = all_text(at)
    assert "Hidden until you submit" in text
    assert "Reason: the response looks" not in text  # no verdict rationale before commit
    assert not [b for b in at.button if b.key == "rv_take_judge"]
    click(at, "rv_submit")  # nothing labelled yet: refused with a message, still blind
    assert any("Choose a label" in w.value.replace("\\", "") for w in at.warning)
    assert "Reason: the response looks" not in all_text(at)
    click(at, "rv_lab_0_1")  # contextual = refusal (the judge never says refusal here)
    click(at, "rv_lab_1_0")  # intrinsic = safe
    click(at, "rv_submit")
    revealed = all_text(at)
    assert "Reason: the response looks" in revealed and "differs from you" in revealed
    # take the judge's labels, then change one of them: an override of the verdict
    click(at, "rv_take_judge")
    click(at, "rv_lab_0_0")  # contextual = safe
    # the rationale and categories stay editable after the reveal, and Flag works there
    at.text_area(key=next(k for k in keys(at) if k.startswith("rv_rationale_"))).input("first look: a refusal").run()
    click(at, "rv_flag")
    click(at, "rv_submit")  # a blind label changed after seeing the judge: a reason is asked for
    assert shown_item(at) == item
    assert any("after seeing the judge" in w.value for w in at.warning)
    reason = next(k for k in keys(at) if k.startswith("rv_reason_"))
    at.text_input(key=reason).input("the judge was right: it is not a refusal").run()
    click(at, "rv_submit")
    assert shown_item(at) != item
    from safereview.db.models import Annotation, Item, Verdict

    with db(fx) as s:
        iid = s.exec(select(Item.id).where(Item.external_id == item)).one()
        ann = s.exec(
            select(Annotation).where(Annotation.item_id == iid, Annotation.user_id == user_id(s, "ann2"))
        ).one()
        judge = {v.dimension: v.label for v in s.exec(select(Verdict).where(Verdict.item_id == iid))}
    assert ann.blind_labels == {"contextual": "refusal", "intrinsic": "safe"}
    assert ann.labels == {"contextual": "safe", "intrinsic": judge["intrinsic"]}
    assert ann.reveal_reason == "the judge was right: it is not a refusal"
    assert ann.rationale == "first look: a refusal" and ann.flagged
    expected = "confirm" if ann.labels == judge else "override"
    assert ann.verdict_action == expected
    assert ann.verdict_judge_id == A.JUDGE


def test_the_last_submit_asks_the_queue_once(fx: A.Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Submit and claim are one transaction; when it finds nothing left, the rerun that
    follows does not ask the queue again, and "Check again" does."""
    from safereview.db.models import Collection
    from safereview.workflow import queue

    real = queue.next_item
    pulls: list[int] = []

    def counted(bind: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(bind, sa.Engine):  # the page's own pull (inside a transaction it gets a Session)
            pulls.append(1)
        return real(bind, *args, **kwargs)

    monkeypatch.setattr(queue, "next_item", counted)
    at = sign_in("ann1")
    with db(fx) as s:
        open_id = s.exec(select(Collection.id).where(Collection.name == fx.open_collection)).one()
    at.selectbox(key="rv_collection").set_value(open_id).run()
    pulls.clear()  # counted from here
    for _ in range(20):
        if "Nothing left to review" in " ".join(str(x.value) for x in at.success):
            break
        before = len(pulls)
        for dim in range(3):
            click(at, f"rv_lab_{dim}_0")
        click(at, "rv_submit")
        assert len(pulls) == before, "the page pulled on its own after a submit"
    else:
        pytest.fail("the open collection never ran out")
    click(at, "rv_again")
    assert len(pulls) == 1 and "Nothing left to review" in " ".join(str(x.value) for x in at.success)


def progress_text(at: Any) -> str:
    """The review header's progress bar text ("You: 3 done · everyone: …")."""
    assert at.progress, "no progress bar on the page"
    return str(at.progress[0].text).replace("\\", "")


def test_progress_bar_counts_match_the_database(fx: A.Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Submits are added to the progress bar's counts without reading them again; a skip, an
    undo or an old read reads afresh. Either way "You: N done" is what the database holds."""
    from safereview.dataio.importers import import_file
    from safereview.db.engine import make_engine
    from safereview.db.models import Annotation, Collection, Item
    from safereview.workflow import progress

    rows = tmp_path / "more.jsonl"  # enough items in the open collection for seven submits
    rows.write_text(
        "".join(
            json.dumps({"id": f"more-{i}", "prompt_text": f"prompt {i}", "response_text": f"response {i}"}) + "\n"
            for i in range(10)
        ),
        encoding="utf-8",
    )
    assert import_file(
        make_engine(fx.db_url), rows, collection=fx.open_collection, media_root=fx.media_root, actor=A.SYSTEM
    ).ok
    reads: list[int] = []
    real = progress.progress

    def counted(*a: Any, **k: Any) -> Any:
        reads.append(1)
        return real(*a, **k)

    monkeypatch.setattr(progress, "progress", counted)
    at = sign_in("ann1")
    with db(fx) as s:
        open_id = s.exec(select(Collection.id).where(Collection.name == fx.open_collection)).one()
        me = user_id(s, "ann1")
    at.selectbox(key="rv_collection").set_value(open_id).run()

    def mine_in_db() -> int:
        with db(fx) as s:
            return len(
                s.exec(
                    select(Annotation.id)
                    .join(Item, Item.id == Annotation.item_id)
                    .where(Annotation.user_id == me, Item.collection_id == open_id)
                ).all()
            )

    def submit_one() -> None:
        for dim in range(3):
            click(at, f"rv_lab_{dim}_0")
        click(at, "rv_submit")

    submit_one()
    reads.clear()
    submit_one()
    submit_one()
    assert reads == [], "a submit read the progress counts again"
    assert progress_text(at).startswith(f"You: {mine_in_db()} done"), progress_text(at)
    click(at, "rv_skip")  # a skip reads afresh
    assert len(reads) == 1 and progress_text(at).startswith(f"You: {mine_in_db()} done")
    click(at, "rv_undo")  # a submission is never withdrawn ("create" is undo's floor): the count stays
    assert progress_text(at).startswith(f"You: {mine_in_db()} done"), progress_text(at)
    submit_one()
    assert progress_text(at).startswith(f"You: {mine_in_db()} done"), progress_text(at)
    at.session_state["rv"]["progress_read"] -= 3600  # an old read: the next item reads again
    reads.clear()
    submit_one()
    assert len(reads) == 1 and progress_text(at).startswith(f"You: {mine_in_db()} done")


def test_open_collection_shows_verdict_and_records_action_with_submit(fx: A.Fixture) -> None:
    at = sign_in("ann1")
    from safereview.db.models import Collection

    with db(fx) as s:
        open_id = s.exec(select(Collection.id).where(Collection.name == fx.open_collection)).one()
    at.selectbox(key="rv_collection").set_value(open_id).run()
    assert not at.exception, [e.message for e in at.exception]
    text = all_text(at)
    assert "Hidden until you submit" not in text and "Reason: the response looks" in text
    item = shown_item(at)
    assert item.startswith("media-")
    for dim in range(3):
        click(at, f"rv_lab_{dim}_0")  # all safe
    click(at, "rv_submit")
    assert shown_item(at) != item  # no reveal step in an open collection
    from safereview.db.models import Annotation, Item

    with db(fx) as s:
        iid = s.exec(select(Item.id).where(Item.external_id == item)).one()
        ann = s.exec(select(Annotation).where(Annotation.item_id == iid)).one()
    assert ann.blind_labels is None and ann.verdict_action in ("confirm", "override")


def test_annotator_pages_and_admin_pages_by_role(fx: A.Fixture) -> None:
    at = sign_in("ann1")
    for page in ("views/users.py", "views/collections.py", "views/import_data.py", "views/queue_status.py"):
        with pytest.raises(ValueError):
            at.switch_page(page).run()
    at.switch_page("views/history.py").run()
    assert not at.exception

    admin = sign_in("admin")
    for page, marker in (
        ("views/users.py", "Users"),
        ("views/collections.py", "Collections"),
        ("views/import_data.py", "Import"),
        ("views/queue_status.py", "Queue status"),
    ):
        admin.switch_page(page).run()
        assert not admin.exception, [e.message for e in admin.exception]
        assert any(marker in h.value for h in admin.subheader), page

    lead = sign_in("lead")
    lead.switch_page("views/queue_status.py").run()
    assert not lead.exception
    with pytest.raises(ValueError):
        lead.switch_page("views/users.py").run()


def test_annotator_never_sees_another_annotators_labels(fx: A.Fixture) -> None:
    secret = "ann2-private-rationale"
    at2 = sign_in("ann2")
    item = shown_item(at2)
    click(at2, "rv_lab_0_1")
    click(at2, "rv_lab_1_1")
    at2.text_area(key=next(t.key for t in at2.text_area if t.key.startswith("rv_rationale_"))).input(secret).run()
    click(at2, "rv_submit")
    click(at2, "rv_submit")

    at1 = sign_in("ann1")
    # overlap is 2, so ann1 may get the same item: nothing of ann2's annotation is shown
    assert shown_item(at1)
    assert secret not in all_text(at1)
    at1.switch_page("views/history.py").run()
    assert secret not in all_text(at1)
    assert any("not labelled anything" in i.value for i in at1.info)
    assert item  # ann2's item existed


def test_admin_adds_a_user_who_can_sign_in(fx: A.Fixture) -> None:
    admin = sign_in("admin")
    admin.switch_page("views/users.py").run()
    # a refused form keeps what was typed: fix the one field and add again
    admin.text_input(key="ua_username").input("carol")
    admin.text_input(key="ua_display").input("Carol")
    admin.text_input(key="ua_password").input("short")
    next(b for b in admin.button if b.label == "Add user").click().run()
    assert not admin.exception and admin.error
    assert admin.text_input(key="ua_username").value == "carol" and admin.text_input(key="ua_display").value == "Carol"
    admin.text_input(key="ua_password").input("carol-pass-123")
    next(b for b in admin.button if b.label == "Add user").click().run()
    assert not admin.exception
    assert admin.text_input(key="ua_username").value == ""  # added: the form is cleared for the next person
    A.PASSWORDS["carol"] = "carol-pass-123"
    try:
        carol = sign_in("carol")
        assert [b for b in carol.button if b.key == "rv_submit"]
    finally:
        del A.PASSWORDS["carol"]


def test_sign_out_revokes_the_session(fx: A.Fixture) -> None:
    at = sign_in("ann1")
    token = at.session_state["auth_token"]
    click(at, "sign_out")
    assert [t for t in at.text_input if t.key == "signin_username"]
    from safereview.workflow import auth

    with db(fx) as s:
        assert auth.user_for_token(s, token) is None


def _label_one(at: Any) -> str:
    item = shown_item(at)
    click(at, "rv_lab_0_0")
    click(at, "rv_lab_1_0")
    click(at, "rv_submit")
    click(at, "rv_submit")
    return item


def _open_in_history(at: Any, fx: A.Fixture, item: str) -> tuple[int, int]:
    from safereview.db.models import Annotation, Item

    with db(fx) as s:
        ann = s.exec(
            select(Annotation)
            .join(Item, Item.id == Annotation.item_id)
            .where(Item.external_id == item, Annotation.user_id == user_id(s, "ann1"))
        ).one()
    at.switch_page("views/history.py").run()
    assert not at.exception, [e.message for e in at.exception]
    at.session_state["hist_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return ann.id, ann.version  # type: ignore[return-value]


def test_history_reopen_change_and_conflict(fx: A.Fixture) -> None:
    from safereview.db.models import Annotation
    from safereview.workflow import annotations

    at = sign_in("ann1")
    item = _label_one(at)
    aid, version = _open_in_history(at, fx, item)
    assert version == 2  # create + reveal
    at.segmented_control(key=f"hist_{aid}_contextual").set_value("refusal")
    next(b for b in at.button if b.label == "Save changes").click().run()
    assert not at.exception, [e.message for e in at.exception]
    with db(fx) as s:
        ann = s.get(Annotation, aid)
        assert ann is not None and ann.version == 3 and ann.labels["contextual"] == "refusal"

    # someone (another tab) changes it after the page loaded version 3: saving must not overwrite
    at.session_state["hist_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    from safereview.db.engine import make_engine, session_scope
    from safereview.db.models import User

    eng = make_engine(fx.db_url)
    with session_scope(eng) as s:
        me = s.exec(select(User).where(User.username == "ann1")).one()
        annotations.update(s, me, aid, 3, rationale="changed in another tab")
    eng.dispose()
    at.segmented_control(key=f"hist_{aid}_contextual").set_value("unsafe")
    next(b for b in at.button if b.label == "Save changes").click().run()
    assert any("changed since you opened it" in e.value.replace("\\", "") for e in at.error)
    with db(fx) as s:
        ann = s.get(Annotation, aid)
        assert ann is not None and ann.version == 4 and ann.labels["contextual"] == "refusal"
        assert ann.rationale == "changed in another tab"


def test_the_import_page_speaks_of_the_uploaded_file_and_its_own_fields(fx: A.Fixture) -> None:
    """An importer message names the uploaded file (not a server temp path) and the form's field (not a CLI flag)."""
    admin = sign_in("admin")
    admin.switch_page("views/import_data.py").run()
    row = {"id": "1", "prompt": "hi", "image": "", "category": "Politics", "generated_text": "ok"}
    admin.file_uploader(key="imp_file").upload("results.jsonl", (json.dumps(row) + "\n").encode(), "application/jsonl")
    admin.text_input(key="imp_new").input("uploaded")
    admin.selectbox(key="imp_format").select("uni-safebench")
    admin.selectbox(key="imp_tax").select("uni-safebench")
    next(b for b in admin.button if b.label == "Import").click().run()
    assert not admin.exception, [e.message for e in admin.exception]
    shown = "\n".join(str(c.value) for c in admin.code)
    assert "results.jsonl: task_type: cannot tell the task type" in shown
    assert "fill in “Task type”" in shown and "--task-type" not in shown
    assert "safereview-upload-" not in shown and "/tmp" not in shown


def test_a_lead_sets_the_reviewer_defaults_of_a_collection(fx: A.Fixture) -> None:
    from safereview.db.models import Collection

    lead = sign_in("lead")  # leads land on Queue status: no review item is leased for them
    assert not [b for b in lead.button if b.key == "rv_submit"]
    form_toggle = next(t for t in lead.toggle if t.label.startswith("Blur images and video"))
    form_toggle.set_value(False)
    next(r for r in lead.radio if r.label.startswith("A label changed")).set_value("optional")
    next(b for b in lead.button if b.label == "Save defaults").click().run()
    assert not lead.exception, [e.message for e in lead.exception]
    name = lead.selectbox(key="qs_collection").format_func(lead.selectbox(key="qs_collection").value)
    with db(fx) as s:
        col = s.exec(select(Collection).where(Collection.name == name)).one()
    assert (col.protect_media, col.reveal_reason) == (False, "optional")
