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
from safereview.db.taxonomy import unsafe_labels as unsafe_labels_of
from safereview.workflow.policies import require

EPS = 1e-6


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Reliability-diagram rows: per equal-width bin, count, mean predicted and mean observed."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        rows.append(
            {
                "bin_low": b / bins,
                "bin_high": (b + 1) / bins,
                "n": n,
                "mean_predicted": float(p[m].mean()) if n else None,
                "observed": float(y[m].mean()) if n else None,
            }
        )
    return rows


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float | None:
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return None
    rows = reliability(p, y, bins)
    return float(sum(r["n"] / p.size * abs(r["mean_predicted"] - r["observed"]) for r in rows if r["n"]))


def brier(p: np.ndarray, y: np.ndarray) -> float | None:
    p = np.asarray(p, dtype=np.float64)
    return float(((p - np.asarray(y, dtype=np.float64)) ** 2).mean()) if p.size else None


# ---------------------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------------------


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Monotone non-decreasing map p -> P(unsafe) (PAVA on the distinct predicted values)."""
    from scipy.optimize import isotonic_regression

    x, inv = np.unique(np.asarray(p, dtype=np.float64), return_inverse=True)
    w = np.bincount(inv).astype(np.float64)
    ym = np.bincount(inv, weights=np.asarray(y, dtype=np.float64)) / w
    fitted = isotonic_regression(ym, weights=w, increasing=True).x
    return {"x": x.tolist(), "y": np.clip(fitted, 0.0, 1.0).tolist()}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def fit_platt(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Logistic map ``sigmoid(a * logit(p) + b)`` by maximum likelihood (soft targets allowed)."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    z = _logit(p)
    y = np.asarray(y, dtype=np.float64)

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        s = theta[0] * z + theta[1]
        loss = -(y * log_expit(s) + (1 - y) * log_expit(-s)).mean()
        g = expit(s) - y
        return float(loss), np.array([(g * z).mean(), g.mean()])

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


def fit_map(method: str, p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if method == "isotonic":
        return fit_isotonic(p, y)
    if method == "platt":
        return fit_platt(p, y)
    raise data.AgreementError("calibration method must be isotonic or platt")


def threshold_for_under_blocking(q: np.ndarray, unsafe: np.ndarray, target: float) -> dict[str, Any]:
    """Largest threshold t (block when q >= t) whose under-blocking on people-unsafe items is <= target."""
    q = np.asarray(q, dtype=np.float64)
    unsafe = np.asarray(unsafe, dtype=bool)
    qu = np.sort(q[unsafe])
    if qu.size == 0:
        return {"threshold": None, "undefined_reason": "no items people call unsafe"}
    k = int(np.floor(target * qu.size + 1e-9))
    t = float(qu[k]) if k < qu.size else float(np.nextafter(qu[-1], np.inf))
    return {
        "threshold": t,
        "under_blocking": float((qu < t).mean()),
        "over_blocking": float((q[~unsafe] >= t).mean()) if (~unsafe).any() else None,
        "n_unsafe": int(qu.size),
        "n_safe": int((~unsafe).sum()),
    }


def cross_validated(
    method: str, p: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0, bins: int = 10
) -> dict[str, Any]:
    """ECE and Brier of out-of-fold calibrated probabilities (an honest estimate of the gain)."""
    n = len(p)
    if n < 2 * folds:
        return {"folds": folds, "undefined_reason": f"too few items for {folds}-fold cross-validation (n={n})"}
    order = np.random.default_rng(seed).permutation(n)
    q = np.empty(n)
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        q[test] = apply_map(method, fit_map(method, p[train], y[train]), p[test])
    return {
        "folds": folds,
        "ece_raw": ece(p, y, bins),
        "ece_calibrated": ece(q, y, bins),
        "brier_raw": brier(p, y),
        "brier_calibrated": brier(q, y),
    }


# ---------------------------------------------------------------------------------------
# database
# ---------------------------------------------------------------------------------------


def calibration_data(
    bind: Any, dimension: str, collections: Sequence[str] | None = None, *, judge_id: str | None = None
) -> dict[str, Any]:
    """Items with both a judge probability and human labels: ids, p, soft y, consensus unsafe."""
    sc = data.scope(bind, collections)
    spec = sc.dimension(dimension)
    labels = list(spec["labels"])
    unsafe_labels = unsafe_labels_of(spec)
    jid = judge_id or verdict_reads.default_judge(bind, sc.collection_ids, dimension)
    if jid is None:
        raise data.AgreementError(f"no judge verdicts on dimension {dimension!r}")
    r = data.load_ratings(bind, sc.collection_ids, dimension, labels, ordered=bool(spec.get("ordered")))
    v = verdict_reads.load_verdicts(
        bind, sc.collection_ids, dimension, labels, jid, unsafe_labels=unsafe_labels, with_probs=True
    )
    counts = r.counts()
    unsafe_codes = [labels.index(x) for x in unsafe_labels]
    m = counts.sum(axis=1)
    y = counts[:, unsafe_codes].sum(axis=1) / np.maximum(m, 1)
    p = v.p_for(r.item_ids)
    ok = np.isfinite(p) & (m > 0)
    return {
        "judge_id": jid,
        "labels": labels,
        "unsafe_labels": list(unsafe_labels),
        "item_ids": r.item_ids[ok],
        "p": np.clip(p[ok], 0.0, 1.0),
        "y": y[ok],
        "people_unsafe": y[ok] > 0.5,
        "collections": [sc.collection_names[c] for c in sc.collection_ids],
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
    bins: int = 10,
    folds: int = 5,
    seed: int = 0,
    min_n: int = 20,
) -> tuple[Any, dict[str, Any]]:
    """Fit, evaluate and store a :class:`db.models.Calibration`; return (row, metrics).

    ``user`` must be allowed to "calibrate" (the CLI passes its system principal).
    """
    from safereview.db.models import Calibration, utcnow

    require(user, "calibrate")
    if not 0.0 <= target_under_blocking <= 1.0:
        raise data.AgreementError("target under-blocking must be between 0 and 1")
    d = calibration_data(session, dimension, collections, judge_id=judge_id)
    p, y = d["p"], d["y"]
    if len(p) < min_n:
        raise data.AgreementError(f"too few items with a judge probability and human labels (n={len(p)} < {min_n})")
    params = fit_map(method, p, y)
    q = apply_map(method, params, p)
    thr = threshold_for_under_blocking(q, d["people_unsafe"], target_under_blocking)
    metrics = {
        "n": len(p),
        "bins": bins,
        "collections": d["collections"],
        "ece_raw": ece(p, y, bins),
        "brier_raw": brier(p, y),
        "ece_calibrated_in_sample": ece(q, y, bins),
        "brier_calibrated_in_sample": brier(q, y),
        "cross_validated": cross_validated(method, p, y, folds=folds, seed=seed, bins=bins),
        "reliability_raw": reliability(p, y, bins),
        "reliability_calibrated": reliability(q, y, bins),
        "threshold": thr,
    }
    row = Calibration(
        judge_id=d["judge_id"],
        dimension=dimension,
        method=method,
        params=params,
        metrics=metrics,
        threshold=thr.get("threshold"),
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
    now = utcnow()
    new_rows = []
    for k, r in enumerate(rows):
        if not ok[k]:
            continue
        block = bool(q[k] >= thr)
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
                f"P(unsafe)={q[k]:.4f}, threshold {thr:.4f}",
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
