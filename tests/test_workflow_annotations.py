"""Annotations: blind flow, override, optimistic concurrency, undo, visibility, event replay."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from workflow_support import VLSU_SAFE, make_collection, make_user

from safereview.db.engine import session_scope
from safereview.db.models import Annotation, AnnotationEvent, Assignment, JudgeConfig, Verdict
from safereview.workflow import annotations as ann_mod
from safereview.workflow.annotations import (
    finalize,
    history,
    replay_events,
    stored_state,
    submit,
    undo_last,
    update,
    verdicts_for,
    visible_annotations,
)
from safereview.workflow.collections import update_settings
from safereview.workflow.errors import Conflict, Forbidden, InvalidInput, LeaseLost, NotFound
from safereview.workflow.queue import QueueFilter, next_item

UNSAFE = {"image": "safe", "text": "safe", "joint": "unsafe"}


def _setup(engine: sa.Engine, *, blind: bool = True, k: int = 2):  # type: ignore[no-untyped-def]
    cid = make_collection(engine, n_items=3, k=k, audit_share=0.0, blind=blind, priorities=[0.9, 0.5, 0.1])
    with session_scope(engine) as s:
        s.add(JudgeConfig(id="j1", protocol="vlsu"))
    return cid


def _lease(engine: sa.Engine, user, cid: int) -> Assignment:  # type: ignore[no-untyped-def]
    a = next_item(engine, user, QueueFilter(cid))
    assert a is not None
    return a


def _verdicts(engine: sa.Engine, item_id: int) -> None:
    with session_scope(engine) as s:
        for dim, lab in (("image", "safe"), ("text", "safe"), ("joint", "unsafe")):
            s.add(Verdict(item_id=item_id, dimension=dim, judge_id="j1", label=lab, probability=0.6))


def test_blind_flow_keeps_blind_and_final_labels(engine: sa.Engine) -> None:
    cid = _setup(engine)
    u = make_user(engine, "ann")
    a = _lease(engine, u, cid)
    _verdicts(engine, a.item_id)
    with Session(engine) as s:
        assert verdicts_for(s, u, a.item_id, revealed=True) == []  # still blind while leased
    with session_scope(engine) as s:
        ann = submit(s, u, a.id, VLSU_SAFE, categories=["C1"], rationale="looks fine", time_spent_s=12.5)
        assert ann.blind_labels == VLSU_SAFE and ann.labels == VLSU_SAFE and ann.version == 1
        assert s.get(Assignment, a.id).status == "done"  # type: ignore[union-attr]
    with Session(engine) as s:
        assert verdicts_for(s, u, a.item_id, revealed=False) == []
        shown = verdicts_for(s, u, a.item_id, revealed=True)
        assert {v.dimension: v.label for v in shown} == UNSAFE
    # changing a blind label after seeing the judge needs a reason (the collection's default)
    changed = "you changed joint: safe → unsafe after seeing the judge"
    with pytest.raises(InvalidInput, match=changed), session_scope(engine) as s:
        finalize(s, u, ann.id, UNSAFE, action="override", expected_version=1, judge_id="j1")  # type: ignore[arg-type]
    with session_scope(engine) as s:
        fin = finalize(
            s,
            u,
            ann.id,  # type: ignore[arg-type]
            UNSAFE,
            action="override",
            expected_version=1,
            judge_id="j1",
            rationale="looks fine at first; the caption makes it a threat",
            categories=["C1", "C9"],
            flagged=True,
            reveal_reason="missed the caption's threat",
        )
    assert fin.labels == UNSAFE and fin.blind_labels == VLSU_SAFE and fin.flagged
    assert fin.verdict_action == "override" and fin.verdict_judge_id == "j1" and fin.version == 2
    assert fin.reveal_reason == "missed the caption's threat" and fin.categories == ["C1", "C9"]
    with Session(engine) as s:
        events = list(s.exec(select(AnnotationEvent).order_by(AnnotationEvent.id)))
        assert [(e.action, e.recorded_by) for e in events] == [("create", "ann"), ("reveal", "ann")]
        # the log keeps both states: blind labels and first rationale, final labels and the reason
        assert (events[0].after["labels"], events[0].after["rationale"]) == (VLSU_SAFE, "looks fine")
        assert events[1].after["labels"] == UNSAFE and events[1].after["reveal_reason"].startswith("missed")
        assert replay_events(s) == stored_state(s)


def test_a_change_after_the_reveal_may_be_left_unexplained_where_the_collection_says_so(engine: sa.Engine) -> None:
    cid = _setup(engine)
    with session_scope(engine) as s:
        update_settings(s, cid, actor=make_user(engine, "lead", "lead"), reveal_reason="optional")
    u = make_user(engine, "ann")
    a = _lease(engine, u, cid)
    _verdicts(engine, a.item_id)
    with session_scope(engine) as s:
        ann = submit(s, u, a.id, VLSU_SAFE)
    with session_scope(engine) as s:
        fin = finalize(s, u, ann.id, UNSAFE, expected_version=1, judge_id="j1")  # type: ignore[arg-type]
    assert fin.labels == UNSAFE and fin.reveal_reason == ""
    with pytest.raises(Forbidden), session_scope(engine) as s:  # a lead sets review defaults, not the design
        update_settings(s, cid, actor=make_user(engine, "lead2", "lead"), overlap_target=3)


def test_open_collection_records_action_at_submit(engine: sa.Engine) -> None:
    cid = _setup(engine, blind=False)
    u = make_user(engine, "ann")
    a = _lease(engine, u, cid)
    _verdicts(engine, a.item_id)
    with Session(engine) as s:
        assert len(verdicts_for(s, u, a.item_id, revealed=False)) == 3  # open: visible while reviewing
    with session_scope(engine) as s:
        ann = submit(s, u, a.id, UNSAFE, verdict_action="confirm", verdict_judge_id="j1")
    assert ann.blind_labels is None and ann.verdict_action == "confirm"
    blind_cid = make_collection(engine, "blind", n_items=1, blind=True)
    b = _lease(engine, u, blind_cid)
    with pytest.raises(InvalidInput), session_scope(engine) as s:
        submit(s, u, b.id, VLSU_SAFE, verdict_action="confirm")


@pytest.mark.parametrize(
    ("labels", "cats", "match"),
    [
        ({"image": "safe", "text": "safe"}, [], "joint is required"),
        ({**VLSU_SAFE, "joint": "fine"}, [], "joint must be one of"),
        ({**VLSU_SAFE, "extra": "safe"}, [], "unknown dimension"),
        (VLSU_SAFE, ["C99: nope"], "not in the taxonomy"),
        ("safe", [], "expected a mapping"),
    ],
)
def test_labels_are_validated_against_the_taxonomy(engine: sa.Engine, labels, cats, match: str) -> None:  # type: ignore[no-untyped-def]
    cid = _setup(engine)
    u = make_user(engine, "ann")
    a = _lease(engine, u, cid)
    with pytest.raises(InvalidInput, match=match), session_scope(engine) as s:
        submit(s, u, a.id, labels, categories=cats)
    with Session(engine) as s:
        assert s.get(Assignment, a.id).status == "leased"  # type: ignore[union-attr]  # nothing half-done


def test_only_own_active_lease_can_be_submitted(engine: sa.Engine) -> None:
    cid = _setup(engine)
    u, v = make_user(engine, "u"), make_user(engine, "v")
    a = _lease(engine, u, cid)
    with pytest.raises(NotFound), session_scope(engine) as s:
        submit(s, v, a.id, VLSU_SAFE)
    with session_scope(engine) as s:
        submit(s, u, a.id, VLSU_SAFE)
    with pytest.raises((LeaseLost, Conflict)), session_scope(engine) as s:
        submit(s, u, a.id, VLSU_SAFE)  # twice


def test_optimistic_concurrency_conflict(engine: sa.Engine) -> None:
    cid = _setup(engine)
    u = make_user(engine, "u")
    a = _lease(engine, u, cid)
    with session_scope(engine) as s:
        ann_id = submit(s, u, a.id, VLSU_SAFE).id
    with session_scope(engine) as s:  # tab 1 edits version 1
        assert update(s, u, ann_id, 1, rationale="tab one").version == 2  # type: ignore[arg-type]
    with pytest.raises(Conflict), session_scope(engine) as s:  # tab 2 still holds version 1
        update(s, u, ann_id, 1, labels=UNSAFE)  # type: ignore[arg-type]
    with Session(engine) as s:
        row = s.get(Annotation, ann_id)
        assert row.rationale == "tab one" and row.labels == VLSU_SAFE and row.version == 2  # type: ignore[union-attr]
    with pytest.raises(InvalidInput), session_scope(engine) as s:
        update(s, u, ann_id, 2, blind_labels=UNSAFE)  # type: ignore[arg-type]  # the blind record is fixed
    other = make_user(engine, "other")
    with pytest.raises(NotFound), session_scope(engine) as s:
        update(s, other, ann_id, 2, rationale="not mine")  # type: ignore[arg-type]


def test_conditional_update_loses_a_real_race(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that lands between read and UPDATE is detected by the version condition."""
    cid = _setup(engine)
    u = make_user(engine, "u")
    a = _lease(engine, u, cid)
    with session_scope(engine) as s:
        ann_id = submit(s, u, a.id, VLSU_SAFE).id
    real_snapshot = ann_mod.snapshot
    fired = []

    def sneaky_snapshot(ann):  # type: ignore[no-untyped-def]
        if not fired:  # another replica commits an edit right after we read version 1
            fired.append(1)
            with session_scope(engine) as other:
                update(other, u, ann_id, 1, rationale="other replica")  # type: ignore[arg-type]
        return real_snapshot(ann)

    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite's BEGIN IMMEDIATE serialises the writers, so this interleaving cannot happen")
    monkeypatch.setattr(ann_mod, "snapshot", sneaky_snapshot)
    with pytest.raises(Conflict), session_scope(engine) as s:
        update(s, u, ann_id, 1, rationale="mine")  # type: ignore[arg-type]
    with Session(engine) as s:
        assert s.get(Annotation, ann_id).rationale == "other replica"  # type: ignore[union-attr]


