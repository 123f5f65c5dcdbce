"""Read-only look-ups the pages share (collections with their taxonomy, filter facets).

Streamlit-free; ``review_app.ui`` wraps them in ``st.cache_data`` with short TTLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from safereview.db.models import Collection, Taxonomy
from safereview.db.taxonomy import category_names


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's review settings and its taxonomy's dimensions/categories/guidelines."""

    id: int
    name: str
    blind: bool
    overlap_target: int
    audit_share: float  # the least uniform share of the sampling design
    design_frozen: bool
    design_share: float | None  # the share the frozen design used (raised for concentrated scores)
    reveal_reason: str  # required | optional: a reason for a blind label changed after the reveal
    protect_media: bool  # images and video start blurred and greyscale
    break_minutes: int
    break_unsafe_items: int
    archived: bool
    dims: tuple[dict[str, Any], ...]
    category_options: tuple[str, ...]
    guidelines: str
    taxonomy: str
    warnings: tuple[tuple[str, str], ...] = ()  # category name -> content warning shown before media


def collections(session: Session, *, include_archived: bool = False) -> list[CollectionInfo]:
    q = select(Collection, Taxonomy).join(Taxonomy, Taxonomy.id == Collection.taxonomy_id)  # type: ignore[arg-type]
    if not include_archived:
        q = q.where(Collection.archived.is_(False))  # type: ignore[attr-defined]
    out = []
    for c, t in session.exec(q.order_by(Collection.name)).all():
        spec = t.spec or {}
        out.append(
            CollectionInfo(
                id=c.id,
                name=c.name,
                blind=c.blind,
                overlap_target=c.overlap_target,  # type: ignore[arg-type]
                audit_share=c.audit_share,
                design_frozen=c.design_frozen_at is not None,
                design_share=c.design_share,
                reveal_reason=c.reveal_reason,
                protect_media=c.protect_media,
                break_minutes=c.break_minutes,
                break_unsafe_items=c.break_unsafe_items,
                archived=c.archived,
                dims=tuple(spec.get("dimensions", [])),
                category_options=tuple(category_names(spec)) if spec.get("categories") else (),
                guidelines=str(spec.get("guidelines", "")),
                taxonomy=t.name,
                warnings=tuple(
                    (str(c["name"]), str(c.get("warning") or c["name"])) for c in spec.get("categories", [])
                ),
            )
        )
    return out


FACET_COLUMNS = {"task_types": "task_type", "categories": "category", "models": "model"}
MAX_FACET_VALUES = 5_000


def facets(session: Session, collection_id: int) -> dict[str, list[str]]:
    """Distinct task types, categories and models of a collection (for queue filters).

    A skip scan on the ``(collection_id, <facet>)`` indexes: each step seeks the next value
    above the last one, so the cost is one index seek per distinct value, not a pass over
    the collection's items (three 2 s scans at a million items before).
    """
    out: dict[str, list[str]] = {}
    for name, col in FACET_COLUMNS.items():
        sql = sa.text(
            f"""
            WITH RECURSIVE v(x, n) AS (
                SELECT (SELECT MIN({col}) FROM item WHERE collection_id = :c), 0
                UNION ALL
                SELECT (SELECT MIN({col}) FROM item WHERE collection_id = :c AND {col} > v.x), v.n + 1
                FROM v WHERE v.x IS NOT NULL AND v.n < :cap
            )
            SELECT x FROM v WHERE x IS NOT NULL
            """
        )
        vals = session.execute(sql, {"c": collection_id, "cap": MAX_FACET_VALUES}).scalars()
        out[name] = sorted(v for v in vals if v)
    return out
