"""Judge audit: how far the automated judge agrees with the people, over the whole collection.

The reviewed items are a probability sample (the queue's design, :mod:`safereview.agreement.sample`)
with known inclusion probabilities ``pi``, although borderline items come first. Every rate
here is design-weighted over that sample (Hájek, weights ``1 / pi``) with the Poisson-design
variance, so it speaks for the whole collection, not for the reviewed items:

- **accuracy** = agreement of the judge's label with the people's label distribution on an
  item (its reviews averaged; an adjudicated label replaces them; see
  :func:`safereview.agreement.consensus.soft_reference`). With error-free reviewers this is
  the judge's accuracy; with fallible ones it is agreement with a reviewer, which is lower;
- **under-blocking** = share of the people's unsafe mass the judge lets through, and
  **over-blocking** = share of the safe mass the judge blocks (ratio estimators);
- **per-annotator agreement**: each person against the others' labels on shared items.

Fewer than ``min_n`` sample items in a domain gives no estimate but a "too few items" message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from safereview.agreement import data
from safereview.agreement import items as item_reads
from safereview.agreement import verdicts as verdict_reads
from safereview.agreement.alpha import bca_interval, krippendorff_alpha, paired_alpha_difference
from safereview.agreement.consensus import (
    DEFAULT_THRESHOLD,
    consensus,
    external_ids,
    soft_reference,
)
from safereview.agreement.estimators import Estimate, hajek_mean, hajek_ratio, wilson_interval
from safereview.agreement.kappa import confusion, kappa_from_table
from safereview.agreement.provenance import label_field, label_provenance, provenance_warnings
from safereview.agreement.refit import bootstrap_samples, reference, widened
from safereview.agreement.sample import DesignSample, load_design_sample
from safereview.db.taxonomy import unsafe_labels as unsafe_labels_of
from safereview.workflow.policies import require

DEFAULT_MIN_N = 20


def _rate_dict(est: Estimate, n: int, min_n: int, what: str) -> dict[str, Any]:
    """An estimate in the audit's row form, or the reason there is none."""
    if n < max(min_n, 2) or not np.isfinite(est.value):
        return {
            "value": None,
            "ci_low": None,
            "ci_high": None,
            "n": n,
            "undefined_reason": f"too few sample {what} (n={n} < {max(min_n, 2)})",
        }
    return {
        "value": est.value,
        "ci_low": est.low,
        "ci_high": est.high,
        "se": est.se,
        "n": n,
        "n_eff": est.n_effective,
        "estimand": est.estimand,
        "method": est.method,
    }


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
    """Kappa of judge vs people's consensus label on the sample (design-weighted table), bootstrap interval."""
    n = len(h)
    if n < max(min_n, 2):
        return {"value": None, "n": n, "undefined_reason": f"too few sample items (n={n} < {max(min_n, 2)})"}
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
    out["n_resamples_undefined"] = int(resamples - ok.size)
    if ok.size:
        out["ci_low"], out["ci_high"] = (float(x) for x in np.quantile(ok, [0.025, 0.975]))
    return out


def judge_rates(
    ref: np.ndarray, j: np.ndarray, pi: np.ndarray, unsafe_codes: list[int], min_n: int = DEFAULT_MIN_N
) -> dict[str, Any]:
    """Accuracy, over- and under-blocking of judge codes ``j`` against the people's label
    distribution ``ref`` (items × labels) on sample items with inclusion probabilities ``pi``. Pure."""
    n = len(j)
    agree = ref[np.arange(n), j] if n else np.zeros(0)
    h_unsafe = ref[:, unsafe_codes].sum(axis=1) if n else np.zeros(0)
    j_unsafe = np.isin(j, unsafe_codes).astype(np.float64)
    acc = hajek_mean(agree, pi, estimand="agreement of the judge with the people, over the collection")
    under = hajek_ratio(
        (1.0 - j_unsafe) * h_unsafe, h_unsafe, pi, estimand="share of the people's unsafe items the judge passes"
    )
    over = hajek_ratio(
        j_unsafe * (1.0 - h_unsafe), 1.0 - h_unsafe, pi, estimand="share of the people's safe items the judge blocks"
    )
    return {
        "accuracy": _rate_dict(acc, n, min_n, "items"),
        "over_blocking": _rate_dict(over, int(np.count_nonzero(h_unsafe < 1)), min_n, "items people call safe"),
        "under_blocking": _rate_dict(under, int(np.count_nonzero(h_unsafe > 0)), min_n, "items people call unsafe"),
    }


