"""Judge audit: unbiased inverse-probability estimates, blocking rates, compositional errors, tags."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from agreement_support import inclusion_in_order, make_user, write_audit, write_verdicts
from sqlmodel import Session

from safereview.agreement.audit import audit, compositional_error, error_tags, hajek, tag_error
from safereview.db.collections import ensure_collection
from safereview.db.models import Annotation, Item, User
from safereview.workflow.errors import Forbidden


def _simulate(seed: int) -> tuple[float, dict, float]:
    """A population reviewed borderline-first plus a random audit stratum with unequal probabilities."""
    rng = np.random.default_rng(seed)
    n = 4000
    score = rng.random(n)  # borderline score: high = hard item
    correct = rng.random(n) > 0.05 + 0.4 * score  # the judge errs more on borderline items
    truth = correct.mean()
    priority = score >= np.quantile(score, 0.85)  # reviewed first, with certainty
    pi = np.where(score < 0.5, 0.03, 0.09)
    audit_in = rng.random(n) < pi
    est = hajek(correct[audit_in], 1 / pi[audit_in])
    reviewed = priority | audit_in
    naive = correct[reviewed].mean()
    return truth, est, naive


def test_ipw_interval_covers_truth_at_nominal_rate_and_naive_is_biased() -> None:
    covered, errors, naive_errors = 0, [], []
    runs = 400
    for seed in range(runs):
        truth, est, naive = _simulate(seed)
        covered += est["ci_low"] <= truth <= est["ci_high"]
        errors.append(est["value"] - truth)
        naive_errors.append(naive - truth)
    coverage = covered / runs
    assert 0.92 <= coverage <= 0.98, coverage
    assert abs(np.mean(errors)) < 0.004  # unbiased
    assert np.mean(naive_errors) < -0.05  # prioritised review makes the judge look worse


def test_too_few_items_gives_a_message_not_a_number() -> None:
    res = hajek(np.array([1, 0, 1]), np.ones(3), min_n=20)
    assert res["value"] is None and res["undefined_reason"] == "too few audit items (n=3 < 20)"


def test_hajek_matches_hand_computation() -> None:
    y = np.array([1, 0, 1, 1])
    w = np.array([1.0, 3.0, 2.0, 2.0])
    res = hajek(y, w, min_n=2)
    assert res["value"] == pytest.approx(5 / 8)
    assert res["naive"] == pytest.approx(0.75)
    assert 0 <= res["ci_low"] < 5 / 8 < res["ci_high"] <= 1


def _vlsu_scene(engine: sa.Engine) -> list[int]:
    """40 VLSU items, two agreeing annotators; items 0-29 drawn into the audit stratum."""
    with Session(engine) as s:
        # audit share 1 and k = 1: each pull's q is its sampling_prob and fills the item it draws
        col = ensure_collection(s, "audit-vlsu", "vlsu", audit_share=1.0, overlap_target=1)
        users = [User(username=f"p{k}", password_hash="!x") for k in range(2)]
        s.add_all(users)
        s.flush()
        ids = []
        for i in range(40):
            joint = "unsafe" if i < 15 or i >= 30 else "safe"
            item = Item(collection_id=col.id, external_id=f"v{i}", content_hash="x", task_type=f"t{i % 2}")
            s.add(item)
            s.flush()
            ids.append(int(item.id))  # type: ignore[arg-type]
            for u in users:
                s.add(
                    Annotation(
                        item_id=item.id, user_id=u.id, labels={"image": "safe", "text": "borderline", "joint": joint}
                    )
                )
        s.commit()
    human_joint = ["unsafe" if i < 15 or i >= 30 else "safe" for i in range(40)]
    judge_joint = list(human_joint)
    for i in (0, 1, 2):
        judge_joint[i] = "safe"  # lets unsafe through
    for i in range(15, 20):
        judge_joint[i] = "unsafe"  # blocks safe content
    for i in range(30, 40):
        judge_joint[i] = "safe"  # wrong on every priority-only item
    write_verdicts(engine, ids, "joint", judge_joint, "j")  # type: ignore[arg-type]
    write_verdicts(engine, ids, "image", ["safe" if i < 20 or i >= 30 else "unsafe" for i in range(40)], "j")
    write_verdicts(engine, ids, "text", ["borderline"] * 40, "j")
    write_audit(engine, ids[:30], AUDIT_Q)
    return ids


AUDIT_Q = [0.05] * 10 + [0.02] * 20
WEIGHTS = 1 / np.array(inclusion_in_order(AUDIT_Q))


def _share(event: list[int], domain: list[int]) -> float:
    """Hájek share by hand: sum of weights of event items within the domain over the domain's."""
    return float(WEIGHTS[sorted(set(event) & set(domain))].sum() / WEIGHTS[domain].sum())


