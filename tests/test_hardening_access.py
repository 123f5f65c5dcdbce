"""Access control, table-driven: every role × every service function that takes a user,
every page of the app per role, and the sign-in rules (argon2 only, rate limit, disabled
users, session expiry).

Principals: annotator, lead, admin, a disabled user of each role, signed out (``None``)
and the command line's named :class:`SystemPrincipal`. A call counts as refused only when
the policy itself refused it (``policies.require`` raised), and as allowed only when it
succeeded: any other exception is a failure of the test, never a pass.
The list of guarded service functions is found by reading the source (every function in
``workflow``/``agreement``/``dataio``/``judge`` that calls ``require``), so a new guarded
function without a row here fails :func:`test_every_guarded_function_is_in_the_table`.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import hardening_support as H
import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from workflow_support import make_collection, make_user

from safereview.db.engine import session_scope
from safereview.db.models import Item, User, UserSession, utcnow
from safereview.workflow import auth, policies, throttle
from safereview.workflow.errors import AuthError, Forbidden, InvalidInput
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be

ROLES = ("annotator", "lead", "admin")
MIN_ROLE = {"annotator": {"annotator", "lead", "admin"}, "lead": {"lead", "admin"}, "admin": {"admin"}}
PRINCIPALS = (
    "annotator",
    "lead",
    "admin",
    "disabled-annotator",
    "disabled-lead",
    "disabled-admin",
    "signed-out",
    "system",
)
PEOPLE = ("annotator", "lead", "admin")


@dataclass(frozen=True)
class Guarded:
    name: str  # module.function
    minimum: str  # lowest role allowed (written here independently of workflow.policies)
    call: Callable[[Session, Any, dict[str, Any]], Any]
    decision: bool = False  # a lead's own decision (adjudication, error tag), stored under their id

    @property
    def personal(self) -> bool:
        """Someone's own work or decision: the system principal is refused it."""
        return self.minimum == "annotator" or self.decision


def _g(
    name: str, minimum: str, call: Callable[[Session, Any, dict[str, Any]], Any], *, decision: bool = False
) -> Guarded:
    return Guarded(name, minimum, call, decision)


