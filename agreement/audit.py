"""Judge audit: how far the automated judge agrees with the people, estimated without bias.

Review is prioritised toward borderline items, so the reviewed items are not a random
sample and their plain error rate is biased. The queue also draws a uniformly random
*audit stratum* and records each draw's ``sampling_prob``. Every rate here is a Hájek
(ratio) estimator over the audit items, weighting item i by ``w_i = 1 / pi_i``::

    p_hat = sum_i w_i d_i y_i / sum_i w_i d_i

with ``y_i`` the event (judge wrong, judge blocks, ...) and ``d_i`` the domain (e.g. items
people call unsafe). Its variance is the linearisation (with-replacement) estimate
``n/(n-1) * sum_i (w_i d_i (y_i - p_hat))^2 / (sum_i w_i d_i)^2``; the 95% interval is a
Wilson interval on the effective sample size ``p(1-p)/var`` (Kish's ``(sum w)^2/sum w^2``
when p is 0 or 1), which keeps it inside [0, 1] and honest for small n.
Fewer than ``min_n`` items in a domain gives no estimate but a "too few items" message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from safereview.agreement import data
from safereview.agreement import items as item_reads
from safereview.agreement import verdicts as verdict_reads
from safereview.agreement.alpha import krippendorff_alpha
from safereview.agreement.consensus import DEFAULT_THRESHOLD, consensus
from safereview.agreement.kappa import confusion, kappa_from_table
from safereview.db.taxonomy import unsafe_labels as unsafe_labels_of
from safereview.workflow.policies import require

Z95 = 1.959963984540054
DEFAULT_MIN_N = 20


def wilson(p: float, n_eff: float, z: float = Z95) -> tuple[float, float]:
    if n_eff <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n_eff
    center = (p + z * z / (2 * n_eff)) / denom
    half = z * np.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff)) / denom
    return float(max(0.0, center - half)), float(min(1.0, center + half))


def hajek(
    y: np.ndarray, w: np.ndarray, domain: np.ndarray | None = None, *, min_n: int = DEFAULT_MIN_N, what: str = "items"
) -> dict[str, Any]:
    """Weighted share of ``y`` within ``domain`` with a 95% interval (see module docstring)."""
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    d = np.ones(len(y), dtype=bool) if domain is None else np.asarray(domain, dtype=bool)
    n = int(d.sum())
    out: dict[str, Any] = {"n": n}
    if n < max(min_n, 2):
        out.update(
            {
                "value": None,
                "ci_low": None,
                "ci_high": None,
                "undefined_reason": f"too few audit {what} (n={n} < {max(min_n, 2)})",
            }
        )
        return out
    wd = w[d]
    yd = y[d]
    total = wd.sum()
    p = float((wd * yd).sum() / total)
    var = n / (n - 1) * float(((wd * (yd - p)) ** 2).sum()) / total**2
    n_eff = p * (1 - p) / var if var > 0 and 0 < p < 1 else float(total**2 / (wd**2).sum())
    lo, hi = wilson(p, n_eff)
    out.update({"value": p, "ci_low": lo, "ci_high": hi, "n_eff": float(n_eff), "naive": float(yd.mean())})
    return out


def weighted_kappa(
    h: np.ndarray,
    j: np.ndarray,
    w: np.ndarray,
    n_labels: int,
    kind: str,
    *,
    resamples: int = 1000,
    seed: int = 0,
    min_n: int = DEFAULT_MIN_N,
) -> dict[str, Any]:
    """Kappa of judge vs people on the audit items (IPW-weighted table) with a bootstrap interval."""
    n = len(h)
    if n < max(min_n, 2):
        return {"value": None, "n": n, "undefined_reason": f"too few audit items (n={n} < {max(min_n, 2)})"}
    value, reason = kappa_from_table(confusion(h, j, n_labels, w), kind)
    out: dict[str, Any] = {"value": value, "n": n, "weights": kind}
    if value is None:
        out["undefined_reason"] = reason
        return out
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    for b in range(resamples):
        idx = rng.integers(0, n, n)
        v, _ = kappa_from_table(confusion(h[idx], j[idx], n_labels, w[idx]), kind)
        boot[b] = np.nan if v is None else v
    ok = boot[~np.isnan(boot)]
    if ok.size:
        out["ci_low"], out["ci_high"] = (float(x) for x in np.quantile(ok, [0.025, 0.975]))
    return out


def _rates(
    h: np.ndarray, j: np.ndarray, w: np.ndarray, unsafe_codes: list[int], domain: np.ndarray | None, min_n: int
) -> dict[str, Any]:
    d = np.ones(len(h), dtype=bool) if domain is None else domain
    h_unsafe = np.isin(h, unsafe_codes)
    j_unsafe = np.isin(j, unsafe_codes)
    return {
        "accuracy": hajek(j == h, w, d, min_n=min_n),
        "over_blocking": hajek(j_unsafe, w, d & ~h_unsafe, min_n=min_n, what="items people call safe"),
        "under_blocking": hajek(~j_unsafe, w, d & h_unsafe, min_n=min_n, what="items people call unsafe"),
    }


def audit(
    bind: Any,
    dimension: str,
    collections: Sequence[str] | None = None,
    *,
    judge_id: str | None = None,
    by: Sequence[str] = (),
    min_n: int = DEFAULT_MIN_N,
    resamples: int = 1000,
    seed: int = 0,
    method: str = "majority",
    threshold: float = DEFAULT_THRESHOLD,
    max_disagreements: int = 1000,
) -> dict[str, Any]:
    """Judge vs human consensus on one dimension: rates with intervals, confusion, kappa, slices."""
    from safereview.agreement.report import SLICES, slice_values

    sc = data.scope(bind, collections)
    spec = sc.dimension(dimension)
    labels = list(spec["labels"])
    unsafe_codes = [labels.index(x) for x in unsafe_labels_of(spec) if x in labels]
    jid = judge_id or verdict_reads.default_judge(bind, sc.collection_ids, dimension)
    out: dict[str, Any] = {
        "dimension": dimension,
        "labels": labels,
        "judge_id": jid,
        "collections": [sc.collection_names[c] for c in sc.collection_ids],
        "estimator": "Hajek (inverse sampling probability) over the audit stratum",
        "min_n": min_n,
    }
    if jid is None:
        out["undefined_reason"] = "no judge verdicts on this dimension"
        return out
    cons = consensus(bind, dimension, out["collections"], method=method, threshold=threshold)
    v = verdict_reads.load_verdicts(
        bind, sc.collection_ids, dimension, labels, jid, unsafe_labels=unsafe_labels_of(spec)
    )
    audit_ids, pi = verdict_reads.load_audit_sample(bind, sc.collection_ids)
    h = cons.codes_for(audit_ids)
    j = v.codes_for(audit_ids)
    ok = (h >= 0) & (j >= 0)
    out["n_audit_items"] = len(audit_ids)
    out["n_audit_without_consensus"] = int((h < 0).sum())
    out["n_audit_without_verdict"] = int((j < 0).sum())
    h, j, w, ids = h[ok], j[ok], 1.0 / pi[ok], audit_ids[ok]
    out["n"] = len(h)
    out.update(_rates(h, j, w, unsafe_codes, None, min_n))
    kind = "quadratic" if spec.get("ordered") and len(labels) > 2 else "unweighted"
    out["kappa"] = weighted_kappa(h, j, w, len(labels), kind, resamples=resamples, seed=seed, min_n=min_n)
    out["confusion"] = {
        "rows": "people (consensus)",
        "columns": "judge",
        "labels": labels,
        "counts": confusion(h, j, len(labels)).astype(int).tolist(),
        "weighted": confusion(h, j, len(labels), w).round(6).tolist(),
    }
    # naive comparison over every reviewed item (biased when review is prioritised)
    all_h = cons.code
    all_j = v.codes_for(cons.item_ids)
    both = (all_h >= 0) & (all_j >= 0)
    out["all_reviewed"] = {
        "n": int(both.sum()),
        "accuracy_unweighted": float((all_h[both] == all_j[both]).mean()) if both.any() else None,
        "note": "every reviewed item, unweighted: biased when review is prioritised",
    }
    wrong = np.flatnonzero(both & (all_h != all_j))
    out["disagreements"] = {
        "n": len(wrong),
        "items": [
            {
                "item_id": int(cons.item_ids[i]),
                "people": labels[int(all_h[i])],
                "judge": labels[int(all_j[i])],
                "agreement": None if np.isnan(cons.agreement[i]) else float(cons.agreement[i]),
                "method": str(cons.method[i]),
            }
            for i in wrong[:max_disagreements]
        ],
    }
    if by:
        items = item_reads.load_items(bind, sc.collection_ids, [b for b in by if b in SLICES])
        out["slices"] = {}
        for b in by:
            vals = slice_values(items, b, ids) if len(ids) else np.array([], dtype=object)
            rows = []
            for value in sorted({str(x) for x in vals}):
                dom = np.array([str(x) == value for x in vals], dtype=bool)
                rows.append({"value": value, "n": int(dom.sum()), **_rates(h, j, w, unsafe_codes, dom, min_n)})
            out["slices"][b] = rows
    # the judge as one more rater
    r = data.load_ratings(bind, sc.collection_ids, dimension, labels, ordered=bool(spec.get("ordered")))
    with_judge = r.add_rater(f"judge:{jid}", v.item_ids, v.code)
    out["judge_as_rater"] = {
        "alpha_without_judge": krippendorff_alpha(r.counts(), r.level, resamples=resamples, seed=seed).as_dict(),
        "alpha_with_judge": krippendorff_alpha(with_judge.counts(), r.level, resamples=resamples, seed=seed).as_dict(),
    }
    return out


def uni_judger_accuracy(
    bind: Any,
    collections: Sequence[str] | None = None,
    *,
    judge_id: str | None = None,
    min_n: int = DEFAULT_MIN_N,
    seed: int = 0,
) -> dict[str, Any]:
    """Uni-Judger contextual and intrinsic accuracy per task type (Uni-SafeBench's table, with intervals)."""
    out: dict[str, Any] = {}
    for dim in ("contextual", "intrinsic"):
        res = audit(bind, dim, collections, judge_id=judge_id, by=["task_type"], min_n=min_n, resamples=200, seed=seed)
        out[dim] = {
            "overall": res.get("accuracy"),
            "by_task_type": [
                {"task_type": row["value"], **row["accuracy"]} for row in res.get("slices", {}).get("task_type", [])
            ],
        }
    return out


def compositional_error(
    bind: Any, collections: Sequence[str] | None = None, *, judge_id: str | None = None, min_n: int = DEFAULT_MIN_N
) -> dict[str, Any]:
    """VLSU: share of audit items whose joint grade the judge got wrong although it got both the
    image and the text grade right (per the human consensus)."""
    sc = data.scope(bind, collections)
    names = [sc.collection_names[c] for c in sc.collection_ids]
    audit_ids, pi = verdict_reads.load_audit_sample(bind, sc.collection_ids)
    right: dict[str, np.ndarray] = {}
    present = np.ones(len(audit_ids), dtype=bool)
    jid = judge_id or verdict_reads.default_judge(bind, sc.collection_ids, "joint")
    if jid is None:
        return {"value": None, "undefined_reason": "no judge verdicts on the joint dimension"}
    for dim in ("image", "text", "joint"):
        spec = sc.dimension(dim)
        cons = consensus(bind, dim, names)
        v = verdict_reads.load_verdicts(bind, sc.collection_ids, dim, spec["labels"], jid)
        h = cons.codes_for(audit_ids)
        j = v.codes_for(audit_ids)
        present &= (h >= 0) & (j >= 0)
        right[dim] = h == j
    w = 1.0 / np.where(pi > 0, pi, 1.0)
    dom = present & right["image"] & right["text"]
    res = hajek(~right["joint"], w, dom, min_n=min_n, what="items with both unimodal grades right")
    res["judge_id"] = jid
    res["joint_error_rate"] = hajek(~right["joint"], w, present, min_n=min_n)
    return res


# ---------------------------------------------------------------------------------------
# error tags
# ---------------------------------------------------------------------------------------

MAX_TAG = 80
MAX_NOTE = 2000


def tag_error(session: Any, user: Any, item_id: int, dimension: str, judge_id: str, tag: str, note: str = "") -> Any:
    """A lead tags a judge error found in the audit (e.g. "missed compositional harm")."""
    from safereview.db.models import ErrorTag, Item, utcnow
    from safereview.workflow.errors import InvalidInput, NotFound

    require(user, "tag_errors")
    if session.get(Item, item_id) is None:
        raise NotFound(f"no item {item_id}")
    tag = (tag or "").strip()
    if not tag or len(tag) > MAX_TAG:
        raise InvalidInput(f"tag: 1 to {MAX_TAG} characters")
    if len(note or "") > MAX_NOTE:
        raise InvalidInput(f"note: at most {MAX_NOTE} characters")
    row = ErrorTag(
        item_id=item_id, dimension=dimension, judge_id=judge_id, tag=tag, note=note or "", user_id=user.id, at=utcnow()
    )
    session.add(row)
    session.flush()
    return row


def error_tags(
    session: Any, user: Any, collections: Sequence[str] | None = None, dimension: str | None = None
) -> dict[str, Any]:
    """Tags in the collections: counts per tag and the tagged items."""
    require(user, "audit")
    sc = data.scope(session, collections)
    with data.connection(session) as conn:
        marks, params = data._in_list("c", sc.collection_ids)
        sql = (
            "SELECT e.item_id, e.dimension, e.judge_id, e.tag, e.note, e.at, u.username FROM errortag e "
            'JOIN item i ON i.id = e.item_id JOIN "user" u ON u.id = e.user_id '
            f"WHERE i.collection_id IN ({marks or 'NULL'})"
        )
        if dimension:
            sql += " AND e.dimension = :dim"
            params["dim"] = dimension
        rows = data.fetch(conn, sql + " ORDER BY e.at, e.id", params)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[3]] = counts.get(r[3], 0) + 1
    return {
        "counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "tags": [
            {
                "item_id": r[0],
                "dimension": r[1],
                "judge_id": r[2],
                "tag": r[3],
                "note": r[4],
                "at": str(r[5]),
                "by": r[6],
            }
            for r in rows
        ],
    }
