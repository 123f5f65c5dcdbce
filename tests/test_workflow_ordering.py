"""Borderline scores: each component moves the score the right way; refresh writes them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from workflow_support import make_collection

from safereview.db.engine import session_scope
from safereview.db.models import Item, JudgeConfig, Verdict
from safereview.db.taxonomy import preset, unsafe_probability
from safereview.workflow.ordering import borderline_score, boundary_closeness, refresh_priorities

UNI = preset("uni-safebench")
VLSU = preset("vlsu")


def v(
    dim: str,
    label: str | None,
    *,
    p: float | None = None,
    probs: dict | None = None,
    judge: str = "j1",
    status: str = "ok",
) -> dict:
    return {"dimension": dim, "label": label, "probability": p, "probs": probs, "judge_id": judge, "status": status}


def test_no_verdicts_scores_zero() -> None:
    assert borderline_score([], UNI) == 0.0


@pytest.mark.parametrize(("p", "expected"), [(0.5, 1.0), (0.0, 0.0), (1.0, 0.0), (0.75, 0.5), (0.9, 0.2)])
def test_boundary_closeness(p: float, expected: float) -> None:
    assert boundary_closeness(p) == pytest.approx(expected)


def test_unsafe_probability_from_label_probability_and_probs() -> None:
    unsafe = {"unsafe"}

    def p_of(verdict: dict) -> float | None:
        return unsafe_probability(verdict["label"], verdict.get("probability"), verdict.get("probs"), unsafe)

    assert p_of(v("intrinsic", "unsafe", p=0.8)) == pytest.approx(0.8)
    assert p_of(v("intrinsic", "safe", p=0.8)) == pytest.approx(0.2)
    assert p_of(v("joint", "safe", probs={"safe": 0.2, "borderline": 0.3, "unsafe": 0.5})) == pytest.approx(0.5)
    assert p_of(v("joint", "safe", probs='{"safe": 0.2, "unsafe": 0.6}')) == pytest.approx(0.75)  # JSON, normalised
    assert p_of(v("joint", "safe")) is None
    assert unsafe_probability("safe", float("nan"), None, unsafe) is None


def test_confident_verdict_ranks_below_uncertain_one() -> None:
    sure = borderline_score([v("contextual", "unsafe", p=0.99), v("intrinsic", "unsafe", p=0.98)], UNI)
    unsure = borderline_score([v("contextual", "unsafe", p=0.55), v("intrinsic", "unsafe", p=0.98)], UNI)
    assert sure < unsure
    assert unsure - sure == pytest.approx(boundary_closeness(0.55) - boundary_closeness(0.98))


def test_contextual_intrinsic_mismatch_adds_a_point() -> None:
    agree = borderline_score([v("contextual", "unsafe"), v("intrinsic", "unsafe")], UNI)
    mismatch = borderline_score([v("contextual", "unsafe"), v("intrinsic", "safe")], UNI)
    refusal_safe = borderline_score([v("contextual", "refusal"), v("intrinsic", "safe")], UNI)
    safe_unsafe = borderline_score([v("contextual", "safe"), v("intrinsic", "unsafe")], UNI)
    assert agree == 0.0 and refusal_safe == 0.0
    assert mismatch == pytest.approx(1.0) and safe_unsafe == pytest.approx(1.0)


def test_judges_disagreeing_adds_a_point() -> None:
    one = borderline_score([v("intrinsic", "unsafe", judge="a"), v("intrinsic", "unsafe", judge="b")], UNI)
    two = borderline_score([v("intrinsic", "unsafe", judge="a"), v("intrinsic", "safe", judge="b")], UNI)
    assert one == 0.0 and two == pytest.approx(1.0)


def test_vlsu_compositional_and_borderline() -> None:
    plain_safe = borderline_score([v("image", "safe"), v("text", "safe"), v("joint", "safe")], VLSU)
    compositional = borderline_score([v("image", "safe"), v("text", "safe"), v("joint", "unsafe")], VLSU)
    comp_borderline = borderline_score([v("image", "safe"), v("text", "safe"), v("joint", "borderline")], VLSU)
    obvious = borderline_score([v("image", "unsafe"), v("text", "safe"), v("joint", "unsafe")], VLSU)
    any_borderline = borderline_score([v("image", "borderline"), v("text", "safe"), v("joint", "safe")], VLSU)
    assert plain_safe == 0.0 and obvious == 0.0
    assert compositional == pytest.approx(1.0)
    assert comp_borderline == pytest.approx(1.5)
    assert any_borderline == pytest.approx(0.5)


def test_unparseable_verdict_adds_weight() -> None:
    assert borderline_score([v("joint", None, status="unparseable")], VLSU) > 0
    assert borderline_score([v("joint", "safe", status="error")], VLSU) > 0


def test_refresh_priorities_writes_scores_and_counts_changes(engine: sa.Engine) -> None:
    cid = make_collection(engine, "ord", taxonomy="vlsu", n_items=4, priorities=[0.0] * 4)
    with session_scope(engine) as s:
        s.add(JudgeConfig(id="j1", protocol="vlsu"))
        items = s.exec(select(Item).where(Item.collection_id == cid).order_by(Item.id)).all()
        ids = [it.id for it in items]
        grades = [("safe", "safe", "unsafe"), ("unsafe", "safe", "unsafe"), ("safe", "safe", "safe")]
        for item_id, (img, txt, joint) in zip(ids, grades, strict=False):
            for dim, lab in (("image", img), ("text", txt), ("joint", joint)):
                s.add(Verdict(item_id=item_id, dimension=dim, judge_id="j1", label=lab))
    with session_scope(engine) as s:
        assert refresh_priorities(s, cid) == 1  # only the compositional item changed from 0
    with session_scope(engine) as s:
        assert refresh_priorities(s, cid) == 0  # idempotent
        s.add(Verdict(item_id=ids[3], dimension="joint", judge_id="j1", label=None, status="unparseable"))
    with session_scope(engine) as s:
        assert refresh_priorities(s, cid) == 1
    with Session(engine) as s:
        pr = [s.get(Item, i).priority for i in ids]  # type: ignore[union-attr]
    assert pr[0] == pytest.approx(1.0) and pr[1] == 0.0 and pr[2] == 0.0 and pr[3] > 0


def test_refresh_priorities_spans_several_chunks(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import safereview.workflow.ordering as ordering

    monkeypatch.setattr(ordering, "CHUNK_IDS", 7)
    cid = make_collection(
        engine, "chunks", taxonomy="uni-safebench", n_items=30, priorities=[0.0] * 30, task_types=("dual-unsafe",)
    )
    with session_scope(engine) as s:
        s.add(JudgeConfig(id="j1", protocol="uni-judger"))
        ids = s.exec(select(Item.id).where(Item.collection_id == cid).order_by(Item.id)).all()
        for n, item_id in enumerate(ids):
            s.add(
                Verdict(
                    item_id=item_id, dimension="contextual", judge_id="j1", label="unsafe" if n % 3 == 0 else "safe"
                )
            )
            s.add(Verdict(item_id=item_id, dimension="intrinsic", judge_id="j1", label="safe"))
    with session_scope(engine) as s:
        assert refresh_priorities(s, cid) == 10
    with Session(engine) as s:
        got = [s.get(Item, i).priority for i in ids]  # type: ignore[union-attr]
    assert got == [1.0 if n % 3 == 0 else 0.0 for n in range(30)]


@pytest.mark.parametrize("touched", ["scattered", "dense"])
def test_refresh_priorities_of_touched_items_only(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, touched: str
) -> None:
    """After an import or a judge run only the items it touched are re-scored (both look-up paths)."""
    import safereview.workflow.ordering as ordering

    monkeypatch.setattr(ordering, "IN_CHUNK", 2)  # several IN-list chunks
    monkeypatch.setattr(ordering, "CHUNK_IDS", 3)  # several ranges
    cid = make_collection(
        engine, "touched", taxonomy="uni-safebench", n_items=12, priorities=[0.0] * 12, task_types=("dual-unsafe",)
    )
    with session_scope(engine) as s:
        s.add(JudgeConfig(id="j1", protocol="uni-judger"))
        ids = s.exec(select(Item.id).where(Item.collection_id == cid).order_by(Item.id)).all()
        for item_id in ids:  # contextual unsafe vs intrinsic safe: every item would score 1.0
            s.add(Verdict(item_id=item_id, dimension="contextual", judge_id="j1", label="unsafe"))
            s.add(Verdict(item_id=item_id, dimension="intrinsic", judge_id="j1", label="safe"))
    chosen = [ids[1], ids[6], ids[10]] if touched == "scattered" else ids[3:9]
    with session_scope(engine) as s:
        assert refresh_priorities(s, cid, chosen) == len(chosen)
        assert refresh_priorities(s, cid, []) == 0
    with Session(engine) as s:
        got = {i: s.get(Item, i).priority for i in ids}  # type: ignore[union-attr]
    assert [got[i] for i in ids] == [1.0 if i in chosen else 0.0 for i in ids]
    with session_scope(engine) as s:
        assert refresh_priorities(s, cid) == len(ids) - len(chosen)  # a full pass finds the rest