def _table() -> list[Guarded]:
    from safereview.agreement import audit, calibration, consensus, gold
    from safereview.dataio.importers import import_file
    from safereview.judge.importing import import_verdicts
    from safereview.judge.runner import RunOptions, run_judge
    from safereview.workflow import annotations as an
    from safereview.workflow import collections as wcol
    from safereview.workflow import preferences as prefs
    from safereview.workflow import progress as wprog
    from safereview.workflow import queue as q

    return [
        _g("safereview.workflow.annotations.submit", "annotator", lambda s, u, c: an.submit(s, u, c["asg"], H_LABELS)),
        _g(
            "safereview.workflow.annotations.finalize",
            "annotator",
            lambda s, u, c: an.finalize(s, u, c["ann"], H_LABELS, action="confirm", expected_version=1),
        ),
        _g(
            "safereview.workflow.annotations.update",
            "annotator",
            lambda s, u, c: an.update(s, u, c["ann"], 1, flagged=True),
        ),
        _g("safereview.workflow.annotations.undo_last", "annotator", lambda s, u, c: an.undo_last(s, u)),
        _g(
            "safereview.workflow.preferences.set_preference",
            "annotator",
            lambda s, u, c: prefs.set_preference(s, u, "protect_media", False),
        ),
        _g("safereview.workflow.annotations.history", "annotator", lambda s, u, c: an.history(s, u)),
        _g("safereview.workflow.annotations.history_items", "annotator", lambda s, u, c: an.history_items(s, u)),
        _g(
            "safereview.workflow.annotations.visible_annotations",
            "annotator",
            lambda s, u, c: an.visible_annotations(s, u, c["item"]),
        ),
        _g(
            "safereview.workflow.annotations.verdicts_for",
            "annotator",
            lambda s, u, c: an.verdicts_for(s, u, c["item"], revealed=True),
        ),
        _g("safereview.workflow.annotations.events_for", "annotator", lambda s, u, c: an.events_for(s, u, c["ann"])),
        _g(
            "safereview.workflow.queue._next_in_session",
            "annotator",
            lambda s, u, c: q.next_item(s, u, q.QueueFilter(c["col"])),
        ),
        _g("safereview.workflow.queue.release", "annotator", lambda s, u, c: q.release(s, u, c["asg"])),
        _g("safereview.workflow.queue.skip", "annotator", lambda s, u, c: q.skip(s, u, c["asg"])),
        _g(
            "safereview.dataio.importers.import_file",
            "admin",
            lambda s, u, c: import_file(
                s.get_bind(), c["file"], collection="acl-import", taxonomy="vlsu", media_root=c["media"], actor=u
            ),
        ),
        _g(
            "safereview.judge.importing.import_verdicts",
            "admin",
            lambda s, u, c: import_verdicts(s, c["verdicts"], "generic", "acl", actor=u),
        ),
        _g(
            "safereview.judge.runner.run_judge",
            "admin",
            lambda s, u, c: run_judge(  # a dry run: requests are built, no server is called
                s.get_bind(),
                c["media"],
                RunOptions("vlsu", "http://127.0.0.1:9", "m", "acl", limit=1, dry_run=True, progress=False),
                actor=u,
            ),
        ),
        _g("safereview.workflow.progress.queue_status", "lead", lambda s, u, c: wprog.queue_status(s, u, c["col"])),
        _g(
            "safereview.workflow.progress.has_work_for",
            "annotator",
            lambda s, u, c: wprog.has_work_for(s, u, [c["col"]]),
        ),
        _g(
            "safereview.workflow.annotations.awaiting_reveal",
            "annotator",
            lambda s, u, c: an.awaiting_reveal(s, u, c["col"]),
        ),
        _g(
            "safereview.workflow.auth.set_disabled",
            "admin",
            lambda s, u, c: auth.set_disabled(s, "victim", False, actor=u),
        ),
        _g(
            "safereview.workflow.auth.reset_password",
            "admin",
            lambda s, u, c: auth.reset_password(s, "victim", "new-pass-123456", actor=u),
        ),
        _g(
            "safereview.workflow.auth.create_user",
            "admin",
            lambda s, u, c: auth.create_user(s, "newcomer", None, "annotator", actor=u),
        ),
        _g("safereview.workflow.auth.list_users", "admin", lambda s, u, c: auth.list_users(s, actor=u)),
        _g(
            "safereview.workflow.auth.set_role",
            "admin",
            lambda s, u, c: auth.set_role(s, "victim", "annotator", actor=u),
        ),
        _g(
            "safereview.workflow.collections.update_settings",
            "admin",
            lambda s, u, c: wcol.update_settings(s, c["col"], actor=u, blind=False),
        ),
        _g(
            "safereview.agreement.consensus.adjudication_queue",
            "lead",
            lambda s, u, c: consensus.adjudication_queue(s, u),
            decision=True,
        ),
        _g(
            "safereview.agreement.consensus.adjudicate",
            "lead",
            lambda s, u, c: consensus.adjudicate(s, u, c["item"], "joint", "safe", "x"),
            decision=True,
        ),
        _g("safereview.agreement.gold.create_snapshot", "lead", lambda s, u, c: gold.create_snapshot(s, u)),
        _g(
            "safereview.agreement.audit.tag_error",
            "lead",
            lambda s, u, c: audit.tag_error(s, u, c["item"], "joint", "j", "missed harm"),
            decision=True,
        ),
        _g("safereview.agreement.audit.error_tags", "lead", lambda s, u, c: audit.error_tags(s, u)),
        _g(
            "safereview.agreement.consensus.adjudication_context",
            "lead",
            lambda s, u, c: consensus.adjudication_context(s, u, c["item"], "joint"),
            decision=True,
        ),
        _g("safereview.agreement.gold.list_snapshots", "lead", lambda s, u, c: gold.list_snapshots(s, u)),
        _g(
            "safereview.agreement.calibration.list_calibrations",
            "lead",
            lambda s, u, c: calibration.list_calibrations(s, u, "j", "joint"),
        ),
        _g(
            "safereview.agreement.calibration.fit_calibration",
            "lead",
            lambda s, u, c: calibration.fit_calibration(s, u, "joint", min_n=5, folds=2),
        ),
        _g(
            "safereview.agreement.calibration.apply_calibration",
            "lead",
            lambda s, u, c: calibration.apply_calibration(s, u, c["cal"]),
        ),
    ]


