"""Progress of a collection's review: the reviewer's own counts, everyone's, and the lead's
per-reviewer view (``queue_status``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.models import Collection, User
from safereview.workflow import query_cache
from safereview.workflow.errors import NotFound
from safereview.workflow.policies import require


@dataclass(frozen=True)
class Progress:
    """Counts for one collection; ``slots_total`` = n_items × overlap_target.

    ``mine_*`` are exact; the collection-wide counts may be up to ``max_age_s`` old.
    """

    collection_id: int
    n_items: int
    overlap_target: int
    slots_total: int
    mine_done: int
    mine_skipped: int
    mine_leased: int
    everyone_done: int
    slots_leased: int
    items_fully_covered: int
    extra: dict = field(default_factory=dict)
    mine_awaiting: int = 0  # submitted in a blind collection, not yet confirmed against the judge

    @property
    def fraction_done(self) -> float:
        return self.everyone_done / self.slots_total if self.slots_total else 0.0


def _collection_counts(run: Any, collection_id: int, k: int) -> dict[str, int]:
    """Collection-wide counts; ``run(sql, params) -> rows`` runs each query."""
    p = {"c": collection_id, "k": k}
    n_items = run("SELECT COUNT(*) FROM item WHERE collection_id = :c", p)[0][0]
    by_status = dict(
        run(
            "SELECT a.status, COUNT(*) FROM assignment a JOIN item ON item.id = a.item_id "
            "WHERE item.collection_id = :c GROUP BY a.status",
            p,
        )
    )
    full = run(
        "SELECT COUNT(*) FROM (SELECT a.item_id FROM assignment a JOIN item ON item.id = a.item_id "
        "WHERE item.collection_id = :c AND a.status = 'done' GROUP BY a.item_id HAVING COUNT(*) >= :k) t",
        p,
    )[0][0]
    by_stratum = dict(
        run(
            "SELECT a.stratum, COUNT(*) FROM assignment a JOIN item ON item.id = a.item_id "
            "WHERE item.collection_id = :c AND a.status = 'done' GROUP BY a.stratum",
            p,
        )
    )
    return {
        "n_items": int(n_items),
        "done": int(by_status.get("done", 0)),
        "leased": int(by_status.get("leased", 0)),
        "skipped": int(by_status.get("skipped", 0)),
        "full": int(full),
        **{f"done_{s}": int(v) for s, v in by_stratum.items()},
    }


# Blind submissions still waiting for confirm or override (a tab closed at the reveal step):
# not finished, so progress does not count them as done (annotations.awaiting_reveal resumes them).
_AWAITING = (
    "SELECT an.user_id, COUNT(*) FROM annotation an JOIN item i ON i.id = an.item_id "
    "JOIN collection c ON c.id = i.collection_id WHERE i.collection_id = :c AND c.blind = :t "
    "AND an.source = 'app' AND an.verdict_action IS NULL AND EXISTS "
    "(SELECT 1 FROM verdict v WHERE v.item_id = an.item_id AND v.label IS NOT NULL) {user} GROUP BY an.user_id"
)


def _is_blind(session: Session, collection_id: int) -> bool:
    col = session.get(Collection, collection_id)
    return bool(col is not None and col.blind)


def _awaiting(session: Session, collection_id: int, user_id: int | None = None) -> dict[int, int]:
    sql = _AWAITING.format(user="AND an.user_id = :u" if user_id is not None else "")
    rows = session.execute(sa.text(sql), {"c": collection_id, "t": True, "u": user_id}).all()
    return {int(u): int(n) for u, n in rows}


def progress(session: Session, user: User | None, collection_id: int, *, max_age_s: float = 5.0) -> Progress:
    """Progress counts for a collection.

    The user's own counts are exact (index on the user's assignments). Collection-wide
    counts scan the collection's assignments, so they are cached per process for
    ``max_age_s`` seconds and recounted in the background (the page shows them on every
    rerun and never waits); ``max_age_s=0`` counts now, inside the caller's transaction.
    The user's own finished reviews are part of everyone's, so a stale collection-wide count
    is never shown below them ("You: 3 done · everyone: 0" right after three submits).
    """
    col = session.get(Collection, collection_id)
    if col is None:
        raise NotFound("no such collection")
    k = col.overlap_target
    if max_age_s > 0:  # recounted in the background on its own connection: reruns never wait
        run, bg = query_cache.side_runner(session)
        counts = query_cache.cached(
            ("progress", query_cache.bind_key(session), collection_id, k),
            max_age_s,
            lambda: _collection_counts(run, collection_id, k),
            background=bg,
        )
    else:  # fresh, inside the caller's transaction
        counts = _collection_counts(lambda q, p: session.execute(sa.text(q), p).all(), collection_id, k)
    mine: dict[str, int] = {}
    if user is not None:
        mine = dict(
            session.execute(
                sa.text(
                    "SELECT a.status, COUNT(*) FROM assignment a JOIN item ON item.id = a.item_id "
                    "WHERE a.user_id = :u AND item.collection_id = :c GROUP BY a.status"
                ),
                {"u": user.id, "c": collection_id},
            ).all()
        )
    awaiting = 0  # only blind collections have a reveal step to leave unfinished
    if user is not None and col.blind:
        awaiting = _awaiting(session, collection_id, user.id).get(int(user.id), 0)
    return Progress(
        collection_id=collection_id,
        n_items=counts["n_items"],
        overlap_target=k,
        slots_total=counts["n_items"] * k,
        mine_done=int(mine.get("done", 0)) - awaiting,
        mine_awaiting=awaiting,
        mine_skipped=int(mine.get("skipped", 0)),
        mine_leased=int(mine.get("leased", 0)),
        everyone_done=max(int(counts["done"]), int(mine.get("done", 0))),
        slots_leased=counts["leased"],
        items_fully_covered=counts["full"],
        extra={key: v for key, v in counts.items() if key.startswith("done_") or key == "skipped"},
    )


def queue_status(session: Session, actor: Any, collection_id: int) -> dict[str, Any]:
    """Lead's view: fresh progress plus done counts per reviewer (``view_queue_status``)."""
    require(actor, "view_queue_status")
    prog = progress(session, None, collection_id, max_age_s=0)
    per_user = session.execute(
        sa.text(
            "SELECT u.username, a.status, COUNT(*) FROM assignment a JOIN item ON item.id = a.item_id "
            'JOIN "user" u ON u.id = a.user_id WHERE item.collection_id = :c '
            "GROUP BY u.username, a.status ORDER BY u.username"
        ),
        {"c": collection_id},
    ).all()
    users: dict[str, dict[str, int]] = {}
    for name, status, n in per_user:
        users.setdefault(name, {})[status] = int(n)
    awaiting = _awaiting(session, collection_id) if prog.n_items and _is_blind(session, collection_id) else {}
    if awaiting:
        names = dict(
            session.execute(
                sa.text('SELECT id, username FROM "user" WHERE id IN (' + ",".join(str(int(u)) for u in awaiting) + ")")
            ).all()
        )
        for uid, n in awaiting.items():  # shown apart: submitted, never confirmed against the judge
            row = users.setdefault(names.get(uid, str(uid)), {})
            row["done"] = row.get("done", 0) - n
            row["not confirmed"] = n
    return {"progress": prog, "per_user": users}


def has_work_for(session: Session, user: User, collection_ids: list[int]) -> dict[int, bool]:
    """Whether each collection has an item the user could be given now, or holds one already
    (a lease, or a submission still waiting at the reveal step). One short probe per collection,
    for the collection picker."""
    require(user, "review")
    out: dict[int, bool] = {}
    for cid in collection_ids:
        row = session.execute(
            sa.text(
                "SELECT 1 FROM item i JOIN collection c ON c.id = i.collection_id "
                "WHERE i.collection_id = :c AND ("
                " (i.slots_taken < c.overlap_target AND NOT EXISTS "
                "   (SELECT 1 FROM assignment a WHERE a.item_id = i.id AND a.user_id = :u AND a.status <> 'released'))"
                " OR EXISTS (SELECT 1 FROM assignment a WHERE a.item_id = i.id AND a.user_id = :u "
                "   AND a.status = 'leased')"
                ") LIMIT 1"
            ),
            {"c": cid, "u": user.id},
        ).first()
        out[cid] = row is not None
    return out