def test_undo_reverts_most_recent_change_and_keeps_events(engine: sa.Engine) -> None:
    cid = _setup(engine)
    u = make_user(engine, "u")
    a = _lease(engine, u, cid)
    with session_scope(engine) as s:
        ann_id = submit(s, u, a.id, VLSU_SAFE).id
    assert ann_id is not None
    with session_scope(engine) as s:
        assert undo_last(s, u) is None  # a submission is edited, never withdrawn
        finalize(s, u, ann_id, UNSAFE, action="override", expected_version=1, reveal_reason="the caption")
        update(s, u, ann_id, 2, rationale="because", flagged=True)
    with session_scope(engine) as s:
        back = undo_last(s, u)
        assert back is not None and back.rationale == "" and not back.flagged and back.labels == UNSAFE
    with session_scope(engine) as s:
        back = undo_last(s, u)
        assert back is not None and back.labels == VLSU_SAFE and back.verdict_action is None
        assert back.blind_labels == VLSU_SAFE and back.version == 5
        assert undo_last(s, u) is None
    with Session(engine) as s:
        events = s.exec(select(AnnotationEvent).order_by(AnnotationEvent.id)).all()
        assert [e.action for e in events] == ["create", "reveal", "update", "undo", "undo"]
        assert events[3].after["undo_of"] == events[2].id and events[4].after["undo_of"] == events[1].id  # type: ignore[index]
        assert replay_events(s) == stored_state(s)


