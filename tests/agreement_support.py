"""Reference data sets and database helpers for the agreement tests.

Sources (reference values are asserted only where a publication states them):
- Krippendorff, K. (2011). *Computing Krippendorff's Alpha-Reliability*, section C: four
  observers, twelve units, values 1-5 with gaps. alpha nominal 0.743, ordinal 0.815,
  interval 0.849, ratio 0.797. The same data is irrCAC's ``cac.raw4raters`` (Gwet 2014),
  whose README reports percent agreement 0.8181818, Gwet's AC1 0.77544 and Fleiss' kappa
  0.76117 (the single rating of unit 12 sits with another rater there; a unit with one
  rating does not change any of these coefficients).
- Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories,
  kappa = 0.210 (P-bar 0.378, P-bar_e 0.213).
- irrCAC ``distrib.6raters`` (from Fleiss 1971's psychiatric diagnoses; Gwet 2014):
  AC1 0.4448007, Fleiss' kappa 0.4139265, Krippendorff's alpha 0.4204384 (irrCAC README).
- irrCAC ``cont3x3abstractors`` (Gwet 2014): Cohen's kappa 0.7964094, quadratic-weighted
  kappa 0.8921569 (irrCAC weighting vignette), AC1 0.8493305, percent agreement 0.89.
- Dawid & Skene (1979), Table 1: 45 patients, 5 observers (anaesthetists), 4 classes,
  observer 1 rated every patient three times. Transcribed as in Dallas Card's
  ``dawid_skene.py`` (generate_sample_data). The paper's own fitted values are not
  reproduced here (not at hand), so the tests check our EM against an independent loop
  implementation of the paper's equations and against its likelihood properties.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, select

from safereview.db.collections import ensure_collection
from safereview.db.models import Annotation, Item, User, Verdict

NA = None

KRIPPENDORFF_2011: dict[str, list[int | None]] = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, NA, NA, NA],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NA, 3],
    "C": [NA, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NA],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NA],
}
KRIPPENDORFF_2011_ALPHA = {"nominal": 0.743, "ordinal": 0.815, "interval": 0.849, "ratio": 0.797}

WIKIPEDIA_FLEISS = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)

IRRCAC_DISTRIB_6RATERS = np.array(
    [
        [0, 0, 0, 6, 0],
        [0, 3, 0, 0, 3],
        [0, 1, 4, 0, 1],
        [0, 0, 0, 0, 6],
        [0, 3, 0, 3, 0],
        [2, 0, 4, 0, 0],
        [0, 0, 4, 0, 2],
        [2, 0, 3, 1, 0],
        [2, 0, 0, 4, 0],
        [0, 0, 0, 0, 6],
        [1, 0, 0, 5, 0],
        [1, 1, 0, 4, 0],
        [0, 3, 3, 0, 0],
        [1, 0, 0, 5, 0],
        [0, 2, 0, 3, 1],
    ]
)

IRRCAC_CONT3X3 = np.array([[13, 0, 0], [0, 20, 7], [0, 4, 56]])

# patient: observer 1's three ratings, then observers 2..5 (classes 1..4)
DAWID_SKENE_1979 = """
111 1 1 1 1|333 4 3 3 4|112 2 1 2 2|222 3 1 2 1|222 3 2 2 2|222 3 3 2 2|122 2 1 1 1|333 3 4 3 3|222 2 2 2 3
232 2 2 2 3|444 4 4 4 4|222 3 3 4 3|111 1 1 1 1|222 3 2 1 2|121 1 1 1 1|111 2 1 1 1|111 1 1 1 1|111 1 1 1 1
222 2 2 2 1|222 1 3 2 2|222 2 2 2 2|222 2 2 2 1|222 3 2 2 2|221 2 2 2 2|111 1 1 1 1|111 1 1 1 1|232 2 2 2 2
111 1 1 1 1|111 1 1 1 1|112 1 1 2 1|111 1 1 1 1|333 3 2 3 3|111 1 1 1 1|222 2 2 2 2|222 3 2 3 2|433 4 3 4 3
221 2 2 3 2|232 3 2 3 3|333 3 4 3 2|111 1 1 1 1|111 1 1 1 1|121 2 1 1 1|232 2 2 2 2|121 1 1 1 1|222 2 2 2 2
"""


def dawid_skene_triples() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patient, observer, class) triples, 0-based; observer 0 appears three times per patient."""
    units, raters, codes = [], [], []
    records = [r.split() for r in DAWID_SKENE_1979.replace("\n", "|").split("|") if r.strip()]
    assert len(records) == 45, len(records)
    for p, rec in enumerate(records):
        first, *rest = rec
        for ch in first:
            units.append(p)
            raters.append(0)
            codes.append(int(ch) - 1)
        for j, ch in enumerate(rest, start=1):
            units.append(p)
            raters.append(j)
            codes.append(int(ch) - 1)
    return np.array(units), np.array(raters), np.array(codes)