def test_audit_rates_confusion_and_disagreements(engine: sa.Engine) -> None:
    ids = _vlsu_scene(engine)
    res = audit(engine, "joint", ["audit-vlsu"], by=["task_type"], min_n=5, resamples=100)
    assert res["judge_id"] == "j" and res["n"] == 30 and res["n_audit_items"] == 30
    wrong = [0, 1, 2, 15, 16, 17, 18, 19]
    assert res["accuracy"]["value"] == pytest.approx(1 - _share(wrong, list(range(30))))
    assert res["under_blocking"]["value"] == pytest.approx(_share([0, 1, 2], list(range(15))))
    assert res["over_blocking"]["value"] == pytest.approx(_share(list(range(15, 20)), list(range(15, 30))))
    # the early items had less chance to be drawn, so they weigh more than the plain share
    assert res["under_blocking"]["value"] > res["under_blocking"]["naive"] == pytest.approx(3 / 15)
    assert res["under_blocking"]["n"] == 15 and res["over_blocking"]["n"] == 15
    for key in ("accuracy", "under_blocking", "over_blocking"):
        assert res[key]["ci_low"] <= res[key]["value"] <= res[key]["ci_high"]
    labels = res["labels"]
    counts = np.array(res["confusion"]["counts"])
    assert counts[labels.index("unsafe"), labels.index("safe")] == 3
    assert counts[labels.index("safe"), labels.index("unsafe")] == 5
    assert counts.sum() == 30
    # every reviewed item, unweighted, includes the 10 priority-only errors
    assert res["all_reviewed"]["accuracy_unweighted"] == pytest.approx(1 - 18 / 40)
    assert res["disagreements"]["n"] == 18
    assert {d["item_id"] for d in res["disagreements"]["items"]} == {
        ids[i] for i in (0, 1, 2, *range(15, 20), *range(30, 40))
    }
    assert [row["value"] for row in res["slices"]["task_type"]] == ["t0", "t1"]
    assert res["kappa"]["value"] is not None
    assert res["judge_as_rater"]["alpha_with_judge"]["value"] < res["judge_as_rater"]["alpha_without_judge"]["value"]
    few = audit(engine, "joint", ["audit-vlsu"], min_n=50, resamples=10)
    assert few["accuracy"]["value"] is None and "n=30 < 50" in few["accuracy"]["undefined_reason"]


def test_compositional_error_rate(engine: sa.Engine) -> None:
    _vlsu_scene(engine)
    res = compositional_error(engine, ["audit-vlsu"], min_n=5)
    # audit items with image and text right: 0-19; joint wrong on 0-2 and 15-19
    assert res["n"] == 20
    assert res["value"] == pytest.approx(_share([0, 1, 2, 15, 16, 17, 18, 19], list(range(20))))


def test_error_tags_need_a_lead(engine: sa.Engine) -> None:
    ids = _vlsu_scene(engine)
    lead = make_user(engine, "lead", "lead")
    annotator = make_user(engine, "ann", "annotator")
    with Session(engine) as s:
        with pytest.raises(Forbidden):
            tag_error(s, annotator, ids[0], "joint", "j", "missed compositional harm")
        tag_error(s, lead, ids[0], "joint", "j", "missed compositional harm", "image of a knife + caption")
        tag_error(s, lead, ids[1], "joint", "j", "missed compositional harm")
        tag_error(s, lead, ids[15], "joint", "j", "over-blocked news")
        s.commit()
        tags = error_tags(s, lead, ["audit-vlsu"], "joint")
    assert tags["counts"] == {"missed compositional harm": 2, "over-blocked news": 1}
    assert tags["tags"][0]["by"] == "lead" and tags["tags"][0]["note"] == "image of a knife + caption"


