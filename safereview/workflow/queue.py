"""The review queue: leases on overlap slots, served in the sampling design's key order.

Design (the statistics in :mod:`safereview.workflow.sampling`, the rest in ``docs/workflow.md``):

- An item has ``overlap_target`` (k) slots. ``Item.slots_taken`` counts slots held by
  active leases and finished reviews, and changes only here: a pull claims a slot through
  the conditional
  ``UPDATE item SET slots_taken = slots_taken + 1 WHERE id = :id AND slots_taken < :k``,
  so the queue never exceeds k, whatever the number of app replicas. Reviews finished
  outside the queue (imported annotations) hold their slot through :func:`record_imported`.
- A pull first returns the user's own unexpired lease. Otherwise it takes the eligible
  item with the smallest rank key ``sample_key`` (borderline items tend to have small
  keys, yet every item can come early), so at any moment the reviewed items are a
  probability sample with known inclusion probabilities. An item half-way through its k
  reviews has a smaller key than any untouched one, so its second slot is filled first.
- The first pull of a collection freezes its design (every item's size and key); items
  imported later are keyed by the next pull (one probe of the partial index
  ``ix_item_unkeyed``, folded into the pull's first query).
- Candidate picks run one index scan per slot level (``slots_taken = s`` for s < k) on
  ``ix_item_sample(collection_id, slots_taken, sample_key)``, which yields rows already in
  key order, so no sort of the open items is ever needed. On PostgreSQL the scan uses
  ``FOR UPDATE SKIP LOCKED`` so concurrent reviewers never queue behind one row.
- Skips and expired leases give the slot back; the item keeps its key, so the next pull
  (by someone else, for a skip) takes it again. Expired leases are reclaimed lazily at the
  start of each pull (index ``ix_assignment_lease``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from safereview.db.bulk import bulk_insert, insert_for
from safereview.db.models import Assignment, Collection, Item, User, utcnow
from safereview.settings import Config
from safereview.workflow import query_cache, sampling
from safereview.workflow.errors import LeaseLost, NotFound
from safereview.workflow.policies import require

_log = logging.getLogger(__name__)

SAMPLE_STRATUM = "sample"  # a slot taken in the design's key order


@dataclass(frozen=True)
class QueueFilter:
    """Which items a reviewer wants: one collection, optionally narrowed (empty = all)."""

    collection_id: int
    task_types: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def key(self) -> tuple[Any, ...]:
        return (
            self.collection_id,
            tuple(sorted(self.task_types)),
            tuple(sorted(self.categories)),
            tuple(sorted(self.models)),
        )


# ---------------------------------------------------------------------------------------
# SQL building blocks
# ---------------------------------------------------------------------------------------

_NOT_MINE = (
    "NOT EXISTS (SELECT 1 FROM assignment a WHERE a.item_id = item.id AND a.user_id = :uid AND a.status <> 'released')"
)


def _filter_sql(flt: QueueFilter, params: dict[str, Any]) -> str:
    """Extra WHERE clauses for the filter, with bound parameters added to ``params``."""
    parts: list[str] = []
    for col, values in (("task_type", flt.task_types), ("category", flt.categories), ("model", flt.models)):
        if values:
            names = []
            for i, v in enumerate(values):
                params[f"{col}_{i}"] = v
                names.append(f":{col}_{i}")
            parts.append(f"item.{col} IN ({', '.join(names)})")
    return "".join(f" AND {p}" for p in parts)


def _matches(item: Item, flt: QueueFilter) -> bool:
    return (
        item.collection_id == flt.collection_id
        and (not flt.task_types or item.task_type in flt.task_types)
        and (not flt.categories or item.category in flt.categories)
        and (not flt.models or item.model in flt.models)
    )


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _claim_slot(session: Session, item_id: int, k: int) -> bool:
    res = session.execute(
        sa.text("UPDATE item SET slots_taken = slots_taken + 1 WHERE id = :id AND slots_taken < :k"),
        {"id": item_id, "k": k},
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def _return_slot(session: Session, item_id: int) -> None:
    session.execute(
        sa.text("UPDATE item SET slots_taken = slots_taken - 1 WHERE id = :id AND slots_taken > 0"), {"id": item_id}
    )


# ---------------------------------------------------------------------------------------
# Leases
# ---------------------------------------------------------------------------------------


def reclaim_expired(session: Session, *, now: datetime | None = None, limit: int = 500) -> int:
    """Release expired leases (status "released") and return their slots; returns how many.

    Each release is conditional on the lease still being active, so concurrent reclaimers
    (several replicas) never return a slot twice.
    """
    now = now or utcnow()
    rows = session.execute(
        sa.select(Assignment.id, Assignment.item_id)
        .where(Assignment.status == "leased", Assignment.lease_expires_at < now)  # type: ignore[operator]
        .order_by(Assignment.lease_expires_at)
        .limit(limit)
    ).all()
    n = 0
    for aid, item_id in rows:
        res = session.execute(
            sa.text("UPDATE assignment SET status = 'released' WHERE id = :id AND status = 'leased'"), {"id": aid}
        )
        if res.rowcount == 1:  # type: ignore[attr-defined]
            _return_slot(session, item_id)
            n += 1
    return n


def _lease_minutes(lease_minutes: float | None) -> float:
    return lease_minutes if lease_minutes is not None else Config().lease_minutes


def current_lease(session: Session, user: User, collection_id: int) -> Assignment | None:
    """The user's active lease in a collection (expired or not), if any."""
    return session.exec(
        select(Assignment)
        .join(Item, Item.id == Assignment.item_id)  # type: ignore[arg-type]
        .where(Assignment.user_id == user.id, Assignment.status == "leased", Item.collection_id == collection_id)
        .order_by(Assignment.leased_at)  # type: ignore[arg-type]
    ).first()


