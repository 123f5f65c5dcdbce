"""Borderline-first ordering: a score per item from its judge verdicts.

Pure scoring (:func:`borderline_score`) plus :func:`refresh_priorities`, which import and
judge call after writing verdicts. Higher score = reviewed sooner. The components are
additive so an item that is uncertain in several ways outranks one that is uncertain in
one; each is bounded, so one noisy signal cannot dominate.

=====================  ======  ==================================================
component              weight  when
=====================  ======  ==================================================
boundary               1.0     max over verdicts of ``1 - |2p - 1|``, p = P(unsafe)
contextual/intrinsic   1.0     one dimension says unsafe and the other does not
judges disagree        1.0     two judges give different labels on one dimension
compositional (VLSU)   1.0     image and text safe but joint not safe
borderline label       0.5     any verdict is "borderline"
unparseable / error    0.75    any verdict has no label (judge output unusable)
=====================  ======  ==================================================
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.models import Collection, Item, Taxonomy, Verdict
from safereview.db.taxonomy import unsafe_labels_by_dimension, unsafe_probability

W_BOUNDARY = 1.0
W_CTX_INTRINSIC = 1.0
W_JUDGES_DISAGREE = 1.0
W_COMPOSITIONAL = 1.0
W_BORDERLINE = 0.5
W_UNPARSEABLE = 0.75

UNKNOWN_DIMENSION_UNSAFE = ("unsafe",)  # a verdict on a dimension the taxonomy lacks
CHUNK_IDS = 20_000  # item-id range per refresh step: bounded memory at any collection size
IN_CHUNK = 5_000  # explicit item ids per refresh step (bound parameters per statement stay well under limits)


def boundary_closeness(p_unsafe: float) -> float:
    """1 at p = 0.5, 0 at p = 0 or 1."""
    return 1.0 - abs(2.0 * p_unsafe - 1.0)


def borderline_score(verdicts: Iterable[Mapping[str, Any]], spec: Mapping[str, Any] | None = None) -> float:
    """Score from an item's verdicts (dicts with dimension, label, probability, probs, status, judge_id).

    See the module docstring for the components. An item without verdicts scores 0.
    """
    return Scorer(spec).score(verdicts)


class Scorer:
    """:func:`borderline_score` with the taxonomy's unsafe labels looked up once, for scoring many items."""

    def __init__(self, spec: Mapping[str, Any] | None = None) -> None:
        self.unsafe_by_dim = unsafe_labels_by_dimension(spec)  # type: ignore[arg-type]

    def score(self, verdicts: Iterable[Mapping[str, Any]]) -> float:
        vs = verdicts if isinstance(verdicts, list | tuple) else list(verdicts)
        if not vs:
            return 0.0
        unsafe_by_dim = self.unsafe_by_dim
        score = 0.0

        closeness = 0.0
        by_dim: dict[str, set[str]] = defaultdict(set)
        unparseable = False
        borderline = False
        for v in vs:
            dim = str(v.get("dimension", ""))
            label = v.get("label")
            unsafe = unsafe_by_dim.get(dim, UNKNOWN_DIMENSION_UNSAFE)
            if label is None or v.get("status") in ("unparseable", "error"):
                unparseable = True
                continue
            by_dim[dim].add(label)
            if label == "borderline":
                borderline = True
            p = unsafe_probability(label, v.get("probability"), v.get("probs"), unsafe)
            if p is not None:
                closeness = max(closeness, boundary_closeness(p))
        score += W_BOUNDARY * closeness

        def is_unsafe(dim: str) -> bool | None:
            labels = by_dim.get(dim)
            if not labels:
                return None
            # any judge unsafe → unsafe
            return bool(labels.intersection(unsafe_by_dim.get(dim, UNKNOWN_DIMENSION_UNSAFE)))

        ctx, intr = is_unsafe("contextual"), is_unsafe("intrinsic")
        if ctx is not None and intr is not None and ctx != intr:
            score += W_CTX_INTRINSIC
        if any(len(labels) > 1 for labels in by_dim.values()):
            score += W_JUDGES_DISAGREE
        img, txt, joint = by_dim.get("image"), by_dim.get("text"), by_dim.get("joint")
        if img == {"safe"} and txt == {"safe"} and joint and joint != {"safe"}:
            score += W_COMPOSITIONAL
        if borderline:
            score += W_BORDERLINE
        if unparseable:
            score += W_UNPARSEABLE
        return round(score, 6)