def test_event_log_replays_to_the_stored_state_after_a_mixed_session(engine: sa.Engine) -> None:
    cid = _setup(engine, k=2)
    users = [make_user(engine, n) for n in ("a", "b")]
    ids = []
    for u in users:
        for _ in range(3):
            a = _lease(engine, u, cid)
            with session_scope(engine) as s:
                ids.append((u, submit(s, u, a.id, VLSU_SAFE, categories=["C2"]).id))
    for n, (u, ann_id) in enumerate(ids):
        with session_scope(engine) as s:
            if n % 2:
                finalize(s, u, ann_id, UNSAFE, action="override", expected_version=1, reveal_reason="r")
            else:
                finalize(s, u, ann_id, VLSU_SAFE, action="confirm", expected_version=1)
                update(s, u, ann_id, 2, categories=["C3", "C4"], rationale="r")
    with session_scope(engine) as s:
        undo_last(s, users[0])
    with Session(engine) as s:
        assert replay_events(s) == stored_state(s)
        assert len(replay_events(s)) == 6


def test_visibility_annotators_see_own_leads_see_all(engine: sa.Engine) -> None:
    cid = _setup(engine, k=2)
    u, v = make_user(engine, "u"), make_user(engine, "v")
    lead = make_user(engine, "lead", "lead")
    outsider = make_user(engine, "w")
    a = _lease(engine, u, cid)
    b = _lease(engine, v, cid)
    assert a.item_id == b.item_id
    _verdicts(engine, a.item_id)
    with session_scope(engine) as s:
        submit(s, u, a.id, VLSU_SAFE)
        submit(s, v, b.id, UNSAFE)
    with Session(engine) as s:
        assert [x.user_id for x in visible_annotations(s, u, a.item_id)] == [u.id]
        assert sorted(x.user_id for x in visible_annotations(s, lead, a.item_id)) == sorted([u.id, v.id])
        assert len(verdicts_for(s, lead, a.item_id, revealed=False)) == 3  # auditing, not reviewing
        assert verdicts_for(s, outsider, a.item_id, revealed=True) == []  # never assigned
        assert [h.id for h in history(s, u)] == [x.id for x in visible_annotations(s, u, a.item_id)]
        assert history(s, outsider) == []


