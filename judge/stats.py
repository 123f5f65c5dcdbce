"""``safereview stats``: benchmark metrics of one collection from the database.

Loads one judge's labels (and, when a gold snapshot covers the collection, the newest gold
labels) and hands them to the pure functions of :mod:`judge.metrics`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from safereview.db.collections import taxonomy_of
from safereview.db.models import Gold, GoldSnapshot, Item, Verdict
from safereview.db.taxonomy import dimension_names
from safereview.judge.metrics import UNI_METRICS, Share, label_shares, metric_table, uni_metrics
from safereview.workflow.collections import get_collection

GROUP_KEYS = {"model": "model", "task_type": "task_type", "category": "category"}


def default_judge(session: Session, collection_id: int) -> str | None:
    """The judge with the most labelled verdicts in the collection (ties: the newest)."""
    stmt = (
        select(Verdict.judge_id, sa.func.count(), sa.func.max(Verdict.created_at))
        .join(Item, Item.id == Verdict.item_id)
        .where(Item.collection_id == collection_id, Verdict.label.is_not(None))  # type: ignore[union-attr]
        .group_by(Verdict.judge_id)
    )
    rows = session.exec(stmt).all()  # type: ignore[call-overload]
    if not rows:
        return None
    return max(rows, key=lambda r: (r[1], r[2]))[0]


def newest_gold_snapshot(session: Session, collection_id: int) -> GoldSnapshot | None:
    snaps = session.exec(
        select(GoldSnapshot).order_by(
            GoldSnapshot.created_at.desc(),  # type: ignore[attr-defined]
            GoldSnapshot.id.desc(),
        )
    ).all()  # type: ignore[union-attr]
    return next((s for s in snaps if collection_id in (s.collection_ids or [])), None)


def _compute(dims: list[str], labels_of: dict[str, list[str]], uni: bool):  # type: ignore[no-untyped-def]
    def compute(rows: list[Any]) -> dict[str, dict[str, Any]]:
        if uni:
            return {k: v.as_dict() for k, v in uni_metrics(rows).items()}
        return {
            f"{d}:{lab}": s.as_dict()
            for d in dims
            for lab, s in label_shares([r.get(d) for r in rows], labels_of[d]).items()
        }

    return compute


def collection_stats(
    session: Session, collection_name: str, *, by: str | None = None, judge_id: str | None = None
) -> dict[str, Any]:
    """Metrics per group for the judge and, when gold exists, for gold on the same groups."""
    if by is not None and by not in GROUP_KEYS:
        raise ValueError(f"--by must be one of {', '.join(GROUP_KEYS)}")
    col = get_collection(session, collection_name)
    spec = taxonomy_of(session, col)
    dims = dimension_names(spec)
    labels_of = {d["name"]: d["labels"] for d in spec["dimensions"]}
    uni = "contextual" in dims and "intrinsic" in dims
    items = session.exec(select(Item).where(Item.collection_id == col.id).order_by(Item.id)).all()  # type: ignore[arg-type]
    base = {i.id: {"model": i.model, "task_type": i.task_type, "category": i.category} for i in items}
    jid = judge_id or default_judge(session, col.id)  # type: ignore[arg-type]

    judge_rows: list[dict[str, Any]] = []
    status_counts: dict[str, int] = {}
    if jid is not None:
        per_item: dict[int, dict[str, Any]] = {}
        verdicts = session.exec(
            select(Verdict)
            .join(Item, Item.id == Verdict.item_id)
            .where(Item.collection_id == col.id, Verdict.judge_id == jid)
        ).all()
        for v in verdicts:
            status_counts[v.status] = status_counts.get(v.status, 0) + 1
            per_item.setdefault(v.item_id, dict(base[v.item_id]))[v.dimension] = v.label
        judge_rows = list(per_item.values())

    gold_rows: list[dict[str, Any]] = []
    snap = newest_gold_snapshot(session, col.id)  # type: ignore[arg-type]
    if snap is not None:
        per_gold: dict[int, dict[str, Any]] = {}
        golds = session.exec(
            select(Gold)
            .join(Item, Item.id == Gold.item_id)
            .where(Gold.snapshot_id == snap.id, Item.collection_id == col.id)
        ).all()
        for g in golds:
            per_gold.setdefault(g.item_id, dict(base[g.item_id]))[g.dimension] = g.label
        gold_rows = list(per_gold.values())

    compute = _compute(dims, labels_of, uni)
    key = GROUP_KEYS.get(by) if by else None
    judge_table = metric_table(judge_rows, key, compute)
    gold_table = metric_table(gold_rows, key, compute) if gold_rows else []
    metric_names = list(UNI_METRICS) if uni else [f"{d}:{lab}" for d in dims for lab in labels_of[d]]
    return {
        "collection": col.name,
        "taxonomy": spec["name"],
        "kind": "uni-safebench" if uni else "label-shares",
        "judge_id": jid,
        "verdict_status": status_counts,
        "gold_snapshot_id": snap.id if snap else None,
        "by": by,
        "metrics": metric_names,
        "judge": judge_table,
        "gold": gold_table,
        "n_items": len(items),
    }


def fmt_share(s: dict[str, Any] | Share | None) -> str:
    """``12.5% [8.1, 18.6] (n=120)`` or ``—`` for an empty share."""
    if s is None:
        return "—"
    d = s.as_dict() if isinstance(s, Share) else s
    if d["p"] is None:
        return "— (n=0)"
    return f"{100 * d['p']:.1f}% [{100 * d['lo']:.1f}, {100 * d['hi']:.1f}] (n={d['n']})"