def refresh_priorities(session: Session, collection_id: int, item_ids: Iterable[int] | None = None) -> int:
    """Recompute ``Item.priority`` for a collection's items; return how many changed.

    Without ``item_ids``, every item: the collection is walked in item-id ranges of
    ``CHUNK_IDS`` (per range one verdict query on ``verdict.item_id`` and one executemany of
    the changed priorities), so memory stays bounded and a million items take one pass.
    With ``item_ids`` (what an import or a judge run just touched), only those items: looked
    up in chunks of ``IN_CHUNK`` ids when they are scattered (a thousand new verdicts in a
    million-item collection cost a thousand items' work), or their id range walked when
    they are dense (a fresh import). Items without verdicts get 0.
    """
    col = session.get(Collection, collection_id)
    if col is None:
        raise LookupError(f"no collection with id {collection_id}")
    tax = session.get(Taxonomy, col.taxonomy_id)
    spec = tax.spec if tax is not None else None
    session.flush()
    if item_ids is not None:
        ids = sorted({int(i) for i in item_ids})
        if not ids:
            return 0
        if len(ids) * 2 < ids[-1] - ids[0] + 1:  # scattered ids: look them up; dense ones: walk their range
            chunks = (ids[k : k + IN_CHUNK] for k in range(0, len(ids), IN_CHUNK))
            return sum(
                _rescore(
                    session,
                    spec,
                    collection_id,
                    [Item.id.in_(c)],  # type: ignore[union-attr]
                    [Verdict.item_id.in_(c)],
                )  # type: ignore[attr-defined]
                for c in chunks
            )
        lo, hi = ids[0], ids[-1]
    else:
        lo_hi = session.execute(
            sa.select(sa.func.min(Item.id), sa.func.max(Item.id)).where(Item.collection_id == collection_id)
        ).one()
        if lo_hi[0] is None:
            return 0
        lo, hi = int(lo_hi[0]), int(lo_hi[1])
    return sum(
        _rescore(
            session,
            spec,
            collection_id,
            [Item.id.between(a, min(hi, a + CHUNK_IDS - 1))],  # type: ignore[attr-defined]
            [Verdict.item_id.between(a, min(hi, a + CHUNK_IDS - 1))],
        )  # type: ignore[attr-defined]
        for a in range(lo, hi + 1, CHUNK_IDS)
    )


def _rescore(
    session: Session,
    spec: Mapping[str, Any] | None,
    collection_id: int,
    item_where: list[Any],
    verdict_where: list[Any],
) -> int:
    """Score the collection's items matching ``item_where`` (their verdicts: ``verdict_where``); write changes."""
    items = session.execute(
        sa.select(Item.id, Item.priority).where(Item.collection_id == collection_id, *item_where)
    ).all()
    if not items:
        return 0
    rows = (
        session.execute(
            sa.select(
                Verdict.item_id,
                Verdict.dimension,
                Verdict.judge_id,
                Verdict.label,
                Verdict.status,
                Verdict.probability,
                Verdict.probs,
            )
            .join(Item, Item.id == Verdict.item_id)
            # the item restriction as well: without statistics (no ANALYZE after a CLI import)
            # SQLite otherwise walks every item of the collection per chunk (1.25 s per chunk at
            # 1M items, 0.056 s with it)
            .where(Item.collection_id == collection_id, *item_where, *verdict_where)
        )
        .mappings()
        .all()
    )
    per_item: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        per_item[r["item_id"]].append(r)
    updates = []
    scorer = Scorer(spec)
    for item_id, old in items:
        new = scorer.score(per_item.get(item_id, ()))
        if old is None or abs(float(old) - new) > 1e-9:
            updates.append({"p": new, "i": item_id})
    if updates:
        session.execute(sa.text("UPDATE item SET priority = :p WHERE id = :i"), updates)
    return len(updates)
