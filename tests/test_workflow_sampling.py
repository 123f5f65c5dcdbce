"""The queue's sampling design through the real queue: key order, frozen sizes, exact inclusion probabilities."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from workflow_support import VLSU_SAFE, make_collection, make_user, slot_invariants

from safereview.agreement.sample import load_design_sample
from safereview.db.engine import session_scope
from safereview.db.models import Annotation, Collection, Item
from safereview.workflow.annotations import submit
from safereview.workflow.queue import QueueFilter, next_item, skip
from safereview.workflow.sampling import (
    MAX_DESIGN_EFFECT,
    MAX_RATIO,
    MIN_UNIFORM_SHARE,
    design_effect,
    design_share,
    design_size,
)


def _review(engine: sa.Engine, users: list, cid: int, n: int, rng: random.Random) -> None:
    """``n`` reviews by ``users`` pulling and submitting in random interleaving (leases overlap)."""
    held: dict[int, object] = {}
    done = 0
    while done < n:
        k = rng.randrange(len(users))
        if k not in held:
            a = next_item(engine, users[k], QueueFilter(cid), rng=rng)
            assert a is not None
            held[k] = a
            continue
        a = held.pop(k)
        with session_scope(engine) as s:
            submit(s, users[k], a.id, VLSU_SAFE)  # type: ignore[attr-defined]
        done += 1


def test_design_size_mixes_the_root_score_with_a_uniform_floor_and_a_cap() -> None:
    assert design_size(0.0, 0.2, 0.5) == pytest.approx(0.2)
    assert design_size(0.25, 0.2, 0.5) == pytest.approx(1.0)  # sqrt(0.25) is the mean root
    assert design_size(1.0, 0.2, 0.5) == pytest.approx(0.2 + 0.8 * 2)
    assert design_size(4.0, 0.2, 0.5) == pytest.approx(0.2 + 0.8 * MAX_RATIO)  # capped
    assert design_size(0.0, 0.0, 0.5) == pytest.approx(MIN_UNIFORM_SHARE)  # never a zero chance
    assert design_size(0.7, 1.0, 0.5) == design_size(0.0, 0.2, 0.0) == 1.0  # random order; no scores yet


def test_queue_serves_the_frozen_key_order(engine: sa.Engine) -> None:
    cid = make_collection(engine, n_items=12, k=1, audit_share=0.3, priorities=[0.0, 1.0] * 6)
    u = make_user(engine, "ann")
    rng = random.Random(4)
    seen = []
    while (a := next_item(engine, u, QueueFilter(cid), rng=rng)) is not None:
        assert a.stratum == "sample" and a.sampling_prob is None
        seen.append(a.item_id)
        with session_scope(engine) as s:
            submit(s, u, a.id, VLSU_SAFE)
    with Session(engine) as s:
        col = s.get(Collection, cid)
        items = {i.id: i for i in s.exec(select(Item).where(Item.collection_id == cid))}
    assert col is not None and col.design_frozen_at is not None and col.design_score_mean == pytest.approx(0.5)
    # half the items score 0: at share 0.3 the weights' design effect would be 1.96, so the freeze raised it
    roots = np.array([0.0, 2.0] * 6)
    assert design_effect(roots, 0.3) > 1.9
    assert col.design_share == design_share(roots, 0.3) and col.design_share > 0.3
    assert design_effect(roots, col.design_share) <= MAX_DESIGN_EFFECT
    assert [items[i].sample_key for i in seen] == sorted(i.sample_key for i in items.values())  # type: ignore[type-var]
    for it in items.values():
        assert it.sample_size == pytest.approx(design_size(it.priority, col.design_share, 0.5))
    assert slot_invariants(engine, cid) == []


def test_rejudging_keeps_keys_and_late_items_are_keyed_at_the_next_pull(engine: sa.Engine) -> None:
    cid = make_collection(engine, n_items=5, k=1, priorities=[0.2, 0.4, 0.6, 0.8, 1.0])
    u = make_user(engine, "ann")
    next_item(engine, u, QueueFilter(cid), rng=random.Random(1))
    with Session(engine) as s:
        before = {i.id: (i.sample_size, i.sample_key) for i in s.exec(select(Item).where(Item.collection_id == cid))}
    with session_scope(engine) as s:
        s.execute(sa.update(Item).where(Item.collection_id == cid).values(priority=0.0))  # re-judged
        s.add(Item(collection_id=cid, external_id="late", content_hash="x", priority=0.5))
    next_item(engine, make_user(engine, "other"), QueueFilter(cid), rng=random.Random(2))
    with Session(engine) as s:
        after = {i.id: (i.sample_size, i.sample_key) for i in s.exec(select(Item).where(Item.collection_id == cid))}
        col = s.get(Collection, cid)
        assert col is not None
        mean_root, share = col.design_score_mean, col.design_share
    late = next(i for i in after if i not in before)
    assert {i: after[i] for i in before} == before  # the design that chose items never changes
    assert mean_root == pytest.approx(np.mean(np.sqrt([0.2, 0.4, 0.6, 0.8, 1.0])))
    assert share == 0.2  # spread scores: the configured share stands
    assert after[late][0] == pytest.approx(design_size(0.5, share, mean_root)) and after[late][1] is not None


def test_the_freeze_raises_the_uniform_share_only_for_concentrated_scores() -> None:
    rng = np.random.default_rng(3)
    p = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 2.0, 5000)))  # a judge whose P(unsafe) spreads over (0, 1)
    spread = np.sqrt(1.0 - np.abs(2.0 * p - 1.0))
    assert design_share(spread / spread.mean(), 0.3) == 0.3
    confident = 1.0 / (1.0 + np.exp(-5.0 * np.log(p / (1.0 - p))))  # the same judge, far too sure
    peaked = np.sqrt(1.0 - np.abs(2.0 * confident - 1.0))
    raised = design_share(peaked / peaked.mean(), 0.3)
    assert 0.3 < raised < 1.0
    assert design_effect(peaked / peaked.mean(), raised) <= MAX_DESIGN_EFFECT
    assert design_effect(peaked / peaked.mean(), raised - 0.01) > MAX_DESIGN_EFFECT  # the least such share
    assert design_share(peaked / peaked.mean(), 0.9) == 0.9  # a higher configured share is kept


@pytest.mark.parametrize("k", [1, 2])
def test_inverse_probabilities_add_up_to_each_band_through_the_queue(engine: sa.Engine, k: int) -> None:
    """Horvitz–Thompson on the real queue: E[sum of 1/pi over the sample items of a band] = band size.

    Two bands (10 borderline items, 20 clear ones) reviewed by 3 people in random interleaving
    until a budget; the sample's inverse probabilities, averaged over campaigns, must add up
    to each band's size (within 4 standard errors).
    """
    reps = 120
    sums = np.zeros((reps, 2))
    users = [make_user(engine, f"r{j}") for j in range(3)]
    for rep in range(reps):
        prios = [1.0] * 10 + [0.0] * 20
        cid = make_collection(engine, f"c{rep}", n_items=30, k=k, audit_share=0.2, priorities=prios, seed=rep)
        _review(engine, users, cid, 8 * k, random.Random(rep))
        ds = load_design_sample(engine, [cid])
        with Session(engine) as s:
            prio = dict(s.execute(sa.select(Item.id, Item.priority).where(Item.collection_id == cid)).all())
        for item_id, p in zip(ds.sample_ids.tolist(), ds.sample_pi.tolist(), strict=True):
            sums[rep, 0 if prio[item_id] > 0.5 else 1] += 1.0 / p
        assert ds.in_sample.sum() <= 8 * k
    mean, se = sums.mean(axis=0), sums.std(axis=0, ddof=1) / np.sqrt(reps)
    assert abs(mean[0] - 10) < 4 * se[0] + 0.2, (mean, se)
    assert abs(mean[1] - 20) < 4 * se[1] + 0.2, (mean, se)


def test_the_sample_stops_at_the_first_unreviewed_item_and_says_why(engine: sa.Engine) -> None:
    cid = make_collection(engine, n_items=6, k=1, priorities=[0.5] * 6)
    u, v = make_user(engine, "u"), make_user(engine, "v")
    rng = random.Random(0)
    first = next_item(engine, u, QueueFilter(cid), rng=rng)  # u holds the first item ...
    assert first is not None
    _review(engine, [v], cid, 2, rng)  # ... while v reviews the next two
    ds = load_design_sample(engine, [cid])
    assert ds.in_sample.sum() == 0 and ds.n_reviewed_outside == 2
    with Session(engine) as s:
        external = s.get(Item, first.item_id).external_id  # type: ignore[union-attr]
    assert ds.notes() == [  # named as people know it, not by the database's row id
        f"2 reviewed items wait for item {external} (in review), the next in the design's order"
    ]
    with session_scope(engine) as s:
        skip(s, u, first.id)
    ds = load_design_sample(engine, [cid])
    assert "skipped by someone" in ds.notes()[0]
    again = next_item(engine, v, QueueFilter(cid), rng=rng)  # the skipped item is next for everyone else
    assert again is not None and again.item_id == first.item_id
    with session_scope(engine) as s:
        submit(s, v, again.id, VLSU_SAFE)
    ds = load_design_sample(engine, [cid])
    assert ds.in_sample.sum() == 3 and ds.notes() == []
    pi = ds.sample_pi
    assert np.all((pi > 0) & (pi <= 1))


def test_census_and_no_design(engine: sa.Engine) -> None:
    cid = make_collection(engine, "census", n_items=3, k=1)
    ds = load_design_sample(engine, [cid])
    assert ds.in_sample.sum() == 0 and "no review through the queue yet" in ds.notes()[0]
    with Session(engine) as s:
        ids = list(s.exec(select(Item.id).where(Item.collection_id == cid)))
    imported = make_user(engine, "imported")
    with session_scope(engine) as s:
        s.add_all(Annotation(item_id=i, user_id=imported.id, labels=VLSU_SAFE, source="import") for i in ids)
    ds = load_design_sample(engine, [cid])
    assert ds.in_sample.all() and np.all(ds.sample_pi == 1.0) and ds.notes() == []  # everything reviewed


@pytest.mark.postgres
def test_keying_a_large_collection_refreshes_the_planners_statistics(pg_url: str) -> None:
    """An import analyses the item table while no item has a key; the freeze then keys them all.
    With those statistics the probe for unkeyed items was planned as a scan of the whole table
    on every pull (until autovacuum looked again, or for good where it is off), so keying many
    items analyses the table in the same transaction."""
    from safereview.db.engine import init_db
    from safereview.workflow.sampling import ANALYZE_AFTER_KEYS

    engine = init_db(pg_url)
    cid = make_collection(engine, n_items=ANALYZE_AFTER_KEYS + 500, k=1)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE item")  # as the importer does after a large import
    user = make_user(engine, "ann")
    assert next_item(engine, user, QueueFilter(cid)) is not None  # the first pull freezes and keys
    probe = "SELECT id FROM item WHERE collection_id = :c AND sample_key IS NULL LIMIT 1"
    with engine.connect() as conn:
        null_frac = conn.execute(
            sa.text(
                "SELECT null_frac FROM pg_stats WHERE schemaname = current_schema() "
                "AND tablename = 'item' AND attname = 'sample_key'"
            )
        ).scalar_one()
        plan = "\n".join(r[0] for r in conn.execute(sa.text(f"EXPLAIN {probe}"), {"c": cid}))
    assert null_frac == 0.0
    assert "Seq Scan" not in plan, plan
    engine.dispose()
