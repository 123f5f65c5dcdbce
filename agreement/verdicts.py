"""The judge's side and the lead's side of the statistics: which judges, their verdicts as
codes and P(unsafe), adjudications, and the audit sample with its inclusion probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from safereview.agreement.data import (
    UNSAFE_DEFAULT,
    code_case,
    connection,
    fetch,
    int_matrix,
    item_filter,
    packed_triples,
)
from safereview.db.taxonomy import unsafe_probability


def judges(bind: Any, collection_ids: Sequence[int], dimension: str) -> list[tuple[str, int]]:
    """Judge ids with verdicts on the dimension, most verdicts first."""
    with connection(bind) as conn:
        cond, params = item_filter(conn, collection_ids, "v.item_id")
        rows = fetch(
            conn,
            f"SELECT v.judge_id, COUNT(*) FROM verdict v WHERE v.dimension = :dim AND {cond} "
            "GROUP BY v.judge_id ORDER BY COUNT(*) DESC, v.judge_id",
            {**params, "dim": dimension},
        )
    return [(r[0], int(r[1])) for r in rows]


def default_judge(bind: Any, collection_ids: Sequence[int], dimension: str) -> str | None:
    """The judge with most verdicts on the dimension, preferring raw (uncalibrated) judges."""
    found = judges(bind, collection_ids, dimension)
    raw = [j for j, _ in found if "+cal" not in j]
    return raw[0] if raw else (found[0][0] if found else None)


@dataclass
class Verdicts:
    """One judge's verdicts on one dimension: item ids (sorted), codes (-1 = none/unknown)
    and P(unsafe) where the judge gave probabilities (NaN otherwise)."""

    judge_id: str
    item_ids: np.ndarray
    code: np.ndarray
    p_unsafe: np.ndarray

    def codes_for(self, item_ids: np.ndarray) -> np.ndarray:
        """Codes aligned to ``item_ids`` (-1 where the judge has no usable verdict)."""
        if len(self.item_ids) == 0:
            return np.full(len(item_ids), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.item_ids, item_ids), 0, len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == item_ids, self.code[pos], -1)

    def p_for(self, item_ids: np.ndarray) -> np.ndarray:
        if len(self.item_ids) == 0:
            return np.full(len(item_ids), np.nan)
        pos = np.clip(np.searchsorted(self.item_ids, item_ids), 0, len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == item_ids, self.p_unsafe[pos], np.nan)


def p_unsafe_of(label: str | None, probability: float | None, probs: Any, unsafe_labels: Sequence[str]) -> float:
    """:func:`safereview.db.taxonomy.unsafe_probability` as a float for arrays (NaN when unknown)."""
    p = unsafe_probability(label, probability, probs, unsafe_labels)
    return float("nan") if p is None else p


def load_verdicts(
    bind: Any,
    collection_ids: Sequence[int],
    dimension: str,
    labels: Sequence[str],
    judge_id: str,
    *,
    unsafe_labels: Sequence[str] = UNSAFE_DEFAULT,
    with_probs: bool = False,
) -> Verdicts:
    """One judge's verdicts on a dimension (codes computed in SQL; packed like the ratings)."""
    labels = list(labels)
    with connection(bind) as conn:
        cond, fparams = item_filter(conn, collection_ids, "v.item_id")
        case, lparams = code_case("v.label", labels)
        params = {**fparams, **lparams, "judge": judge_id, "dim": dimension}
        where = f"verdict v WHERE v.judge_id = :judge AND v.dimension = :dim AND {cond}"
        if not with_probs:
            max_item = fetch(conn, "SELECT COALESCE(MAX(id), 0) FROM item")[0][0]
            packed = packed_triples(conn, ("v.item_id", "0", case), where, params, int(max_item), 1, len(labels))
            if packed is not None:
                items, _, code = packed
                order = np.argsort(items, kind="stable")
                return Verdicts(judge_id, items[order], code[order], np.full(len(items), np.nan))
        extra = ", v.label, v.probability, v.probs" if with_probs else ""
        rows = fetch(conn, f"SELECT v.item_id, {case}{extra} FROM {where} ORDER BY v.item_id", params)
    if not with_probs:
        arr = int_matrix(rows, 2)
        return Verdicts(judge_id, arr[:, 0], arr[:, 1], np.full(len(arr), np.nan))
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    code = np.array([r[1] for r in rows], dtype=np.int64)
    p = np.array([p_unsafe_of(r[2], r[3], r[4], unsafe_labels) for r in rows], dtype=np.float64)
    return Verdicts(judge_id, ids, code, p)