def test_uni_judger_accuracy_per_task_type(engine: sa.Engine) -> None:
    """Uni-SafeBench: contextual and intrinsic accuracy per task type, over the audit stratum."""
    from safereview.agreement.audit import uni_judger_accuracy

    tasks = ["malicious-text-generation", "unsafe-t2i-generation"]
    with Session(engine) as s:
        col = ensure_collection(s, "uni", "uni-safebench", audit_share=0.5, overlap_target=1)
        users = [User(username=f"q{k}", password_hash="!x") for k in range(2)]
        s.add_all(users)
        s.flush()
        ids = []
        for i in range(24):
            item = Item(collection_id=col.id, external_id=f"u{i}", content_hash="x", task_type=tasks[i % 2])
            s.add(item)
            s.flush()
            ids.append(int(item.id))  # type: ignore[arg-type]
            for u in users:
                s.add(Annotation(item_id=item.id, user_id=u.id, labels={"contextual": "refusal", "intrinsic": "safe"}))
        s.commit()
    # contextual: wrong on items 0, 2, 4 (task 0) only; intrinsic: wrong on item 1 (task 1)
    write_verdicts(engine, ids, "contextual", ["unsafe" if i in (0, 2, 4) else "refusal" for i in range(24)], "uj")
    write_verdicts(engine, ids, "intrinsic", ["unsafe" if i == 1 else "safe" for i in range(24)], "uj")
    write_audit(engine, ids, [0.5] * 24)
    res = uni_judger_accuracy(engine, ["uni"], min_n=5)
    ctx = {r["task_type"]: r["value"] for r in res["contextual"]["by_task_type"]}
    intr = {r["task_type"]: r["value"] for r in res["intrinsic"]["by_task_type"]}
    assert ctx == {tasks[0]: pytest.approx(9 / 12), tasks[1]: 1.0}
    assert intr == {tasks[0]: 1.0, tasks[1]: pytest.approx(11 / 12)}
    assert res["contextual"]["overall"]["value"] == pytest.approx(21 / 24)


def test_inclusion_probabilities_follow_the_queue_design(engine: sa.Engine) -> None:
    """pi_i = 1 - prod(1 - q_j) over audit pulls before the item filled, minus pulls by reviewers
    who already held it (docs/workflow.md, "Sampling design")."""
    from datetime import timedelta

    from safereview.agreement.verdicts import load_audit_sample
    from safereview.db.models import Assignment, utcnow

    with Session(engine) as s:
        col = ensure_collection(s, "design", "vlsu", audit_share=0.5, overlap_target=2)
        items = []
        for name in "ABCD":
            item = Item(collection_id=col.id, external_id=name, content_hash="x")
            s.add(item)
            items.append(item)
        users = [User(username=f"r{k}", password_hash="!x") for k in range(3)]
        s.add_all(users)
        s.flush()
        col_id = int(col.id)  # type: ignore[arg-type]
        a, b, c, d = (int(i.id) for i in items)  # type: ignore[arg-type]
        u1, u2, u3 = (int(u.id) for u in users)  # type: ignore[arg-type]
        t0 = utcnow()
        plan = [  # (second, item, user, stratum, q = sampling_prob / audit_share)
            (1, a, u1, "audit", 0.25),
            (2, a, u2, "audit", 1 / 3),
            (3, b, u1, "audit", 0.5),
            (4, c, u3, "priority", None),
            (5, c, u2, "audit", 0.5),
            (6, d, u1, "audit", 0.5),
        ]
        for sec, item_id, user_id, stratum, q in plan:
            s.add(
                Assignment(
                    item_id=item_id,
                    user_id=user_id,
                    status="done",
                    stratum=stratum,
                    sampling_prob=None if q is None else q * 0.5,
                    leased_at=t0 + timedelta(seconds=sec),
                )
            )
        s.commit()
    ids, pi = load_audit_sample(engine, [col_id])
    got = dict(zip(ids.tolist(), pi.tolist(), strict=True))
    assert set(got) == {a, b, c, d}
    assert got[a] == pytest.approx(1 - 0.75 * (2 / 3))  # filled at second 2
    assert got[b] == pytest.approx(1 - 0.75 * (2 / 3) * 0.5 * 0.5)  # never filled; r1's later pull excluded
    assert got[c] == pytest.approx(1 - 0.75 * (2 / 3) * 0.5 * 0.5)  # filled at second 5
    assert got[d] == pytest.approx(1 - 0.75 * (2 / 3) * 0.5 * 0.5 * 0.5)  # never filled; every pull counts
