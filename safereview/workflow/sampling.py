"""The review queue's sampling design: borderline first, and still a probability sample.

Every item of a collection gets, once, a *design size* ``s_i`` and a random *rank key*
``xi_i = u_i / s_i`` (``u_i`` uniform on (0, 1]); the queue serves items in ascending key
order. This is sequential Poisson (order) sampling, also known as priority sampling
(Ohlsson 1998; Duffield, Lund & Thorup 2007):

- items with a larger size (more borderline) tend to come first, yet every item has a
  positive chance to come early, so what has been reviewed at any moment is a probability
  sample of the whole collection;
- if the first ``n`` items in key order have been reviewed and ``tau`` is the key of the
  next one, item ``i`` is in that sample with probability ``pi_i = min(1, s_i * tau)``
  conditionally on every other item's key, which is exactly what a Horvitz–Thompson or
  Hájek estimator needs (``agreement.sample`` computes it; the variance is that of a
  Poisson sample).

The size mixes the item's borderline score ``b_i`` (:mod:`safereview.workflow.ordering`)
with a uniform floor::

    r_i = min(sqrt(b_i) / mean(sqrt(b)), MAX_RATIO)     (r_i = 1 for all when every b_i = 0)
    s_i = share + (1 - share) * r_i

- the square root follows Neyman allocation: the spread of a 0/1 outcome whose chance is
  p is sqrt(p(1 - p)), and the boundary closeness of a judge's P(unsafe) grows like
  p(1 - p), so sampling in proportion to sqrt(b) spends reviews where answers vary;
- the cap :data:`MAX_RATIO` and the uniform ``share`` bound the weights: no item is more
  than ``(share + (1 - share) * MAX_RATIO) / share`` times as likely as another (about 8
  at the default share of 0.3). An overconfident judge puts nearly all of its
  uncertainty on a few items; without the bounds their neighbours would carry weights
  in the hundreds, and the validation study (docs/statistics-validation.md) saw
  intervals 1.3-1.6 times wider and coverage down to 0.83;
- ``share`` is at least the collection's ``audit_share`` ("uniform share") and at least
  :data:`MIN_UNIFORM_SHARE`; ``share = 1`` is a simple random order. When the judge's
  scores are concentrated (an overconfident judge: nearly every item scores 0), the freeze
  raises the share until the weights' design effect ``mean(s) * mean(1/s)`` (Kish's
  effective-size loss of a sample drawn in proportion to ``s``) is at most
  :data:`MAX_DESIGN_EFFECT`: prioritising on scores that say little costs more interval
  width than it saves (the validation study saw intervals 1.26 times a simple random
  sample's at a design effect of 1.4). A calibrated judge's design effect is about 1.1, so
  its share stays as set. The share used is stored as ``design_share``.

The design freezes at the collection's first queue pull: the mean root score and the share
used are stored and every item's size and key are drawn then. Items imported later get
their size from the frozen mean and share. Re-judging changes ``priority`` (shown to leads) but never a size or a key:
the design that chose the reviewed items must stay the one the estimates use.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.models import Collection, utcnow

if TYPE_CHECKING:
    import numpy as np

MIN_UNIFORM_SHARE = 0.05
MAX_RATIO = 3.0  # the most an item's borderline part may exceed the average
MAX_DESIGN_EFFECT = 1.15  # the freeze raises the uniform share until the weights lose at most this factor
KEY_CHUNK = 5_000  # items keyed per executemany
ANALYZE_AFTER_KEYS = 10_000  # keying this many items refreshes PostgreSQL's statistics of the item table


def design_size(score: float, uniform_share: float, mean_root: float | None) -> float:
    """An item's design size from its borderline score; ``mean_root`` is the collection's mean
    of sqrt(score) frozen with the design."""
    share = min(1.0, max(float(uniform_share), MIN_UNIFORM_SHARE))
    if mean_root is None or mean_root <= 0.0:
        return 1.0
    ratio = min(math.sqrt(max(float(score), 0.0)) / float(mean_root), MAX_RATIO)
    return share + (1.0 - share) * ratio


def _key_rows(
    rows: Iterable[tuple[int, float]], uniform_share: float, mean_score: float | None, rng: random.Random
) -> list[dict[str, float]]:
    out = []
    for item_id, score in rows:
        size = design_size(score or 0.0, uniform_share, mean_score)
        u = 1.0 - rng.random()  # (0, 1]: a key of 0 would tie every item at the front
        out.append({"i": int(item_id), "s": size, "k": u / size})
    return out


def assign_keys(session: Session, collection_id: int, rng: random.Random | None = None) -> int:
    """Give every item of a frozen collection that has no key yet its size and key; returns how many.

    Conditional on ``sample_key IS NULL``, so two replicas keying the same items at once
    keep one draw per item. Does nothing before the design is frozen.
    """
    rng = rng or random.Random()
    row = session.execute(
        sa.text(
            "SELECT COALESCE(design_share, audit_share), design_score_mean, design_frozen_at "
            "FROM collection WHERE id = :c"
        ),
        {"c": collection_id},
    ).first()
    if row is None or row[2] is None:
        return 0
    share, mean_score = float(row[0]), (None if row[1] is None else float(row[1]))
    n = 0
    last = 0
    while True:
        rows = session.execute(
            sa.text(
                "SELECT id, priority FROM item WHERE collection_id = :c AND sample_key IS NULL AND id > :last "
                "ORDER BY id LIMIT :lim"
            ),
            {"c": collection_id, "last": last, "lim": KEY_CHUNK},
        ).all()
        if not rows:
            if n >= ANALYZE_AFTER_KEYS and session.get_bind().dialect.name == "postgresql":
                # The planner's statistics still say these items have no key (an import analyses
                # before they are keyed), so until autovacuum looks again the queue's probe for
                # unkeyed items reads the whole table on every pull: 270 ms a pull at 100k items,
                # and for good where autovacuum is off. ANALYZE sees this transaction's keys.
                session.execute(sa.text("ANALYZE item"))
            return n
        last = int(rows[-1][0])
        params = _key_rows(((int(r[0]), float(r[1] or 0.0)) for r in rows), share, mean_score, rng)
        session.execute(
            sa.text("UPDATE item SET sample_size = :s, sample_key = :k WHERE id = :i AND sample_key IS NULL"), params
        )
        n += len(params)


def design_effect(roots: np.ndarray, share: float) -> float:
    """Kish's design effect ``mean(s) * mean(1/s)`` of a sample drawn in proportion to the
    sizes that ``share`` gives items whose root scores relative to their mean are ``roots``."""
    import numpy as np  # here, not at import: the queue module is on every CLI command's path

    if roots.size == 0:
        return 1.0
    sizes = share + (1.0 - share) * np.minimum(roots, MAX_RATIO)
    return float(np.mean(sizes) * np.mean(1.0 / sizes))


def design_share(roots: np.ndarray, configured: float) -> float:
    """The least share, not below ``configured``, whose design effect is at most :data:`MAX_DESIGN_EFFECT`.

    ``roots`` are sqrt(score) / mean sqrt(score). The design effect falls as the share grows
    (it is 1 at share 1), so a bisection finds the share to within 0.001; it is rounded up
    so that the bound holds.
    """
    low = min(1.0, max(float(configured), MIN_UNIFORM_SHARE))
    if design_effect(roots, low) <= MAX_DESIGN_EFFECT:
        return low
    high = 1.0
    while high - low > 1e-3:
        mid = (low + high) / 2.0
        low, high = (low, mid) if design_effect(roots, mid) <= MAX_DESIGN_EFFECT else (mid, high)
    return min(1.0, math.ceil(high * 1000.0) / 1000.0)


def freeze_design(
    session: Session, collection_id: int, *, rng: random.Random | None = None, now: datetime | None = None
) -> bool:
    """Freeze the collection's design (mean root score, share, every item's size and key); False if it already was.

    The freeze is one conditional UPDATE of the collection row, so concurrent first pulls
    (several replicas) freeze once; the loser keys nothing new and carries on.
    """
    import numpy as np

    chunks: list[np.ndarray] = []
    last = 0
    while True:  # every item's sqrt(score), in chunks (SQLite may lack sqrt)
        rows = session.execute(
            sa.text("SELECT id, priority FROM item WHERE collection_id = :c AND id > :last ORDER BY id LIMIT :lim"),
            {"c": collection_id, "last": last, "lim": KEY_CHUNK},
        ).all()
        if not rows:
            break
        last = int(rows[-1][0])
        chunks.append(np.sqrt(np.maximum(np.array([float(r[1] or 0.0) for r in rows]), 0.0)))
    roots = np.concatenate(chunks) if chunks else np.zeros(0)
    mean = float(roots.mean()) if roots.size else 0.0
    configured = session.execute(
        sa.text("SELECT audit_share FROM collection WHERE id = :c"), {"c": collection_id}
    ).scalar_one()
    share = design_share(roots / mean, float(configured)) if mean > 0.0 else float(configured)
    t = Collection.__table__  # type: ignore[attr-defined]
    res = session.execute(
        t.update()
        .where(t.c.id == collection_id, t.c.design_frozen_at.is_(None))
        .values(design_frozen_at=now or utcnow(), design_score_mean=mean, design_share=share)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    assign_keys(session, collection_id, rng)
    return True


def design_frozen(session: Session, collection_id: int) -> bool:
    row = session.execute(
        sa.text("SELECT design_frozen_at FROM collection WHERE id = :c"), {"c": collection_id}
    ).first()
    return row is not None and row[0] is not None