def load_adjudications(bind: Any, collection_ids: Sequence[int], dimension: str) -> dict[int, dict[str, Any]]:
    """Newest adjudication per item on the dimension: item_id -> {label, user_id, at, rationale, id}."""
    with connection(bind) as conn:
        # the shared range test: an IN (SELECT id FROM item ...) made SQLite list every item first
        cond, params = item_filter(conn, collection_ids, "a.item_id")
        rows = fetch(
            conn,
            "SELECT a.item_id, a.label, a.user_id, a.at, a.rationale, a.id FROM adjudication a "
            f"WHERE a.dimension = :dim AND {cond} ORDER BY a.item_id, a.at, a.id",
            {**params, "dim": dimension},
        )
    out: dict[int, dict[str, Any]] = {}
    for item_id, label, user_id, at, rationale, adj_id in rows:  # ordered: the newest overwrites
        out[int(item_id)] = {"label": label, "user_id": user_id, "at": at, "rationale": rationale, "id": adj_id}
    return out


def _epoch(value: Any) -> float:
    """Seconds since the epoch from a datetime or SQLite's stored text (UTC)."""
    from datetime import UTC, datetime

    if value is None:
        return float("inf")
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def load_audit_sample(bind: Any, collection_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Items drawn into the random audit stratum and their inclusion probabilities pi_i.

    Follows the queue's sampling design (docs/workflow.md): an audit pull j took the audit
    route with probability ``audit_share`` and then drew uniformly among ``N_elig,j`` eligible
    items, recording ``sampling_prob_j = audit_share / N_elig,j``; so it picks a given
    eligible item with ``q_j = sampling_prob_j / audit_share``. Item i was eligible for every
    audit pull of its collection made up to the moment its k-th overlap slot was taken (its
    fill time; never, if it has fewer than k), except pulls by a reviewer who already held it:

        pi_i = 1 - prod_{j eligible for i} (1 - q_j)

    Assignments without ``sampling_prob`` are ignored; priority and imported assignments
    only count for fill times and "already held".
    """
    with connection(bind) as conn:
        cond, params = item_filter(conn, collection_ids, "s.item_id")
        pulls = fetch(
            conn,
            "SELECT i.collection_id, s.item_id, s.user_id, s.sampling_prob, s.leased_at, "
            "c.audit_share FROM assignment s JOIN item i ON i.id = s.item_id "
            "JOIN collection c ON c.id = i.collection_id WHERE s.stratum = 'audit' "
            f"AND s.sampling_prob IS NOT NULL AND s.sampling_prob > 0 AND {cond}",
            params,
        )
        if not pulls:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        held = fetch(
            conn,
            "SELECT s.item_id, s.user_id, s.leased_at, c.overlap_target FROM assignment s "
            "JOIN item i ON i.id = s.item_id JOIN collection c ON c.id = i.collection_id "
            "WHERE s.status IN ('leased', 'done') AND s.item_id IN (SELECT a.item_id FROM assignment a "
            f"WHERE a.stratum = 'audit' AND a.sampling_prob > 0) AND {cond}",
            params,
        )
    audit_items = {int(r[1]): int(r[0]) for r in pulls}
    holds: dict[int, list[tuple[int, float]]] = {}
    k_of: dict[int, int] = {}
    for item_id, user_id, at, k in held:
        if int(item_id) in audit_items:
            holds.setdefault(int(item_id), []).append((int(user_id), _epoch(at)))
            k_of[int(item_id)] = int(k)
    by_col: dict[int, list[tuple[float, int, float]]] = {}
    own_q: dict[int, float] = {}
    for col, item, user, prob, at, share in pulls:
        q = float(prob) / float(share) if share and float(share) > 0 else float(prob)
        own_q[int(item)] = max(own_q.get(int(item), 0.0), min(q, 1.0))
        by_col.setdefault(int(col), []).append((_epoch(at), int(user), float(np.log1p(-min(max(q, 0.0), 1 - 1e-12)))))
    cum: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    cum_user: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for col, rows in by_col.items():
        rows.sort()
        t = np.array([r[0] for r in rows])
        lg = np.array([r[2] for r in rows])
        cum[col] = (t, np.concatenate([[0.0], np.cumsum(lg)]))
        users = np.array([r[1] for r in rows])
        for u in np.unique(users):
            m = users == u
            cum_user[(col, int(u))] = (t[m], np.concatenate([[0.0], np.cumsum(lg[m])]))

    def upto(series: tuple[np.ndarray, np.ndarray], when: float) -> float:
        times, sums = series
        return float(sums[np.searchsorted(times, when, side="right")])

    ids = np.array(sorted(audit_items), dtype=np.int64)
    pi = np.empty(len(ids))
    for n, item_id in enumerate(ids.tolist()):
        col = audit_items[item_id]
        mine = sorted(holds.get(item_id, []), key=lambda h: h[1])
        k = k_of.get(item_id, 1)
        fill = mine[k - 1][1] if len(mine) >= k else float("inf")
        log_miss = upto(cum[col], fill)
        for user, since in mine:
            if since < fill and (col, user) in cum_user:
                series = cum_user[(col, user)]
                log_miss -= upto(series, fill) - upto(series, since)  # pulls while this reviewer held it
        # never below the chance of the pull that did draw it (guards odd histories, e.g. k lowered later)
        pi[n] = max(1.0 - np.exp(log_miss), own_q[item_id])
    return ids, pi
