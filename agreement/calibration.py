"""Calibration of a judge's probability of "unsafe" against what people say.

Target: for each item with human labels, ``y`` = share of its annotators who chose an
unsafe label (a soft label; 0/1 when they agree). Prediction: the judge's P(unsafe) from
``Verdict.probs`` (sum over unsafe labels) or ``Verdict.probability`` (see
:func:`agreement.verdict_reads.p_unsafe_of`). Verdicts without a probability are left out.

Metrics: reliability diagram (equal-width bins), expected calibration error
``ECE = sum_b n_b/N |mean p_b - mean y_b|`` and Brier score ``mean (p - y)^2``, for the raw
and the calibrated probabilities, in-sample and K-fold cross-validated (the in-sample
isotonic ECE is optimistic). Maps: isotonic (scipy's PAVA ``isotonic_regression``, applied
by linear interpolation between fitted points) or Platt (logistic on logit(p), fitted by
maximum likelihood with scipy). A threshold is chosen so the share of people-unsafe items
the calibrated judge lets through (under-blocking) stays at or below a target.

Applying a calibration adds *new* verdict rows (judge id ``<judge_id>+cal<id>``,
``calibration_id`` set) beside the raw ones; raw verdicts are never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from safereview.agreement import data
from safereview.agreement import verdicts as verdict_reads
from safereview.agreement.consensus import consensus, soft_reference
from safereview.agreement.estimators import Estimate, hajek_mean, hajek_ratio, ratio_upper_bound
from safereview.agreement.sample import load_design_sample
from safereview.db.taxonomy import unsafe_labels as unsafe_labels_of
from safereview.workflow.policies import require

EPS = 1e-6
DEFAULT_DELTA = 0.1  # the chance that the chosen threshold under-blocks beyond its target


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10, w: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Reliability-diagram rows: per equal-width bin, count, (weighted) mean predicted and observed."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(len(p)) if w is None else np.asarray(w, dtype=np.float64)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        wm = float(w[m].sum())
        rows.append(
            {
                "bin_low": b / bins,
                "bin_high": (b + 1) / bins,
                "n": n,
                "weight": wm,
                "mean_predicted": float(np.sum(w[m] * p[m]) / wm) if n else None,
                "observed": float(np.sum(w[m] * y[m]) / wm) if n else None,
            }
        )
    return rows


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10, w: np.ndarray | None = None) -> float | None:
    """Expected calibration error, each bin weighted by its (design) weight share."""
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return None
    rows = reliability(p, y, bins, w)
    total = sum(r["weight"] for r in rows)
    return float(sum(r["weight"] / total * abs(r["mean_predicted"] - r["observed"]) for r in rows if r["n"]))


def brier(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float | None:
    p = np.asarray(p, dtype=np.float64)
    if not p.size:
        return None
    w = np.ones(len(p)) if w is None else np.asarray(w, dtype=np.float64)
    return float(np.sum(w * (p - np.asarray(y, dtype=np.float64)) ** 2) / w.sum())


# ---------------------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------------------


def fit_isotonic(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> dict[str, Any]:
    """Monotone non-decreasing map p -> P(unsafe) (weighted PAVA on the distinct predicted values)."""
    from scipy.optimize import isotonic_regression

    x, inv = np.unique(np.asarray(p, dtype=np.float64), return_inverse=True)
    ww = np.ones(len(inv)) if w is None else np.asarray(w, dtype=np.float64)
    wsum = np.bincount(inv, weights=ww)
    ym = np.bincount(inv, weights=ww * np.asarray(y, dtype=np.float64)) / wsum
    fitted = isotonic_regression(ym, weights=wsum, increasing=True).x
    return {"x": x.tolist(), "y": np.clip(fitted, 0.0, 1.0).tolist()}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def fit_platt(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> dict[str, Any]:
    """Logistic map ``sigmoid(a * logit(p) + b)`` by (weighted) maximum likelihood; soft targets allowed."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    z = _logit(p)
    y = np.asarray(y, dtype=np.float64)
    ww = np.ones(len(z)) if w is None else np.asarray(w, dtype=np.float64)
    ww = ww / ww.sum()

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        s = theta[0] * z + theta[1]
        loss = -np.sum(ww * (y * log_expit(s) + (1 - y) * log_expit(-s)))
        g = ww * (expit(s) - y)
        return float(loss), np.array([np.sum(g * z), np.sum(g)])

    res = minimize(nll, np.array([1.0, 0.0]), jac=True, method="BFGS")
    return {"a": float(res.x[0]), "b": float(res.x[1])}