def test_submit_and_next_is_one_transaction(engine: sa.Engine) -> None:
    from safereview.workflow.annotations import submit_and_next

    cid = _setup(engine, k=1)
    u = make_user(engine, "u")
    a = _lease(engine, u, cid)
    ann, nxt = submit_and_next(engine, u, a.id, VLSU_SAFE, QueueFilter(cid), rationale="r")  # type: ignore[arg-type]
    assert ann.labels == VLSU_SAFE and ann.rationale == "r"
    assert nxt is not None and nxt.item_id != a.item_id and nxt.status == "leased"
    # A failing submit rolls back the pull too: no new lease appears.
    with pytest.raises(InvalidInput):
        submit_and_next(engine, u, nxt.id, {"joint": "safe"}, QueueFilter(cid))  # type: ignore[arg-type]
    with Session(engine) as s:
        leased = s.exec(select(Assignment).where(Assignment.status == "leased")).all()
        assert [x.id for x in leased] == [nxt.id]
        assert replay_events(s) == stored_state(s)


def test_finalize_and_next_commits_the_reveal_and_claims_in_one_transaction(engine: sa.Engine) -> None:
    from safereview.workflow.annotations import finalize_and_next

    cid = _setup(engine, k=1)
    u = make_user(engine, "u")
    a = _lease(engine, u, cid)
    _verdicts(engine, a.item_id)
    with session_scope(engine) as s:
        ann = submit(s, u, a.id, VLSU_SAFE)
    # a change without the reason the collection asks for: the reveal fails and no item is claimed
    with pytest.raises(InvalidInput, match="after seeing the judge"):
        finalize_and_next(engine, u, ann.id, UNSAFE, QueueFilter(cid), expected_version=1, judge_id="j1")  # type: ignore[arg-type]
    with Session(engine) as s:
        assert s.exec(select(Assignment).where(Assignment.status == "leased")).all() == []
        assert s.get(Annotation, ann.id).version == 1  # type: ignore[union-attr]
    fin, nxt = finalize_and_next(
        engine,
        u,
        ann.id,  # type: ignore[arg-type]
        UNSAFE,
        QueueFilter(cid),
        expected_version=1,
        judge_id="j1",
        reveal_reason="the caption",
    )
    assert fin.labels == UNSAFE and fin.blind_labels == VLSU_SAFE and fin.verdict_action == "confirm"  # as the judge
    assert nxt is not None and nxt.item_id != a.item_id and nxt.status == "leased"
    with Session(engine) as s:
        assert replay_events(s) == stored_state(s)


