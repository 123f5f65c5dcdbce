"""Taxonomy and collection look-ups shared by import, judge, app and statistics."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from safereview.db.models import Collection, Taxonomy
from safereview.db.taxonomy import resolve, validate


def ensure_taxonomy(session: Session, spec_or_name: dict[str, Any] | str) -> Taxonomy:
    """Store a taxonomy (preset name, file path or spec) once; return the stored row.

    A taxonomy of the same name with a different spec is an error rather than a silent
    overwrite, because stored labels were given under the old one.
    """
    spec = resolve(spec_or_name) if isinstance(spec_or_name, str) else validate(spec_or_name)
    row = session.exec(select(Taxonomy).where(Taxonomy.name == spec["name"])).first()
    if row is None:
        row = Taxonomy(name=spec["name"], version=spec["version"], spec=spec)
        session.add(row)
        session.flush()
    elif row.spec != spec:
        raise ValueError(
            f"taxonomy {spec['name']!r} already exists with a different definition; "
            "give the new one another name or version"
        )
    return row


def ensure_collection(
    session: Session,
    name: str,
    taxonomy: dict[str, Any] | str,
    *,
    overlap_target: int | None = None,
    blind: bool | None = None,
    audit_share: float | None = None,
    description: str | None = None,
) -> Collection:
    """Return the named collection, creating it (with its taxonomy) on first use."""
    tax = ensure_taxonomy(session, taxonomy)
    row = session.exec(select(Collection).where(Collection.name == name)).first()
    if row is None:
        row = Collection(name=name, taxonomy_id=tax.id)  # type: ignore[arg-type]
        session.add(row)
    elif row.taxonomy_id != tax.id:
        raise ValueError(f"collection {name!r} uses another taxonomy than {tax.name!r}")
    for attr, value in (
        ("overlap_target", overlap_target),
        ("blind", blind),
        ("audit_share", audit_share),
        ("description", description),
    ):
        if value is not None:
            setattr(row, attr, value)
    session.flush()
    return row


def taxonomy_of(session: Session, collection: Collection) -> dict[str, Any]:
    tax = session.get(Taxonomy, collection.taxonomy_id)
    assert tax is not None
    return tax.spec