def _release_row(session: Session, a: Assignment, status: str) -> bool:
    res = session.execute(
        sa.text("UPDATE assignment SET status = :s WHERE id = :id AND status = 'leased'"), {"s": status, "id": a.id}
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    _return_slot(session, a.item_id)
    return True


def _design_candidate(session: Session, user: User, flt: QueueFilter, k: int, exclude: set[int]) -> int | None:
    """The eligible item with the smallest rank key on SQLite (the design's next item).

    One index scan per slot level ``s < k`` (equality on ``slots_taken`` keeps
    ``ix_item_sample`` in key order), combined in one UNION ALL of ``LIMIT 1`` sub-selects.
    PostgreSQL picks and claims in one statement instead (:func:`_pg_take`).
    """
    params: dict[str, Any] = {"c": flt.collection_id, "uid": user.id}
    extra = _filter_sql(flt, params) + _exclude_sql(exclude, params)
    parts = [
        f"SELECT * FROM (SELECT item.id, item.sample_key FROM item WHERE item.collection_id = :c "
        f"AND item.slots_taken = {lvl} AND item.sample_key IS NOT NULL AND {_NOT_MINE}{extra} "
        "ORDER BY item.sample_key LIMIT 1)"
        for lvl in range(k - 1, -1, -1)
    ]
    rows = session.execute(sa.text(" UNION ALL ".join(parts)), params).all()
    if not rows:
        return None
    return int(min(rows, key=lambda r: float(r[1]))[0])


def _take(session: Session, user: User, item_id: int, k: int, now: datetime, minutes: float) -> Assignment | None:
    """Claim one slot of ``item_id`` and record the lease; None if the slot race was lost.

    The lease row is an upsert on (item, user) that only revives a "released" row (the
    user's own earlier lease), so one statement covers first and repeated offers.
    """
    if not _claim_slot(session, item_id, k):
        return None
    expires = now + timedelta(minutes=minutes)
    t = Assignment.__table__  # type: ignore[attr-defined]
    values = {
        "status": "leased",
        "stratum": SAMPLE_STRATUM,
        "sampling_prob": None,
        "leased_at": now,
        "lease_expires_at": expires,
        "completed_at": None,
    }
    stmt = (
        insert_for(session)(t)
        .values(item_id=item_id, user_id=user.id, **values)
        .on_conflict_do_update(index_elements=["item_id", "user_id"], set_=values, where=t.c.status == "released")
        .returning(t.c.id)
    )
    row = session.execute(stmt).first()
    if row is None:  # the user holds or finished this item already (e.g. a second browser tab)
        _return_slot(session, item_id)
        return None
    return Assignment(id=int(row[0]), item_id=item_id, user_id=user.id, **values)  # type: ignore[arg-type]


_PG_TAKE = """
WITH cand AS ({cand}),
claimed AS (
  UPDATE item SET slots_taken = item.slots_taken + 1 FROM cand
  WHERE item.id = cand.id AND item.slots_taken < :k RETURNING item.id
),
ins AS (
  INSERT INTO assignment (item_id, user_id, status, stratum, sampling_prob, leased_at, lease_expires_at,
                          completed_at)
  SELECT claimed.id, :uid, 'leased', :stratum, NULL, :now, :exp, NULL FROM claimed
  ON CONFLICT (item_id, user_id) DO UPDATE SET status = 'leased', stratum = EXCLUDED.stratum,
    sampling_prob = EXCLUDED.sampling_prob, leased_at = EXCLUDED.leased_at,
    lease_expires_at = EXCLUDED.lease_expires_at, completed_at = NULL
  WHERE assignment.status = 'released'
  RETURNING assignment.id
)
SELECT (SELECT id FROM cand), (SELECT count(*) FROM claimed), (SELECT id FROM ins)
"""


def _pg_take(
    session: Session,
    user: User,
    flt: QueueFilter,
    k: int,
    now: datetime,
    minutes: float,
    exclude: set[int],
) -> tuple[int | None, Assignment | None]:
    """PostgreSQL: choose the next item in key order, claim and lease it in ONE statement.

    Data-modifying CTEs save three round trips per pull, which is most of a pull's cost.
    Returns (candidate id or None when nothing is eligible, the lease or None on a lost race).
    """
    params: dict[str, Any] = {
        "k": k,
        "uid": user.id,
        "stratum": SAMPLE_STRATUM,
        "now": now,
        "exp": now + timedelta(minutes=minutes),
    }
    params.update({"c": flt.collection_id, "kmax": k - 1})
    extra = _filter_sql(flt, params) + _exclude_sql(exclude, params)
    cand = (
        "SELECT c.id FROM generate_series(:kmax, 0, -1) AS lv(s) CROSS JOIN LATERAL ("
        "SELECT item.id, item.sample_key FROM item WHERE item.collection_id = :c AND item.slots_taken = lv.s "
        f"AND item.sample_key IS NOT NULL AND {_NOT_MINE}{extra} ORDER BY item.sample_key LIMIT 1 "
        "FOR UPDATE SKIP LOCKED) c ORDER BY c.sample_key LIMIT 1"
    )
    cand_id, claimed, lease_id = session.execute(sa.text(_PG_TAKE.format(cand=cand)), params).one()
    if cand_id is None:
        return None, None
    if lease_id is None:
        if claimed:  # claimed a slot but the user already holds this item (second tab): give it back
            _return_slot(session, int(cand_id))
        return int(cand_id), None
    a = Assignment(
        id=int(lease_id),
        item_id=int(cand_id),
        user_id=user.id,
        status="leased",  # type: ignore[arg-type]
        stratum=SAMPLE_STRATUM,
        sampling_prob=None,
        leased_at=now,
        lease_expires_at=params["exp"],
        completed_at=None,
    )
    return int(cand_id), a


LOCKED_RETRIES = 20  # pulls that found every eligible row locked by others, waited out before "empty"


def _pg_eligible(session: Session, user: User, flt: QueueFilter, k: int, exclude: set[int]) -> bool:
    """Whether any slot is free for this user, ignoring row locks (plain read, no claim)."""
    params: dict[str, Any] = {"k": k, "uid": user.id, "c": flt.collection_id}
    extra = _filter_sql(flt, params) + _exclude_sql(exclude, params)
    row = session.execute(
        sa.text(
            "SELECT 1 FROM item WHERE item.collection_id = :c AND item.slots_taken < :k "
            f"AND item.sample_key IS NOT NULL AND {_NOT_MINE}{extra} LIMIT 1"
        ),
        params,
    ).first()
    return row is not None


def _exclude_sql(exclude: set[int], params: dict[str, Any]) -> str:
    if not exclude:
        return ""
    names = []
    for i, x in enumerate(sorted(exclude)):
        params[f"x{i}"] = x
        names.append(f":x{i}")
    return f" AND item.id NOT IN ({', '.join(names)})"


_reclaim_lock = threading.Lock()
_last_reclaim: dict[str, datetime] = {}
RECLAIM_EVERY = timedelta(seconds=5)


def _maybe_reclaim(session: Session, now: datetime) -> None:
    """Reclaim expired leases at most every ``RECLAIM_EVERY`` per process (cheap either way)."""
    key = query_cache.bind_key(session)
    with _reclaim_lock:
        last = _last_reclaim.get(key)
        if last is not None and last <= now < last + RECLAIM_EVERY:
            return
        _last_reclaim[key] = now
    reclaim_expired(session, now=now)


def _next_in_session(
    session: Session, user: User, flt: QueueFilter, now: datetime, rng: random.Random, minutes: float
) -> Assignment | None:
    require(user, "review")
    # SQLite is told to probe for unkeyed items through their partial index: with statistics
    # taken before the freeze keyed every item, it chose ix_item_sample and walked all of the
    # collection's keyed items on every pull (127 ms a pull at 1M items; 1.7 ms this way).
    unkeyed_from = "item INDEXED BY ix_item_unkeyed" if not _is_pg(session) else "item"
    row = session.execute(
        sa.text(
            "SELECT c.overlap_target, c.design_frozen_at, c.archived, "
            "(SELECT a.id FROM assignment a JOIN item ON item.id = a.item_id WHERE a.user_id = :u "
            "AND a.status = 'leased' AND item.collection_id = c.id ORDER BY a.leased_at LIMIT 1), "
            f"(SELECT item.id FROM {unkeyed_from} WHERE item.collection_id = c.id AND item.sample_key IS NULL LIMIT 1) "
            "FROM collection c WHERE c.id = :c"
        ),
        {"u": user.id, "c": flt.collection_id},
    ).first()
    if row is None:
        raise NotFound("no such collection")
    k, frozen, archived, lease_id, unkeyed = int(row[0]), row[1] is not None, bool(row[2]), row[3], row[4]
    if lease_id is not None:
        mine = session.get(Assignment, lease_id, populate_existing=True)
        assert mine is not None
        matches = True
        if flt.task_types or flt.categories or flt.models:
            item = session.get(Item, mine.item_id)
            matches = item is not None and _matches(item, flt)
        if not archived and matches and mine.lease_expires_at is not None and mine.lease_expires_at > now:
            return mine
        _release_row(session, mine, "released")  # expired, archived, or the filter changed
    if archived:
        return None
    if not frozen:
        sampling.freeze_design(session, flt.collection_id, rng=rng, now=now)
    elif unkeyed is not None:  # items that arrived after the freeze
        sampling.assign_keys(session, flt.collection_id, rng)
    _maybe_reclaim(session, now)
    exclude: set[int] = set()
    pg = _is_pg(session)
    locked_waits = 0
    for _attempt in range(8 + LOCKED_RETRIES):
        if pg:
            got_id, lease = _pg_take(session, user, flt, k, now, minutes, exclude)
            if got_id is None:
                # SKIP LOCKED also skips a free slot whose row another pull holds this instant:
                # "nothing left" only when no eligible row exists at all, locked or not.
                if locked_waits < LOCKED_RETRIES and _pg_eligible(session, user, flt, k, exclude):
                    locked_waits += 1
                    time.sleep(0.002 * locked_waits * (1 + rng.random()))
                    continue
                return None
            if lease is not None:
                return lease
            exclude.add(got_id)
            continue
        item_id = _design_candidate(session, user, flt, k, exclude)
        if item_id is None:
            return None
        a = _take(session, user, item_id, k, now, minutes)
        if a is not None:
            return a
        exclude.add(item_id)
    return None


def next_item(
    session_or_engine: Session | sa.Engine,
    user: User,
    flt: QueueFilter,
    *,
    now: datetime | None = None,
    rng: random.Random | None = None,
    lease_minutes: float | None = None,
) -> Assignment | None:
    """The user's current lease, or a newly claimed slot, or None when nothing is left.

    With a Session the caller commits (``db.engine.session_scope``). With an Engine the
    function runs its own short transaction and retries it while it fails transiently
    (``workflow.tx.is_transient``: deadlocks, serialisation failures, a duplicate (item, user)
    insert from a second browser tab).
    """
    now = now or utcnow()
    rng = rng or random.Random()
    minutes = _lease_minutes(lease_minutes)
    if isinstance(session_or_engine, Session):
        return _next_in_session(session_or_engine, user, flt, now, rng, minutes)
    from safereview.workflow.tx import retry_transient, write_scope

    def attempt() -> Assignment | None:
        with write_scope(session_or_engine) as session:
            return _next_in_session(session, user, flt, now, rng, minutes)

    return retry_transient(attempt, rng)


def _own_leased(session: Session, user: User, assignment_id: int) -> Assignment:
    a = session.get(Assignment, assignment_id, populate_existing=True)
    if a is None or a.user_id != user.id:
        raise NotFound("no such assignment")
    if a.status != "leased":
        raise LeaseLost("this item is no longer assigned to you (the lease ended)")
    return a


def _give_back(session: Session, user: User, assignment_id: int, status: str) -> Assignment:
    """Shared tail of release/skip; the callers check the role (the access test scans for it)."""
    a = _own_leased(session, user, assignment_id)
    if not _release_row(session, a, status):
        raise LeaseLost("this item is no longer assigned to you (the lease ended)")
    session.refresh(a)
    return a


def release(session: Session, user: User, assignment_id: int) -> Assignment:
    """Give a leased slot back (status "released"); the item may be offered to the user again."""
    require(user, "review")
    return _give_back(session, user, assignment_id, "released")


def skip(session: Session, user: User, assignment_id: int) -> Assignment:
    """Give a leased slot back and never offer the item to this user again (status "skipped")."""
    require(user, "review")
    return _give_back(session, user, assignment_id, "skipped")


def complete(session: Session, user: User, assignment_id: int, *, now: datetime | None = None) -> Assignment:
    """Mark the user's lease done (used by ``annotations.submit``).

    A lease that expired but was not reclaimed yet still holds its slot and completes
    normally; one that was reclaimed ("released") completes only if a slot is still free,
    so the overlap target holds either way.
    """
    now = now or utcnow()
    a = session.get(Assignment, assignment_id, populate_existing=True)
    if a is None or a.user_id != user.id:
        raise NotFound("no such assignment")
    if a.status == "released":
        col_k = session.execute(
            sa.select(Collection.overlap_target)
            .join(Item, Item.collection_id == Collection.id)
            .where(Item.id == a.item_id)
        ).scalar_one()
        if not _claim_slot(session, a.item_id, col_k):
            raise LeaseLost("your lease expired and the item's review slots are now taken by others")
        res = session.execute(
            sa.text("UPDATE assignment SET status = 'leased' WHERE id = :id AND status = 'released'"), {"id": a.id}
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLost("this item is no longer assigned to you")
    res = session.execute(
        sa.text("UPDATE assignment SET status = 'done', completed_at = :t WHERE id = :id AND status = 'leased'"),
        {"t": now, "id": a.id},
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost("this item is no longer assigned to you (the lease ended)")
    session.refresh(a)
    return a


# ---------------------------------------------------------------------------------------
# Reviews finished outside the queue (imports)
# ---------------------------------------------------------------------------------------

IMPORTED_STRATUM = "imported"
_LOOKUP_CHUNK = 900  # item ids per IN (...) look-up


def _hold_slots(conn: sa.Connection, counts: dict[int, int]) -> None:
    """Count ``n`` more held slots on each item: finished reviews that already happened."""
    if not counts:
        return
    stmt = sa.text("UPDATE item SET slots_taken = slots_taken + :n WHERE id = :id")
    params = [{"id": item_id, "n": n} for item_id, n in counts.items()]
    for k in range(0, len(params), 5000):
        conn.execute(stmt, params[k : k + 5000])


def record_imported(conn: sa.Connection, pairs: Iterable[tuple[int, int]], *, now: datetime | None = None) -> int:
    """Record reviews done outside the queue, one per (item id, user id); return the slots newly held.

    Each pair ends as a *done* assignment in the ``imported`` stratum (no ``sampling_prob``:
    never a random audit sample), holding one slot, so ``slots_taken`` stays the number of
    leased plus done assignments:

    - no assignment yet: a new done one, and one more slot held;
    - the user's active lease on the item: it becomes done (its slot is already held);
    - a released or skipped assignment: it becomes done and holds a slot again;
    - already done: nothing changes.

    Unlike a pull, the slot is taken whatever ``overlap_target`` says: the review exists,
    and a full item is simply no longer offered (as when k is lowered). Bulk: one look-up
    per 900 items, one insert, one executemany per change.
    """
    now = now or utcnow()
    pairs = list(dict.fromkeys(pairs))
    if not pairs:
        return 0
    t = Assignment.__table__  # type: ignore[attr-defined]
    have: dict[tuple[int, int], tuple[int, str]] = {}
    item_ids = sorted({item_id for item_id, _ in pairs})
    for k in range(0, len(item_ids), _LOOKUP_CHUNK):
        chunk = item_ids[k : k + _LOOKUP_CHUNK]
        for aid, item_id, user_id, status in conn.execute(
            sa.select(t.c.id, t.c.item_id, t.c.user_id, t.c.status).where(t.c.item_id.in_(chunk))
        ):
            have[(item_id, user_id)] = (aid, status)
    new: list[tuple[Any, ...]] = []
    finish: list[dict[str, Any]] = []
    held: dict[int, int] = {}
    for key in pairs:
        old = have.get(key)
        if old is not None and old[1] == "done":
            continue
        if old is None:
            new.append((key[0], key[1], "done", IMPORTED_STRATUM, None, now, None, now))
        else:
            finish.append({"_id": old[0]})
        if old is None or old[1] != "leased":  # an active lease already holds its slot
            held[key[0]] = held.get(key[0], 0) + 1
    if new:
        cols = ["item_id", "user_id", "status", "stratum", "sampling_prob", "leased_at", "lease_expires_at"]
        bulk_insert(conn, t, [*cols, "completed_at"], new, process=True)
    if finish:
        conn.execute(
            t.update()
            .where(t.c.id == sa.bindparam("_id"))
            .values(status="done", completed_at=now, lease_expires_at=None),
            finish,
        )
    _hold_slots(conn, held)
    return sum(held.values())