def test_lead_who_released_a_blind_item_stays_blind(engine: sa.Engine) -> None:
    from safereview.workflow.queue import release

    cid = _setup(engine, k=1)
    lead = make_user(engine, "lead", "lead")
    a = _lease(engine, lead, cid)
    _verdicts(engine, a.item_id)
    with Session(engine) as s:
        assert verdicts_for(s, lead, a.item_id, revealed=True) == []
    with session_scope(engine) as s:
        release(s, lead, a.id)
    with Session(engine) as s:  # the item may come back to this lead: still blind
        assert verdicts_for(s, lead, a.item_id, revealed=True) == []
    other_lead = make_user(engine, "lead2", "lead")
    with Session(engine) as s:  # a lead who never held it (audit) sees the verdicts
        assert len(verdicts_for(s, other_lead, a.item_id, revealed=False)) == 3


@pytest.mark.parametrize(("labels", "expected"), [(UNSAFE, "confirm"), (VLSU_SAFE, "override")])
def test_the_service_decides_confirm_or_override_from_the_stored_verdict(
    engine: sa.Engine, labels: dict[str, str], expected: str
) -> None:
    """Pages name the judge whose verdict was shown; the rule runs here, on stored labels."""
    for blind in (True, False):
        cid = make_collection(engine, f"rule-{blind}", n_items=1, k=1, audit_share=0.0, blind=blind)
        u = make_user(engine, f"rule-{blind}")
        a = _lease(engine, u, cid)
        _verdicts(engine, a.item_id)
        with session_scope(engine) as s:
            if blind:
                first = submit(s, u, a.id, VLSU_SAFE)
                ann = finalize(s, u, first.id, labels, expected_version=1, judge_id="j1", reveal_reason="why")  # type: ignore[arg-type]
            else:
                ann = submit(s, u, a.id, labels, verdict_judge_id="j1")
            assert (ann.verdict_action, ann.verdict_judge_id) == (expected, "j1")
    assert ann_mod.verdict_action({"joint": "unsafe"}, {}) == "confirm"  # nothing to disagree with
    with session_scope(engine) as s, pytest.raises(InvalidInput, match="action"):
        finalize(s, u, ann.id, labels, expected_version=ann.version)  # neither an action nor a judge


def test_a_submission_left_at_the_reveal_step_is_resumed_and_not_counted_as_done(engine: sa.Engine) -> None:
    from safereview.workflow.annotations import awaiting_reveal
    from safereview.workflow.progress import progress, queue_status

    cid = _setup(engine)
    u, lead = make_user(engine, "ann"), make_user(engine, "lead", "lead")
    a = _lease(engine, u, cid)
    _verdicts(engine, a.item_id)
    with session_scope(engine) as s:
        ann = submit(s, u, a.id, VLSU_SAFE)  # ... and the tab closes before confirm or override
    with Session(engine) as s:
        assert awaiting_reveal(s, u, cid).id == ann.id  # type: ignore[union-attr]
        p = progress(s, u, cid, max_age_s=0)
        assert (p.mine_done, p.mine_awaiting) == (0, 1)
        assert queue_status(s, lead, cid)["per_user"]["ann"] == {"done": 0, "not confirmed": 1}
    with session_scope(engine) as s:
        finalize(s, u, ann.id, VLSU_SAFE, expected_version=1, judge_id="j1")  # type: ignore[arg-type]
    with Session(engine) as s:
        assert awaiting_reveal(s, u, cid) is None
        assert progress(s, u, cid, max_age_s=0).mine_done == 1