def triples_from_columns(columns: dict[str, list[int | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit, rater, value) from per-rater columns with gaps (None)."""
    u, r, v = [], [], []
    for j, col in enumerate(columns.values()):
        for i, val in enumerate(col):
            if val is not None:
                u.append(i)
                r.append(j)
                v.append(val)
    return np.array(u), np.array(r), np.array(v)


# ---------------------------------------------------------------------------------------
# database helpers
# ---------------------------------------------------------------------------------------


def taxonomy(
    labels: list[str], *, ordered: bool, dimension: str = "score", name: str = "ref", unsafe: list[str] | None = None
) -> dict[str, Any]:
    dim: dict[str, Any] = {"name": dimension, "labels": labels, "ordered": ordered}
    if unsafe is not None:
        dim["unsafe_labels"] = unsafe
    return {"name": name, "dimensions": [dim]}


def write_ratings(
    engine: sa.Engine,
    collection: str,
    tax: dict[str, Any] | str,
    dimension: str,
    columns: dict[str, list[Any]],
    *,
    item_attrs: list[dict[str, Any]] | None = None,
    field_name: str = "labels",
) -> list[int]:
    """Store per-rater label columns (None = not rated) as annotations; return item ids by unit."""
    n_units = max(len(c) for c in columns.values())
    with Session(engine) as s:
        col = ensure_collection(s, collection, tax)
        items = []
        for i in range(n_units):
            attrs = (item_attrs or [{}] * n_units)[i]
            item = Item(collection_id=col.id, external_id=f"{collection}-u{i + 1}", content_hash="x", **attrs)
            s.add(item)
            items.append(item)
        users = {}
        for name in columns:
            user = s.exec(select(User).where(User.username == name)).first()
            if user is None:
                user = User(username=name, password_hash="!x")
                s.add(user)
            users[name] = user
        s.flush()
        for name, col_values in columns.items():
            for i, val in enumerate(col_values):
                if val is None:
                    continue
                labels = {dimension: str(val)}
                ann = Annotation(
                    item_id=items[i].id,
                    user_id=users[name].id,
                    labels=labels if field_name == "labels" else {},
                    blind_labels=labels if field_name == "blind_labels" else None,
                )
                s.add(ann)
        s.commit()
        return [int(it.id) for it in items]  # type: ignore[arg-type]


def write_verdicts(
    engine: sa.Engine,
    item_ids: list[int],
    dimension: str,
    labels: list[str | None],
    judge_id: str,
    *,
    probs: list[dict[str, float] | None] | None = None,
) -> None:
    with Session(engine) as s:
        for k, (iid, lab) in enumerate(zip(item_ids, labels, strict=True)):
            s.add(
                Verdict(
                    item_id=iid,
                    dimension=dimension,
                    judge_id=judge_id,
                    label=lab,
                    status="ok" if lab is not None else "unparseable",
                    probs=probs[k] if probs else None,
                )
            )
        s.commit()


def set_design(engine: sa.Engine, collection_id: int, designs: dict[int, tuple[float, float]]) -> None:
    """Freeze a collection's sampling design with the given (size, key) per item id.

    Lets a test put chosen items in the review sample's prefix with known inclusion
    probabilities ``min(1, size * tau)``, tau being the key of the first unreviewed item.
    """
    from safereview.db.models import Collection, utcnow

    with Session(engine) as s:
        s.execute(sa.update(Collection).where(Collection.id == collection_id).values(design_frozen_at=utcnow()))
        for item_id, (size, key) in designs.items():
            s.execute(sa.update(Item).where(Item.id == item_id).values(sample_size=size, sample_key=key))
        s.commit()


def make_user(engine: sa.Engine, username: str, role: str) -> User:
    with Session(engine, expire_on_commit=False) as s:
        user = User(username=username, password_hash="!x", role=role)
        s.add(user)
        s.commit()
        return user
