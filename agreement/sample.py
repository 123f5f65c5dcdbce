"""Which reviewed items form the probability sample, and with what inclusion probabilities.

The queue serves each collection in ascending rank key (:mod:`safereview.workflow.sampling`).
The sample used for estimation is the *longest reviewed prefix* in that order: the first
``m`` items by key all have at least one finished review, and item ``m + 1`` (key ``tau``)
has none yet. By the priority-sampling argument, item ``i`` of the prefix was included with
probability ``pi_i = min(1, s_i * tau)`` given every other item's key, so Horvitz–Thompson
and Hájek estimators with these ``pi`` are (design-)unbiased and the Poisson-design
variance applies (Duffield, Lund & Thorup 2007; Ohlsson 1998).

Items reviewed beyond the first gap (someone was quicker than a colleague holding the gap
item, a reviewer used a filter, or an item was skipped and waits for someone else) are not
used until the gap is filled; nor are reviews imported from outside the queue unless they
happen to complete the prefix. Both are counted and the gap item is named, so a lead
sees why a figure rests on fewer reviews than were done. A collection whose every item is
reviewed is a census (``pi = 1``) whatever its design.

Collections are independent designs: each has its own prefix and ``tau``, and a scope of
several collections is their union (a stratified sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safereview.agreement.data import connection, fetch, item_filter


def prefix_inclusion(key: np.ndarray, size: np.ndarray, reviewed: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The reviewed prefix in key order of one collection: (mask, pi, tau). Pure.

    ``pi`` is ``min(1, size * tau)`` inside the prefix and NaN outside; ``tau`` is the key
    of the first unreviewed item (infinity when every item is reviewed).
    """
    key = np.asarray(key, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    reviewed = np.asarray(reviewed, dtype=bool)
    order = np.argsort(key, kind="stable")
    gaps = np.flatnonzero(~reviewed[order])
    m = int(gaps[0]) if gaps.size else len(key)
    tau = float(key[order[m]]) if m < len(key) else float("inf")
    mask = np.zeros(len(key), dtype=bool)
    mask[order[:m]] = True
    pi = np.full(len(key), np.nan)
    pi[mask] = np.minimum(1.0, size[mask] * tau) if np.isfinite(tau) else 1.0
    return mask, pi, tau


@dataclass
class CollectionDesign:
    """One collection's part of the sample, with what a lead needs to read it."""

    collection_id: int
    n_items: int
    n_reviewed: int
    n_in_sample: int
    frozen: bool
    tau: float
    gap_item_id: int | None  # the first item in key order without a review (it ends the prefix)
    gap_state: str  # "in review" | "skipped" | "not yet offered" | ""
    n_unkeyed: int  # items not in the design yet (they arrived after the freeze; keyed at the next pull)
    gap_external_id: str = ""  # the gap item as people know it (its id in the imported file)

    @property
    def n_reviewed_outside(self) -> int:
        return self.n_reviewed - self.n_in_sample

    def note(self) -> str:
        """A plain sentence on what limits the sample, or ""."""
        if self.n_in_sample == self.n_items:
            return ""
        parts = []
        if not self.frozen:
            parts.append("no review through the queue yet, so there is no sampling design to estimate from")
        elif self.gap_item_id is not None and self.n_reviewed_outside:
            n, gap = self.n_reviewed_outside, self.gap_external_id or self.gap_item_id
            parts.append(
                f"{n} reviewed item{'s wait' if n != 1 else ' waits'} for item {gap} ({self.gap_state}), "
                "the next in the design's order"
            )
        if self.n_unkeyed:
            n = self.n_unkeyed
            parts.append(
                f"{n} item{'s' if n != 1 else ''} joined after the design froze and {'are' if n != 1 else 'is'} "
                "not covered yet"
            )
        return "; ".join(parts)


@dataclass
class DesignSample:
    """Every item in scope (sorted by id) with its place in the sample."""

    item_ids: np.ndarray
    collection_ids: np.ndarray
    in_sample: np.ndarray
    pi: np.ndarray
    collections: list[CollectionDesign] = field(default_factory=list)

    @property
    def sample_ids(self) -> np.ndarray:
        return self.item_ids[self.in_sample]

    @property
    def sample_pi(self) -> np.ndarray:
        return self.pi[self.in_sample]

    @property
    def n_reviewed(self) -> int:
        return sum(c.n_reviewed for c in self.collections)

    @property
    def n_reviewed_outside(self) -> int:
        return sum(c.n_reviewed_outside for c in self.collections)

    def notes(self) -> list[str]:
        return [n for c in self.collections if (n := c.note())]

    def as_dict(self) -> dict[str, Any]:
        return {
            "design": "sequential Poisson (order) sampling in rank-key order; longest reviewed prefix",
            "n_items": len(self.item_ids),
            "n_reviewed": self.n_reviewed,
            "n_in_sample": int(self.in_sample.sum()),
            "n_reviewed_outside_sample": self.n_reviewed_outside,
            "notes": self.notes(),
        }


def load_design_sample(bind: Any, collection_ids: Sequence[int]) -> DesignSample:
    """The sample of the collections' reviewed items and their inclusion probabilities."""
    with connection(bind) as conn:
        cond, params = item_filter(conn, collection_ids, "i.id")
        rows = fetch(
            conn,
            "SELECT i.id, i.collection_id, i.sample_size, i.sample_key, "
            "CASE WHEN EXISTS (SELECT 1 FROM annotation a WHERE a.item_id = i.id) THEN 1 ELSE 0 END "
            f"FROM item i WHERE {cond} ORDER BY i.id",
            params,
        )
        marks = ", ".join(f":c{n}" for n in range(len(collection_ids)))
        frozen = {
            int(r[0]): r[1] is not None
            for r in fetch(
                conn,
                f"SELECT id, design_frozen_at FROM collection WHERE id IN ({marks or 'NULL'})",
                {f"c{n}": int(c) for n, c in enumerate(collection_ids)},
            )
        }
        ids = np.array([int(r[0]) for r in rows], dtype=np.int64)
        col = np.array([int(r[1]) for r in rows], dtype=np.int64)
        size = np.array([np.nan if r[2] is None else float(r[2]) for r in rows])
        key = np.array([np.nan if r[3] is None else float(r[3]) for r in rows])
        reviewed = np.array([bool(r[4]) for r in rows], dtype=bool)
        in_sample = np.zeros(len(ids), dtype=bool)
        pi = np.full(len(ids), np.nan)
        designs = []
        for c in sorted(set(int(x) for x in collection_ids)):
            at = np.flatnonzero(col == c)
            keyed = at[~np.isnan(key[at])]
            n_unkeyed = len(at) - len(keyed)
            if reviewed[at].all() and len(at):
                in_sample[at] = True  # a census: every item reviewed, whatever the design
                pi[at] = 1.0
                tau, gap = float("inf"), None
            elif frozen.get(c) and len(keyed):
                mask, p, tau = prefix_inclusion(key[keyed], size[keyed], reviewed[keyed])
                in_sample[keyed] = mask
                pi[keyed] = p
                gap = None if not np.isfinite(tau) else int(keyed[np.flatnonzero(key[keyed] == tau)[0]])
            else:
                tau, gap = float("nan"), None
            gap_id = None if gap is None else int(ids[gap])
            designs.append(
                CollectionDesign(
                    collection_id=c,
                    n_items=len(at),
                    n_reviewed=int(reviewed[at].sum()),
                    n_in_sample=int(in_sample[at].sum()),
                    frozen=bool(frozen.get(c)),
                    tau=tau,
                    gap_item_id=gap_id,
                    gap_state=_gap_state(conn, gap_id) if gap_id is not None else "",
                    n_unkeyed=n_unkeyed if frozen.get(c) else 0,
                    gap_external_id=_external_id(conn, gap_id) if gap_id is not None else "",
                )
            )
    return DesignSample(ids, col, in_sample, pi, designs)


def _external_id(conn: Any, item_id: int) -> str:
    rows = fetch(conn, "SELECT external_id FROM item WHERE id = :i", {"i": item_id})
    return str(rows[0][0]) if rows else ""


def _gap_state(conn: Any, item_id: int) -> str:
    rows = fetch(conn, "SELECT status FROM assignment WHERE item_id = :i", {"i": item_id})
    states = {r[0] for r in rows}
    if "leased" in states:
        return "in review"
    if "skipped" in states:
        return "skipped by someone; waiting for another reviewer"
    return "not yet offered"