def confusion_shares(
    ref: np.ndarray, j: np.ndarray, pi: np.ndarray, label_set: Sequence[str], min_n: int = DEFAULT_MIN_N
) -> list[list[dict[str, Any]]]:
    """The confusion matrix as estimated shares of the collection's items, each with its 95%
    interval: cell (r, c) is the share that the people label ``r`` and the judge ``c``
    (Hájek mean of ``ref[:, r]`` where the judge said ``c``; ties count as halves). The cells
    sum to 1. Weighted counts alone would be point estimates a report could not qualify. Pure."""
    n = len(j)
    rows = []
    for r, people in enumerate(label_set):
        row = []
        for c, judge in enumerate(label_set):
            y = ref[:, r] * (j == c) if n else np.zeros(0)
            est = hajek_mean(
                y, pi, estimand=f"share of the collection's items the people label {people} and the judge {judge}"
            )
            row.append(_rate_dict(est, n, min_n, "items"))
        rows.append(row)
    return rows


def annotator_agreement(r: data.Ratings, *, resamples: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """Each annotator against the others on the items they share: the share of the others'
    labels that match theirs (per item, then averaged over the person's items).

    Descriptive (over the items each person reviewed, unweighted): it shows who drifts
    from the rest, not a collection-wide rate. With ``resamples`` each figure gets a
    BCa bootstrap interval over the person's shared items (items with the same
    (matching, others) counts are exchangeable, so their counts are drawn from a multinomial).
    """
    if not r.rater_names or len(r.unit) == 0:
        return []
    counts = r.counts()
    others = counts[r.unit].sum(axis=1) - 1
    same = counts[r.unit, r.code] - 1
    shared = others > 0
    rows = []
    for k, name in enumerate(r.rater_names):
        mine = (r.rater == k) & shared
        n = int(mine.sum())
        row: dict[str, Any] = {
            "annotator": name,
            "items_shared": n,
            "agreement_with_others": float(np.mean(same[mine] / others[mine])) if n else None,
        }
        if resamples > 0:
            row["ci_low"], row["ci_high"] = _mean_share_interval(same[mine], others[mine], resamples, seed + k)
        rows.append(row)
    return sorted(rows, key=lambda x: (x["agreement_with_others"] is None, x["agreement_with_others"] or 0.0))


def _mean_share_interval(
    same: np.ndarray, others: np.ndarray, resamples: int, seed: int
) -> tuple[float | None, float | None]:
    """BCa bootstrap interval of mean(same / others) over items, resampling items."""
    n = len(same)
    if n == 0:
        return None, None
    pat, freq = np.unique(np.stack([same, others], axis=1), axis=0, return_counts=True)
    value = pat[:, 0] / pat[:, 1]
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, freq / freq.sum(), size=resamples).astype(np.float64)
    means = draws @ value / n
    total = float(freq @ value)
    # one item of each pattern left out
    jack = (total - value) / (n - 1) if n > 1 else np.full(len(value), np.nan)
    lo, hi, _ = bca_interval(total / n, means, jack, freq)
    if lo == hi:
        # every resample the same (every item fully agreeing, say): Wilson's interval for a
        # share of n items, which bounds a mean of shares conservatively
        lo, hi = wilson_interval(total / n, n)
    return lo, hi


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
    sample: DesignSample | None = None,
    labels: str = "final",
) -> dict[str, Any]:
    """Judge vs the people on one dimension over the collection: rates with intervals, confusion, kappa, slices.

    ``sample`` is the collections' review sample when the caller already loaded it (one read
    serves every dimension and the population rates). ``labels`` is the people's side:
    "final" (after the reveal in blind review) or "blind" (committed before it); the
    ``warnings`` say when the judge's verdict could have shaped the labels used
    (:mod:`safereview.agreement.provenance`)."""
    from safereview.agreement.report import SLICES, slice_values

    field_name, labels_used = label_field(labels)
    sc = data.scope(bind, collections)
    spec = sc.dimension(dimension)
    label_set = list(spec["labels"])
    unsafe_codes = [label_set.index(x) for x in unsafe_labels_of(spec) if x in label_set]
    jid = judge_id or verdict_reads.default_judge(bind, sc.collection_ids, dimension)
    out: dict[str, Any] = {
        "dimension": dimension,
        "labels": label_set,
        "judge_id": jid,
        "collections": [sc.collection_names[c] for c in sc.collection_ids],
        "estimator": "Hájek (design-weighted) over the review sample",
        "reference": "the people's labels on each item, averaged (ties kept as halves; adjudications replace them)"
        if method == "majority"
        else "Dawid–Skene posterior of the people's labels, fitted with the design's weights; intervals "
        "widened for the fit (adjudications replace it)",
        "labels_used": labels_used,
        "labels_source": labels,
        "min_n": min_n,
    }
    if jid is None:
        out["undefined_reason"] = "no judge verdicts on this dimension"
        return out
    note = verdict_reads.calibration_note(bind, jid, dimension, out["collections"])
    out["reference"] += f"; from {labels_used}"
    out["label_provenance"] = label_provenance(bind, sc.collection_ids, dimension, jid)
    out["warnings"] = [note] if note else []
    out["warnings"] += provenance_warnings(out["label_provenance"], labels, dimension)
    r = data.load_ratings(
        bind, sc.collection_ids, dimension, label_set, ordered=bool(spec.get("ordered")), field_name=field_name
    )
    adj = verdict_reads.load_adjudications(bind, sc.collection_ids, dimension)
    v = verdict_reads.load_verdicts(
        bind, sc.collection_ids, dimension, label_set, jid, unsafe_labels=unsafe_labels_of(spec)
    )
    ds = sample or load_design_sample(bind, sc.collection_ids)
    out["sample"] = ds.as_dict()
    samples = bootstrap_samples(ds, seed=seed) if method == "dawid-skene" else []  # refits widen the intervals
    cons, refits = reference(r, ds, samples, method=method, threshold=threshold, adjudications=adj)
    wanted = [b for b in by if b in SLICES]
    items = item_reads.load_items(bind, sc.collection_ids, wanted) if by else None

    def figures(cons: Any, ds: DesignSample) -> dict[str, Any]:
        """The design-based figures of one reference on one sample (refitted on resamples)."""
        ref, has_ref = soft_reference(cons, ds.sample_ids)
        j = v.codes_for(ds.sample_ids)
        ok = has_ref & (j >= 0)
        ref, j, pi, ids = ref[ok], j[ok], ds.sample_pi[ok], ds.sample_ids[ok]
        got: dict[str, Any] = judge_rates(ref, j, pi, unsafe_codes, min_n)
        got["shares"] = confusion_shares(ref, j, pi, label_set, min_n)
        got["slices"] = {}
        for b in by:
            vals = slice_values(items, b, ids) if len(ids) else np.array([], dtype=object)
            rows = []
            for value in sorted({str(x) for x in vals}):
                dom = np.array([str(x) == value for x in vals], dtype=bool)
                rates = judge_rates(ref[dom], j[dom], pi[dom], unsafe_codes, min_n)
                rows.append({"value": value, "n": int(dom.sum()), **rates})
            got["slices"][b] = rows
        return got

    fig = widened(figures, cons, ds, samples, refits)
    sample_ids, pi = ds.sample_ids, ds.sample_pi
    ref, has_ref = soft_reference(cons, sample_ids)
    j = v.codes_for(sample_ids)
    ok = has_ref & (j >= 0)
    out["n_sample_items"] = len(sample_ids)
    out["n_sample_without_labels"] = int((~has_ref).sum())
    out["n_sample_without_verdict"] = int((has_ref & (j < 0)).sum())
    ref, j, pi, ids = ref[ok], j[ok], pi[ok], sample_ids[ok]
    w = 1.0 / pi
    out["n"] = len(j)
    out.update({k: fig[k] for k in ("accuracy", "over_blocking", "under_blocking")})
    h_hard = cons.codes_for(ids)
    hard = h_hard >= 0
    kind = "quadratic" if spec.get("ordered") and len(label_set) > 2 else "unweighted"
    out["kappa"] = weighted_kappa(
        h_hard[hard], j[hard], w[hard], len(label_set), kind, resamples=resamples, seed=seed, min_n=min_n
    )
    out["confusion"] = {
        "rows": "people (label distribution)",
        "columns": "judge",
        "labels": label_set,
        "counts": confusion(h_hard[hard], j[hard], len(label_set)).astype(int).tolist(),
        "shares": fig["shares"],
    }
    # plain comparison over every reviewed item (biased when review is prioritised)
    all_h = cons.code
    all_j = v.codes_for(cons.item_ids)
    both = (all_h >= 0) & (all_j >= 0)
    out["all_reviewed"] = {
        "n": int(both.sum()),
        "accuracy_unweighted": float((all_h[both] == all_j[both]).mean()) if both.any() else None,
        "note": "every reviewed item, unweighted: describes the reviewed items, not the collection",
    }
    wrong = np.flatnonzero(both & (all_h != all_j))
    shown = wrong[:max_disagreements]
    names = external_ids(bind, [int(cons.item_ids[i]) for i in shown]) if len(shown) else {}
    out["disagreements"] = {
        "n": len(wrong),
        "items": [
            {
                "item_id": int(cons.item_ids[i]),
                "external_id": names.get(int(cons.item_ids[i]), ("", ""))[0],
                "people": label_set[int(all_h[i])],
                "judge": label_set[int(all_j[i])],
                "agreement": None if np.isnan(cons.agreement[i]) else float(cons.agreement[i]),
                "method": str(cons.method[i]),
            }
            for i in shown
        ],
    }
    if by:
        out["slices"] = fig["slices"]
    out["annotators"] = annotator_agreement(r, resamples=resamples, seed=seed)
    # the judge as one more rater
    with_judge = r.add_rater(f"judge:{jid}", v.item_ids, v.code)
    out["judge_as_rater"] = {
        "alpha_without_judge": krippendorff_alpha(r.counts(), r.level, resamples=resamples, seed=seed).as_dict(),
        "alpha_with_judge": krippendorff_alpha(with_judge.counts(), r.level, resamples=resamples, seed=seed).as_dict(),
        # with minus without, its interval from the same resampled items for both
        "alpha_difference": paired_alpha_difference(
            r.counts(), with_judge.counts(), r.level, resamples=resamples, seed=seed
        ).as_dict(),
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
    bind: Any,
    collections: Sequence[str] | None = None,
    *,
    judge_id: str | None = None,
    min_n: int = DEFAULT_MIN_N,
    sample: DesignSample | None = None,
) -> dict[str, Any]:
    """VLSU: among items whose image and text grades the judge got right, the share whose joint
    grade it got wrong, over the collection (design-weighted).

    "Right" on a dimension is the people's probability of the judge's grade (their reviews
    averaged), taken independently per dimension; with one review or unanimous reviews it
    is the plain right/wrong.
    """
    sc = data.scope(bind, collections)
    names = [sc.collection_names[c] for c in sc.collection_ids]
    ds = sample or load_design_sample(bind, sc.collection_ids)
    sample_ids, pi = ds.sample_ids, ds.sample_pi
    right: dict[str, np.ndarray] = {}
    present = np.ones(len(sample_ids), dtype=bool)
    jid = judge_id or verdict_reads.default_judge(bind, sc.collection_ids, "joint")
    if jid is None:
        return {"value": None, "undefined_reason": "no judge verdicts on the joint dimension"}
    for dim in ("image", "text", "joint"):
        spec = sc.dimension(dim)
        cons = consensus(bind, dim, names)
        v = verdict_reads.load_verdicts(bind, sc.collection_ids, dim, spec["labels"], jid)
        ref, has = soft_reference(cons, sample_ids)
        j = v.codes_for(sample_ids)
        present &= has & (j >= 0)
        right[dim] = np.where(j >= 0, ref[np.arange(len(j)), np.maximum(j, 0)], 0.0)
    unimodal = right["image"] * right["text"]
    p, unimodal, joint_wrong = pi[present], unimodal[present], 1.0 - right["joint"][present]
    comp = hajek_ratio(
        unimodal * joint_wrong, unimodal, p, estimand="joint grade wrong among items with both unimodal grades right"
    )
    res = _rate_dict(comp, int(np.count_nonzero(unimodal > 0)), min_n, "items with both unimodal grades right")
    res["judge_id"] = jid
    joint = hajek_mean(joint_wrong, p, estimand="joint grade wrong, over the collection")
    res["joint_error_rate"] = _rate_dict(joint, int(present.sum()), min_n, "items")
    res["sample"] = ds.as_dict()
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
