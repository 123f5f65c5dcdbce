"""The judge's side and the lead's side of the statistics: which judges, their verdicts as
codes and P(unsafe), and adjudications (the review sample is :mod:`safereview.agreement.sample`)."""

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


def resolve_judge(bind: Any, collection_ids: Sequence[int], dimensions: Sequence[str], given: str | None) -> str | None:
    """The judge a report is about, never a silent pick among several.

    ``given`` may be a judge id or an unambiguous prefix of one (``uni-judger:Qwen/Qwen2.5-VL``
    for ``uni-judger:Qwen/Qwen2.5-VL-7B-Instruct:1a2b3c4d``). Without it, the one raw
    (uncalibrated) judge with verdicts on these dimensions is used; with several, the error
    lists them. None when no judge has verdicts here.
    """
    from safereview.agreement.data import AgreementError

    ids = sorted({j for dim in dimensions for j, _ in judges(bind, collection_ids, dim)})
    if given:
        if given in ids:
            return given
        hits = [j for j in ids if j.startswith(given)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise AgreementError(f"--judge {given!r} matches several judges: {', '.join(hits)}")
        raise AgreementError(f"--judge {given!r} has no verdicts here; judges: {', '.join(ids) or 'none'}")
    raw = [j for j in ids if "+cal" not in j]
    if len(raw) > 1:
        raise AgreementError(
            f"several judges have verdicts here ({', '.join(raw)}): name one with --judge (its id or a unique prefix)"
        )
    return raw[0] if raw else None


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


def calibration_note(bind: Any, judge_id: str | None, dimension: str, collections: Sequence[str]) -> str | None:
    """A warning when ``judge_id``'s verdicts on ``dimension`` come from a calibration fitted
    on labels of ``collections`` (names: the scope being audited).

    Its map and threshold were fitted on the review sample's labels, so its rates measured on
    the same reviews lean optimistic (a cut chosen to pass few unsafe items passes few of those
    very items), and a PPI correction that uses it as predictor has lost its independence from
    the labels. The calibration's own guarantee is the figure that holds. None otherwise,
    also when the calibration was fitted on other collections (then nothing here was selected
    on these labels).
    """
    if not judge_id:
        return None
    with connection(bind) as conn:
        rows = fetch(
            conn,
            "SELECT c.id, c.n_items, c.target_under_blocking, c.metrics FROM calibration c WHERE c.id IN "
            "(SELECT v.calibration_id FROM verdict v WHERE v.judge_id = :j AND v.dimension = :d "
            "AND v.calibration_id IS NOT NULL) ORDER BY c.id",
            {"j": judge_id, "d": dimension},
        )
    if not rows:
        return None
    cal_id, n_items, target = rows[-1][0], rows[-1][1], rows[-1][2]
    metrics = rows[-1][3]
    if isinstance(metrics, str):  # SQLite returns the JSON text
        import json

        metrics = json.loads(metrics)
    if not set((metrics or {}).get("collections") or []) & set(collections):
        return None
    delta = ((metrics or {}).get("threshold") or {}).get("delta")
    promise = (
        f" Report the calibration's own guarantee instead: under-blocking at most {target:g} with probability "
        f"at least {1 - delta:.0%}."
        if target is not None and delta is not None
        else ""
    )
    return (
        f"{judge_id} is calibration {cal_id}, fitted on the people's labels of {n_items} review-sample items here: "
        f"its rates here are measured on the same reviews and lean optimistic, and a correction that uses it "
        f"as predictor is no longer independent of those labels.{promise} For unbiased rates, audit the raw "
        "judge, or apply a calibration fitted on another collection."
    )