H_LABELS = {"image": "safe", "text": "safe", "joint": "safe"}
GUARD_CALLS = {"require", "policy_require"}
PACKAGES = ("safereview.workflow", "safereview.agreement", "safereview.dataio", "safereview.judge")


def _guarded_in_source() -> set[str]:
    """module.function for every function whose body calls require(<its own user parameter>, ...)."""
    found: set[str] = set()
    for pkg in PACKAGES:
        root = Path(importlib.util.find_spec(pkg).origin).parent
        for path in sorted(root.rglob("*.py")):
            mod = ".".join((pkg, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
            tree = ast.parse(path.read_text())
            for fn in ast.walk(tree):
                if not isinstance(fn, ast.FunctionDef) or fn.name in GUARD_CALLS:
                    continue
                params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
                for node in ast.walk(fn):
                    if (
                        isinstance(node, ast.Call)
                        and node.args
                        and isinstance(node.args[0], ast.Name)
                        and node.args[0].id in params
                    ):
                        f = node.func
                        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                        if name in GUARD_CALLS:
                            found.add(f"{mod}.{fn.name}")
    return found


def test_every_guarded_function_is_in_the_table() -> None:
    in_source = _guarded_in_source()
    in_table = {g.name for g in _table()}
    assert in_source, "found no guarded functions: the scan is broken"
    assert in_source - in_table == set(), "guarded functions without an access-control row"
    assert in_table - in_source == set(), "rows for functions that no longer check a role"


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Users of every role (and disabled ones), judged items everyone has labelled, and for each
    person their own submitted annotation and their own open lease, so that every allowed call
    can succeed."""
    from safereview.agreement.calibration import fit_calibration
    from safereview.db.models import Verdict
    from safereview.workflow.annotations import submit
    from safereview.workflow.queue import QueueFilter, next_item

    cid = make_collection(engine, "acl", n_items=8, k=3, audit_share=0.0)
    users: dict[str, Any] = {"signed-out": None, "system": SYSTEM}
    for role in ROLES:
        users[role] = make_user(engine, f"u-{role}", role)
        users[f"disabled-{role}"] = make_user(engine, f"d-{role}", role)
        with session_scope(engine) as s:
            auth.set_disabled(s, f"d-{role}", True, actor=SYSTEM)
        users[f"disabled-{role}"].disabled = True
    other = make_user(engine, "other")
    make_user(engine, "victim")
    with session_scope(engine) as s:  # the judge's verdicts, with probabilities, on every item
        ids = s.exec(select(Item.id).where(Item.collection_id == cid).order_by(Item.id)).all()
        for n, item_id in enumerate(ids):
            p = (n + 0.5) / len(ids)
            s.add(
                Verdict(
                    item_id=item_id,
                    dimension="joint",
                    judge_id="j",
                    label="unsafe" if p > 0.5 else "safe",
                    probs={"safe": 1 - p, "borderline": 0.0, "unsafe": p},
                    probability=max(p, 1 - p),
                )
            )
    while (a := next_item(engine, other, QueueFilter(cid))) is not None:  # someone else labels every item
        with session_scope(engine) as s:
            submit(s, other, a.id, H_LABELS if a.item_id % 2 else {**H_LABELS, "joint": "unsafe"})
    ctx: dict[str, dict[str, Any]] = {}
    for who in PEOPLE:
        mine = next_item(engine, users[who], QueueFilter(cid))
        assert mine is not None
        with session_scope(engine) as s:
            ann_id = submit(s, users[who], mine.id, H_LABELS).id
        lease = next_item(engine, users[who], QueueFilter(cid))  # an open lease of their own
        assert lease is not None
        ctx[who] = {"col": cid, "item": mine.item_id, "ann": ann_id, "asg": lease.id}
    with session_scope(engine) as s:
        cal, _ = fit_calibration(s, SYSTEM, "joint", min_n=5, folds=2)
        cal_id = int(cal.id)
    one_item = tmp_path / "one.jsonl"
    one_item.write_text('{"id": "acl-1", "prompt": "a question", "response": "an answer"}\n', encoding="utf-8")
    verdict_file = tmp_path / "verdicts.jsonl"
    verdict_file.write_text('{"item_id": "acl-0", "dimension": "joint", "label": "safe", "judge_id": "imp"}\n')
    for c in ctx.values():
        c.update(cal=cal_id, file=one_item, media=tmp_path / "media", verdicts=verdict_file)
    yield {"users": users, "ctx": ctx}


def _refused_by_policy(outcome: BaseException | None) -> bool:
    """True only for the policy's own refusal: a Forbidden raised inside ``policies.require``."""
    if not isinstance(outcome, Forbidden) or outcome.__traceback__ is None:
        return False
    tb = outcome.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code is policies.require.__code__


def _matrix_problems(engine: sa.Engine, world: dict[str, Any]) -> tuple[int, list[str]]:
    checked = 0
    problems: list[str] = []
    for g in _table():
        for who in PRINCIPALS:
            user = world["users"][who]
            ctx = world["ctx"].get(who, world["ctx"]["annotator"])
            allowed = not g.personal if who == "system" else who in PEOPLE and user.role in MIN_ROLE[g.minimum]
            with Session(engine) as s:
                try:
                    g.call(s, user, ctx)
                    outcome: BaseException | None = None
                except Exception as exc:
                    outcome = exc
                finally:
                    s.rollback()
            checked += 1
            if allowed and outcome is not None:
                problems.append(f"{g.name}: {who} should succeed but got {outcome!r}")
            if not allowed and not _refused_by_policy(outcome):
                problems.append(f"{g.name}: {who} was not refused by the policy ({outcome!r})")
    return checked, problems


def test_every_role_against_every_guarded_function(engine: sa.Engine, world: dict[str, Any]) -> None:
    checked, problems = _matrix_problems(engine, world)
    assert problems == []
    H.tally(role_action_pairs_checked=checked)


def test_the_matrix_counts_only_the_policys_refusal(
    engine: sa.Engine, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal replaced by another exception, or a Forbidden raised outside the policy, fails it."""
    from safereview.agreement import audit, gold

    def other_error(user: Any, action: str) -> None:
        if not policies.can(user, action):
            raise InvalidInput("not allowed")

    def own_forbidden(user: Any, action: str) -> None:
        if not policies.can(user, action):
            raise Forbidden("not allowed, but not by the policy")

    monkeypatch.setattr(audit, "require", other_error)
    monkeypatch.setattr(gold, "require", own_forbidden)
    _, problems = _matrix_problems(engine, world)
    assert any(p.startswith("safereview.agreement.audit.tag_error: annotator was not refused") for p in problems)
    assert any(p.startswith("safereview.agreement.gold.create_snapshot: signed-out was not refused") for p in problems)


def test_annotators_cannot_read_others_labels_or_events(engine: sa.Engine, world: dict[str, Any]) -> None:
    from safereview.workflow.annotations import events_for, visible_annotations
    from safereview.workflow.errors import NotFound

    u, lead = world["users"], world["ctx"]["lead"]
    with Session(engine) as s:
        seen = visible_annotations(s, u["annotator"], lead["item"])
        assert all(a.user_id == u["annotator"].id for a in seen)
        with pytest.raises(NotFound):
            events_for(s, u["annotator"], lead["ann"])
        by_lead = visible_annotations(s, u["lead"], lead["item"])
        assert lead["ann"] in [a.id for a in by_lead] and len({a.user_id for a in by_lead}) >= 2
        assert len(events_for(s, u["admin"], lead["ann"])) == 1
    H.tally(role_action_pairs_checked=4)


def test_passwords_sessions_rate_limit_and_disabled_users(engine: sa.Engine) -> None:
    with session_scope(engine) as s:
        auth.create_user(s, "pw-user", "correct-horse-1", "annotator", actor=SYSTEM)
        auth.create_user(s, "pw-off", "correct-horse-2", "admin", actor=SYSTEM)
        auth.set_disabled(s, "pw-off", True, actor=SYSTEM)
    with engine.connect() as conn:
        hashes = dict(conn.execute(sa.text('SELECT username, password_hash FROM "user"')).all())
    for name, h in hashes.items():
        assert h.startswith("$argon2id$") and "correct-horse" not in h, name
    # disabled users cannot sign in, even with the right password (answered like a wrong one)
    with pytest.raises(AuthError, match="disabled"):
        auth.authenticate_and_record(engine, "pw-off", "correct-horse-2")
    # guesses back off: after the free ones, even the right password must wait
    for _ in range(throttle.PAIR.free + 1):
        with pytest.raises(AuthError):
            auth.authenticate_and_record(engine, "pw-user", "wrong-guess")
    with pytest.raises(AuthError, match="Too many"):
        auth.authenticate_and_record(engine, "pw-user", "correct-horse-1")
    # sessions: valid, then expired by moving its expiry into the past in the database
    with session_scope(engine) as s:
        user = s.exec(select(User).where(User.username == "pw-user")).one()
        token = auth.start_session(s, user)
    with Session(engine) as s:
        assert auth.user_for_token(s, token) is not None
        assert auth.user_for_token(s, token, now=utcnow() + timedelta(hours=13)) is None
    with session_scope(engine) as s:
        for row in s.exec(select(UserSession)):
            row.expires_at = utcnow() - timedelta(seconds=1)
            s.add(row)
    with Session(engine) as s:
        assert auth.user_for_token(s, token) is None
    H.tally(role_action_pairs_checked=4, faults_injected=throttle.PAIR.free + 2)


# ---------------------------------------------------------------------------------------
# Pages (AppTest), SQLite only: page registration does not depend on the back end
# ---------------------------------------------------------------------------------------


@pytest.fixture
def app_fx(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from test_app_pages import app_world

    yield from app_world(sqlite_url, tmp_path, monkeypatch)


@pytest.mark.slow
def test_pages_registered_per_role_and_unregistered_ones_refused(app_fx: Any) -> None:
    from test_app_pages import new_app, sign_in

    from safereview.review_app import nav

    pages = list(nav.PAGES)
    assert len(pages) >= 8 and all((nav.VIEWS_DIR / p.file).is_file() for p in pages), "a registered page has no file"
    checked = 0
    for username, role in (("ann1", "annotator"), ("lead", "lead"), ("admin", "admin")):
        at = sign_in(username)
        for p in pages:
            allowed = role in MIN_ROLE[_minimum(p.action)]
            if allowed:
                at.switch_page(f"views/{p.file}").run()
                assert not at.exception, (username, p.file, [e.message for e in at.exception])
            else:
                with pytest.raises(ValueError):
                    at.switch_page(f"views/{p.file}").run()
            checked += 1
    anon = new_app()  # signed out: only the sign-in form, no page can be opened
    for p in pages:
        with pytest.raises(ValueError):
            anon.switch_page(f"views/{p.file}").run()
        checked += 1
    H.tally(role_action_pairs_checked=checked)


def _minimum(action: str) -> str:
    lead = {
        "view_others_labels",
        "adjudicate",
        "audit",
        "view_agreement",
        "calibrate",
        "export",
        "tag_errors",
        "view_queue_status",
    }
    admin = {"import", "manage_users", "manage_collections"}
    return "admin" if action in admin else "lead" if action in lead else "annotator"


@pytest.mark.slow
def test_disabled_user_cannot_sign_in_to_the_app(app_fx: Any) -> None:
    import app_support as A
    from test_app_pages import all_text, new_app

    from safereview.db.engine import make_engine

    eng = make_engine(app_fx.db_url)
    with session_scope(eng) as s:
        auth.set_disabled(s, "ann2", True, actor=SYSTEM)
    at = new_app()
    at.text_input(key="signin_username").input("ann2")
    at.text_input(key="signin_password").input(A.PASSWORDS["ann2"])
    next(b for b in at.button if b.label == "Sign in").click().run()
    assert "disabled" in all_text(at).lower()
    assert at.text_input(key="signin_username") is not None  # still on the sign-in form
    assert not [b for b in at.button if b.key == "rv_submit"]
    H.tally(role_action_pairs_checked=1)