def apply_map(method: str, params: dict[str, Any], p: np.ndarray) -> np.ndarray:
    """Calibrated P(unsafe) for raw probabilities ``p``."""
    p = np.asarray(p, dtype=np.float64)
    if method == "isotonic":
        return np.interp(p, np.asarray(params["x"]), np.asarray(params["y"]))
    if method == "platt":
        from scipy.special import expit

        return expit(params["a"] * _logit(p) + params["b"])
    raise data.AgreementError("calibration method must be isotonic or platt")


def fit_map(method: str, p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> dict[str, Any]:
    if method == "isotonic":
        return fit_isotonic(p, y, w)
    if method == "platt":
        return fit_platt(p, y, w)
    raise data.AgreementError("calibration method must be isotonic or platt")


# ---------------------------------------------------------------------------------------
# the threshold: an upper confidence bound on the collection's under-blocking
# ---------------------------------------------------------------------------------------


def under_blocking_ucb(
    p: np.ndarray, h: np.ndarray, pi: np.ndarray, cut: float, delta: float
) -> tuple[Estimate, float]:
    """Design-weighted under-blocking of "block when p >= cut" and its one-sided (1 - delta) upper bound.

    The bound is Fay & Feuer's gamma bound (:func:`safereview.agreement.estimators.ratio_upper_bound`):
    it stays above 0 when no unsafe item in the sample slips through and holds its level
    with the handful of weighted events a small target leaves in the sample.
    """
    passes = (p < cut).astype(np.float64)
    est = hajek_ratio(passes * h, h, pi, estimand="share of the people's unsafe items the rule lets through")
    if not np.isfinite(est.value):
        return est, 1.0
    return est, ratio_upper_bound(passes * h, h, pi, delta)


def threshold_for_under_blocking(
    p: np.ndarray, h: np.ndarray, pi: np.ndarray, target: float, delta: float = DEFAULT_DELTA
) -> dict[str, Any]:
    """The least blocking cut on the judge's raw P(unsafe) whose collection-wide under-blocking
    is at most ``target`` with probability at least ``1 - delta``.

    Fixed-sequence testing (as in Learn-then-Test): cuts are tried from the most blocking up;
    under-blocking can only grow with the cut, so stopping at the first cut whose upper
    confidence bound exceeds the target controls the chance of a wrong pick at ``delta``
    without any multiplicity correction. ``h`` is the people's unsafe share per sample item.
    """
    p, h, pi = (np.asarray(a, dtype=np.float64) for a in (p, h, pi))
    if not np.any(h > 0):
        return {"threshold": None, "undefined_reason": "no sample items people call unsafe"}
    cuts = np.unique(p)
    cuts = np.append(cuts, np.nextafter(cuts[-1], np.inf))
    chosen: float | None = None
    chosen_ucb = None
    for c in cuts:
        _, ucb = under_blocking_ucb(p, h, pi, float(c), delta)
        if ucb > target:
            break
        chosen, chosen_ucb = float(c), ucb
    if chosen is None:
        return {
            "threshold": 0.0,
            "raw_threshold": 0.0,
            "undefined_reason": f"no cut keeps under-blocking at or below {target:g} with confidence "
            f"{1 - delta:.0%} on {int((h > 0).sum())} unsafe sample items: everything is blocked; review more items",
            "target": target,
            "delta": delta,
        }
    est, _ = under_blocking_ucb(p, h, pi, chosen, delta)
    blocks = (p >= chosen).astype(np.float64)
    over = hajek_ratio(blocks * (1 - h), 1 - h, pi, estimand="share of the people's safe items the rule blocks")
    return {
        "raw_threshold": chosen,
        "target": target,
        "delta": delta,
        "under_blocking": est.as_dict(),
        "under_blocking_upper_bound": chosen_ucb,
        "over_blocking": over.as_dict(),
        "n_unsafe": int(np.count_nonzero(h > 0)),
        "n_safe": int(np.count_nonzero(h < 1)),
    }


def cross_fitted(
    method: str,
    p: np.ndarray,
    y: np.ndarray,
    pi: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    bins: int = 10,
) -> dict[str, Any]:
    """Out-of-fold calibrated probabilities (each item's map fitted without it) and their
    design-weighted ECE and Brier score, raw vs calibrated.

    The Brier scores and their change (calibrated minus raw, paired on the same items) are
    means over the collection and get design-based 95% intervals: a change whose interval
    lies below 0 is a real gain. Binned ECE gets no interval: noise inflates it, and its
    bootstrap interval does not even contain the estimate at usual sample sizes, so it is
    shown as a description only.
    """
    n = len(p)
    if n < 2 * folds:
        return {"folds": folds, "undefined_reason": f"too few items for {folds}-fold cross-fitting (n={n})"}
    w = 1.0 / pi
    order = np.random.default_rng(seed).permutation(n)
    q = np.empty(n)
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        q[test] = apply_map(method, fit_map(method, p[train], y[train], w[train]), p[test])
    return {
        "folds": folds,
        "ece_raw": ece(p, y, bins, w),
        "ece_calibrated": ece(q, y, bins, w),
        "brier_raw": hajek_mean((p - y) ** 2, pi, estimand="Brier score of the raw probabilities").as_dict(),
        "brier_calibrated": hajek_mean((q - y) ** 2, pi, estimand="Brier score, cross-fitted").as_dict(),
        "brier_change": hajek_mean(
            (q - y) ** 2 - (p - y) ** 2, pi, estimand="Brier score change, calibrated minus raw", bounded=False
        ).as_dict(),
        "reliability_calibrated": reliability(q, y, bins, w),
    }


# ---------------------------------------------------------------------------------------
# database
# ---------------------------------------------------------------------------------------


def calibration_data(
    bind: Any,
    dimension: str,
    collections: Sequence[str] | None = None,
    *,
    judge_id: str | None = None,
    method: str = "majority",
    labels: str = "final",
) -> dict[str, Any]:
    """The review sample's items with a judge probability: ids, raw p, the people's unsafe share, pi.

    Only items of the design sample (:mod:`safereview.agreement.sample`) enter, with their
    inclusion probabilities: the borderline items the queue favoured are weighted down to
    their share of the collection, so maps, scores and the threshold describe the collection.
    """
    from safereview.agreement.provenance import label_field, label_provenance, provenance_warnings

    field_name, labels_used = label_field(labels)
    sc = data.scope(bind, collections)
    spec = sc.dimension(dimension)
    label_set = list(spec["labels"])
    unsafe_labels = unsafe_labels_of(spec)
    jid = judge_id or verdict_reads.default_judge(bind, sc.collection_ids, dimension)
    if jid is None:
        raise data.AgreementError(f"no judge verdicts on dimension {dimension!r}")
    names = [sc.collection_names[c] for c in sc.collection_ids]
    cons = consensus(bind, dimension, names, method=method, field_name=field_name)
    v = verdict_reads.load_verdicts(
        bind, sc.collection_ids, dimension, label_set, jid, unsafe_labels=unsafe_labels, with_probs=True
    )
    ds = load_design_sample(bind, sc.collection_ids)
    ref, has = soft_reference(cons, ds.sample_ids)
    unsafe_codes = [label_set.index(x) for x in unsafe_labels if x in label_set]
    y = ref[:, unsafe_codes].sum(axis=1)
    p = v.p_for(ds.sample_ids)
    ok = np.isfinite(p) & has
    return {
        "judge_id": jid,
        "labels": label_set,
        "labels_used": labels_used,
        "warnings": provenance_warnings(label_provenance(bind, sc.collection_ids, dimension, jid), labels, dimension),
        "unsafe_labels": list(unsafe_labels),
        "item_ids": ds.sample_ids[ok],
        "p": np.clip(p[ok], 0.0, 1.0),
        "y": y[ok],
        "pi": ds.sample_pi[ok],
        "n_sample_without_probability": int((has & ~np.isfinite(p)).sum()),
        "sample": ds.as_dict(),
        "collections": names,
    }


def fit_calibration(
    session: Any,
    user: Any,
    dimension: str,
    collections: Sequence[str] | None = None,
    *,
    judge_id: str | None = None,
    method: str = "isotonic",
    target_under_blocking: float = 0.05,
    delta: float = DEFAULT_DELTA,
    bins: int = 10,
    folds: int = 5,
    seed: int = 0,
    min_n: int = 20,
    labels: str = "final",
) -> tuple[Any, dict[str, Any]]:
    """Fit, evaluate and store a :class:`db.models.Calibration`; return (row, metrics).

    The map is fitted on the whole sample with design weights; its quality is reported
    out of sample (cross-fitted). The stored ``threshold`` is a cut on the judge's *raw*
    P(unsafe) (block when p >= threshold), chosen so the collection's under-blocking is at
    most the target with probability at least ``1 - delta``
    (:func:`threshold_for_under_blocking`). ``user`` must be allowed to "calibrate". ``labels``:
    the people's "final" or "blind" labels (:mod:`safereview.agreement.provenance`); the
    guarantee is about the labels used, and ``warnings`` say when the judge could have shaped them.
    """
    from safereview.db.models import Calibration, utcnow

    require(user, "calibrate")
    if not 0.0 <= target_under_blocking <= 1.0:
        raise data.AgreementError("target under-blocking must be between 0 and 1")
    if not 0.0 < delta < 1.0:
        raise data.AgreementError("delta must be between 0 and 1 (e.g. 0.1)")
    d = calibration_data(session, dimension, collections, judge_id=judge_id, labels=labels)
    p, y, pi = d["p"], d["y"], d["pi"]
    if len(p) < min_n:
        raise data.AgreementError(
            f"too few sample items with a judge probability and human labels (n={len(p)} < {min_n}); "
            "review more items or lower --min-n"
        )
    w = 1.0 / pi
    params = fit_map(method, p, y, w)
    q = apply_map(method, params, p)
    thr = threshold_for_under_blocking(p, y, pi, target_under_blocking, delta)
    if thr.get("raw_threshold") is not None:
        thr["calibrated_threshold"] = float(apply_map(method, params, np.array([thr["raw_threshold"]]))[0])
    metrics = {
        "n": len(p),
        "bins": bins,
        "collections": d["collections"],
        "sample": d["sample"],
        "weights": "design weights 1/pi of the review sample",
        "labels_used": d["labels_used"],
        "warnings": d["warnings"],
        "rule": "block when the judge's raw P(unsafe) >= threshold",
        "ece_raw": ece(p, y, bins, w),
        "brier_raw": brier(p, y, w),
        "ece_calibrated_in_sample": ece(q, y, bins, w),
        "brier_calibrated_in_sample": brier(q, y, w),
        "cross_validated": cross_fitted(method, p, y, pi, folds=folds, seed=seed, bins=bins),
        "reliability_raw": reliability(p, y, bins, w),
        "reliability_calibrated": reliability(q, y, bins, w),
        "threshold": thr,
    }
    row = Calibration(
        judge_id=d["judge_id"],
        dimension=dimension,
        method=method,
        params=params,
        metrics=metrics,
        threshold=thr.get("raw_threshold"),
        target_under_blocking=target_under_blocking,
        n_items=len(p),
        created_by=getattr(user, "username", ""),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, metrics


def calibrated_judge_id(judge_id: str, calibration_id: int) -> str:
    suffix = f"+cal{calibration_id}"
    return judge_id[: 80 - len(suffix)] + suffix


def apply_calibration(
    session: Any, user: Any, calibration_id: int, collections: Sequence[str] | None = None
) -> dict[str, Any]:
    """Write calibrated verdicts beside the raw ones (skips items that already have one)."""
    import sqlalchemy as sa

    from safereview.db.models import Calibration, JudgeConfig, Verdict, utcnow

    require(user, "calibrate")
    cal = session.get(Calibration, calibration_id)
    if cal is None:
        raise data.AgreementError(f"no calibration {calibration_id}")
    sc = data.scope(session, collections)
    spec = sc.dimension(cal.dimension)
    labels = list(spec["labels"])
    unsafe_labels = unsafe_labels_of(spec)
    safe_labels = [lab for lab in labels if lab not in unsafe_labels]
    new_id = calibrated_judge_id(cal.judge_id, int(cal.id))
    with data.connection(session) as conn:
        marks, params = data._in_list("c", sc.collection_ids)
        rows = data.fetch(
            conn,
            "SELECT v.item_id, v.label, v.probability, v.probs, v.judge_version FROM verdict v "
            "WHERE v.judge_id = :j AND v.dimension = :d AND v.item_id IN (SELECT id FROM item "
            f"WHERE collection_id IN ({marks or 'NULL'})) AND v.item_id NOT IN (SELECT item_id "
            "FROM verdict WHERE judge_id = :new AND dimension = :d) ORDER BY v.item_id",
            {**params, "j": cal.judge_id, "d": cal.dimension, "new": new_id},
        )
    p = np.array([verdict_reads.p_unsafe_of(r[1], r[2], r[3], unsafe_labels) for r in rows], dtype=np.float64)
    ok = np.isfinite(p)
    q = apply_map(cal.method, cal.params, np.clip(p, 0, 1)) if len(p) else p
    thr = cal.threshold if cal.threshold is not None else 0.5
    # Calibrations since the sampling design cut the raw probability (the certified rule);
    # older ones cut the calibrated one.
    on_raw = (cal.metrics or {}).get("rule", "").startswith("block when the judge's raw")
    now = utcnow()
    new_rows = []
    for k, r in enumerate(rows):
        if not ok[k]:
            continue
        block = bool((p[k] if on_raw else q[k]) >= thr)
        if block:
            label = unsafe_labels[0]
        elif r[1] in safe_labels:
            label = r[1]
        else:
            label = safe_labels[0] if safe_labels else None
        new_rows.append(
            {
                "item_id": int(r[0]),
                "dimension": cal.dimension,
                "judge_id": new_id,
                "judge_version": r[4] or "",
                "label": label,
                "status": "ok",
                "probability": float(q[k]) if block else float(1 - q[k]),
                "score": float(q[k]),
                "rationale": f"calibrated from {cal.judge_id} by calibration {cal.id} ({cal.method}); "
                f"P(unsafe)={q[k]:.4f}; blocks when {'raw' if on_raw else 'calibrated'} P(unsafe) >= {thr:.4f}",
                "raw_output": "",
                "intent": "",
                "calibration_id": int(cal.id),
                "created_at": now,
            }
        )
    if session.get(JudgeConfig, new_id) is None:
        session.add(
            JudgeConfig(
                id=new_id,
                protocol="calibrated",
                model=cal.judge_id,
                prompt_version="",
                params={"calibration_id": cal.id, "method": cal.method, "threshold": thr},
            )
        )
        session.flush()
    if new_rows:
        session.execute(sa.insert(Verdict.__table__), new_rows)  # type: ignore[attr-defined]
    return {"judge_id": new_id, "written": len(new_rows), "skipped_without_probability": int((~ok).sum())}


def list_calibrations(session: Any, user: Any, judge_id: str, dimension: str) -> list[dict[str, Any]]:
    """The stored calibrations of one judge on one dimension, newest first (summary dicts)."""
    from sqlmodel import select

    from safereview.db.models import Calibration

    require(user, "calibrate")
    rows = session.exec(
        select(Calibration)
        .where(Calibration.judge_id == judge_id, Calibration.dimension == dimension)
        .order_by(Calibration.id.desc())  # type: ignore[union-attr]
    ).all()
    return [
        {
            "id": r.id,
            "method": r.method,
            "items": r.n_items,
            "threshold": r.threshold,
            "target under-blocking": r.target_under_blocking,
            "ECE raw": r.metrics.get("ece_raw"),
            "ECE calibrated (cv)": (r.metrics.get("cross_validated") or {}).get("ece_calibrated"),
            "by": r.created_by,
            "at": str(r.created_at),
        }
        for r in rows
    ]
