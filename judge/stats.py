"""``safereview stats``: benchmark metrics of one collection from the database.

Loads one judge's labels, or several judges' to merge (and, when a gold snapshot covers the
collection, the newest gold labels) and hands them to the pure functions of
:mod:`judge.metrics`, under the benchmark's counting rule unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from safereview.db.collections import taxonomy_of
from safereview.db.models import Gold, GoldSnapshot, Item, Verdict
from safereview.db.taxonomy import dimension_names
from safereview.judge.metrics import (
    RULE_TEXT,
    SHARED_DENOMINATOR,
    UNI_DIMENSIONS,
    UNI_METRICS,
    UNI_RULES,
    group_rows,
    label_shares,
    metric_table,
    uni_result,
)
from safereview.workflow.collections import get_collection

GROUP_KEYS = {"model": "model", "task_type": "task_type", "category": "category"}
# The gold table counts a snapshot's rows: the reviewed items, which the queue chose
# borderline-first. Its Wilson intervals describe those rows, not the collection; the
# population figures (human, corrected) are the collection's.
GOLD_DESCRIBES = (
    "the newest gold snapshot's rows under the benchmark's rule: reviewed items only, chosen borderline-first, "
    "so not a random sample of the collection; the intervals describe these rows. For the people's rate over "
    "the collection use population (human, corrected)."
)


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


def _label_shares_compute(dims: list[str], labels_of: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def compute(rows: list[Any]) -> dict[str, dict[str, Any]]:
        return {
            f"{d}:{lab}": s.as_dict()
            for d in dims
            for lab, s in label_shares([r.get(d) for r in rows], labels_of[d]).items()
        }

    return compute


def uni_table(rows: list[dict[str, Any]], key: str | None, rule: str) -> list[dict[str, Any]]:
    """The four metrics per group of :func:`group_rows` under ``rule``, with what NA handling dropped.

    Each row of ``rows`` is one record (one judge's labels of one item, or one gold item),
    with the item's id under ``item_id``; several records of one item merge.
    """
    return [{"group": g, **uni_result(rs, rule=rule, id_key="item_id").as_dict()} for g, rs in group_rows(rows, key)]


def _judge_ids(judge_id: str | Sequence[str] | None) -> list[str]:
    if judge_id is None:
        return []
    ids = [judge_id] if isinstance(judge_id, str) else list(judge_id)
    return list(dict.fromkeys(ids))  # repeated ids count once


def collection_stats(
    session: Session,
    collection_name: str,
    *,
    by: str | None = None,
    judge_id: str | Sequence[str] | None = None,
    rule: str | None = None,
) -> dict[str, Any]:
    """Metrics per group for the judge(s) and, when gold exists, for gold on the same groups.

    ``judge_id`` is one judge or several: several judges' verdicts of an item are several
    judgments of it and merge per dimension by the benchmark's rule
    (:func:`judge.metrics.merge_judgments`; Uni-SafeBench taxonomies only). ``rule`` is
    ``shared-denominator`` (default: the benchmark's ``statistics.py``) or
    ``per-metric-denominator``; it applies to the Uni-SafeBench metrics, judge and gold alike.
    """
    if by is not None and by not in GROUP_KEYS:
        raise ValueError(f"--by must be one of {', '.join(GROUP_KEYS)}")
    if rule is not None and rule not in UNI_RULES:
        raise ValueError(f"rule must be one of {', '.join(UNI_RULES)}")
    col = get_collection(session, collection_name)
    spec = taxonomy_of(session, col)
    dims = dimension_names(spec)
    labels_of = {d["name"]: d["labels"] for d in spec["dimensions"]}
    uni = all(d in dims for d in UNI_DIMENSIONS)
    jids = _judge_ids(judge_id)
    if len(jids) > 1 and not uni:
        raise ValueError(
            "several judges merge only for the Uni-SafeBench metrics (contextual and intrinsic dimensions); "
            f"taxonomy {spec['name']!r} does not have both: pass one --judge-id"
        )
    if not jids:
        default = default_judge(session, col.id)  # type: ignore[arg-type]
        jids = [default] if default is not None else []
    rule = (rule or SHARED_DENOMINATOR) if uni else None
    items = session.exec(select(Item).where(Item.collection_id == col.id).order_by(Item.id)).all()  # type: ignore[arg-type]
    base = {i.id: {"item_id": i.id, "model": i.model, "task_type": i.task_type, "category": i.category} for i in items}

    judge_rows: list[dict[str, Any]] = []
    status_counts: dict[str, int] = {}
    if jids:
        per_record: dict[tuple[int, str], dict[str, Any]] = {}  # one record per (item, judge)
        verdicts = session.exec(
            select(Verdict)
            .join(Item, Item.id == Verdict.item_id)
            .where(Item.collection_id == col.id, Verdict.judge_id.in_(jids))  # type: ignore[attr-defined]
            .order_by(Verdict.item_id, Verdict.judge_id)
        ).all()
        for v in verdicts:
            status_counts[v.status] = status_counts.get(v.status, 0) + 1
            per_record.setdefault((v.item_id, v.judge_id), dict(base[v.item_id]))[v.dimension] = v.label
        judge_rows = list(per_record.values())

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

    key = GROUP_KEYS.get(by) if by else None
    if rule is not None:
        judge_table = uni_table(judge_rows, key, rule)
        gold_table = uni_table(gold_rows, key, rule) if gold_rows else []
        metric_names = list(UNI_METRICS)
    else:
        compute = _label_shares_compute(dims, labels_of)
        judge_table = metric_table(judge_rows, key, compute)
        gold_table = metric_table(gold_rows, key, compute) if gold_rows else []
        metric_names = [f"{d}:{lab}" for d in dims for lab in labels_of[d]]
    population = _population(session, col.name, jids, by)
    return {
        "population": population,
        "collection": col.name,
        "taxonomy": spec["name"],
        "kind": "uni-safebench" if uni else "label-shares",
        "rule": rule,
        "rule_text": RULE_TEXT.get(rule or "", ""),
        "judge_id": " + ".join(jids) if jids else None,
        "judge_ids": jids,
        "verdict_status": status_counts,
        "gold_snapshot_id": snap.id if snap else None,
        "by": by,
        "metrics": metric_names,
        "judge": judge_table,
        "gold": gold_table,
        "gold_describes": GOLD_DESCRIBES if gold_table else None,
        "n_items": len(items),
    }


def _population(session: Session, collection: str, judge_ids: list[str], by: str | None) -> dict[str, Any]:
    """The people's rates over the collection (human, design-weighted) and the corrected ones,
    per group: what the judge's figures mean for people, with honest intervals.

    The judge's shares above follow the benchmark's counting rule; these follow the review
    sample's design (agreement.population). The corrected figures take one judge's verdicts as
    the predictor, the first of several (``predictor``): PPI corrects one score per item, and
    the merged benchmark labels are not stored as a judge of their own.
    """
    from safereview.agreement.population import population_rates

    predictor = judge_ids[0] if judge_ids else None
    pop = population_rates(session, [collection], judge_id=predictor, by=by)

    def by_name(metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {m["metric"] if "dimension" not in m else f"{m['dimension']}:{m['label']}": m for m in metrics}

    groups = {"all": by_name(pop["metrics"])}
    for g in pop.get("groups", []):
        groups[g["group"]] = by_name(g["metrics"])
    return {
        "sample": pop["sample"],
        "reference": pop["reference"],
        "half_width": pop["half_width"],
        "predictor": predictor,
        "warnings": pop.get("warnings", []),
        "groups": groups,
    }
