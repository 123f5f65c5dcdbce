"""Calibration: reliability, ECE/Brier, isotonic and Platt maps, thresholds, calibrated verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from agreement_support import make_user, taxonomy, write_ratings, write_verdicts
from sqlmodel import Session, select

from safereview.agreement.calibration import (
    apply_calibration,
    apply_map,
    brier,
    cross_validated,
    ece,
    fit_calibration,
    fit_map,
    reliability,
    threshold_for_under_blocking,
)
from safereview.agreement.data import AgreementError
from safereview.db.models import Calibration, JudgeConfig, Verdict
from safereview.workflow.errors import Forbidden


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True P(unsafe) q; the judge reports sigmoid(3 * logit(q)) (too sure); people say unsafe ~ q."""
    rng = np.random.default_rng(seed)
    q = rng.beta(1.2, 1.2, n)
    logit = np.log(q / (1 - q))
    p = 1 / (1 + np.exp(-3 * logit))
    y = (rng.random(n) < q).astype(float)
    return p, y


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_lowers_ece_on_a_miscalibrated_judge(method: str) -> None:
    p, y = _overconfident(6000, 1)
    cv = cross_validated(method, p, y, folds=5, seed=0)
    assert cv["ece_raw"] > 0.08
    assert cv["ece_calibrated"] < cv["ece_raw"] / 2
    assert cv["brier_calibrated"] < cv["brier_raw"]
    # on fresh data from the same judge too
    params = fit_map(method, p, y)
    p2, y2 = _overconfident(6000, 2)
    assert ece(apply_map(method, params, p2), y2) < ece(p2, y2) / 2  # type: ignore[operator]
    q = apply_map(method, params, np.linspace(0, 1, 101))
    assert np.all(np.diff(q) >= -1e-12)  # monotone


def test_platt_recovers_the_planted_slope() -> None:
    p, y = _overconfident(20000, 3)
    params = fit_map("platt", p, y)
    assert params["a"] == pytest.approx(1 / 3, abs=0.03) and abs(params["b"]) < 0.05


def test_reliability_ece_brier_by_hand() -> None:
    p = np.array([0.05, 0.15, 0.15, 0.95])
    y = np.array([0.0, 1.0, 0.0, 1.0])
    rows = reliability(p, y, bins=10)
    assert [r["n"] for r in rows] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert rows[1]["observed"] == 0.5 and rows[1]["mean_predicted"] == pytest.approx(0.15)
    assert ece(p, y) == pytest.approx((0.05 + 2 * 0.35 + 0.05) / 4)
    assert brier(p, y) == pytest.approx((0.05**2 + 0.85**2 + 0.15**2 + 0.05**2) / 4)


def test_threshold_meets_the_under_blocking_target() -> None:
    rng = np.random.default_rng(0)
    unsafe = rng.random(2000) < 0.3
    q = np.clip(np.where(unsafe, rng.normal(0.7, 0.15, 2000), rng.normal(0.3, 0.15, 2000)), 0, 1)
    for target in (0.01, 0.05, 0.2):
        res = threshold_for_under_blocking(q, unsafe, target)
        assert res["under_blocking"] <= target
        assert (q[unsafe] < res["threshold"]).mean() == res["under_blocking"]
        # the largest such threshold: the next unsafe score up would exceed the target
        higher = np.sort(q[unsafe])[np.sort(q[unsafe]) > res["threshold"]]
        if higher.size:
            assert (q[unsafe] < higher[0]).mean() > target


def test_fit_store_and_apply_calibration(engine: sa.Engine) -> None:
    rng = np.random.default_rng(5)
    n = 60
    truth = rng.random(n) < 0.4
    cols = {f"r{k}": ["unsafe" if (t if rng.random() < 0.85 else not t) else "safe" for t in truth] for k in range(3)}
    ids = write_ratings(engine, "cal", taxonomy(["safe", "unsafe"], ordered=False), "score", cols)
    p = np.clip(np.where(truth, 0.99, 0.6) + rng.normal(0, 0.02, n), 0, 1)  # overconfident
    probs = [{"unsafe": float(x), "safe": float(1 - x)} for x in p]
    probs[0] = None  # no probability: left out
    write_verdicts(engine, ids, "score", ["unsafe" if x >= 0.5 else "safe" for x in p], "j", probs=probs)
    lead = make_user(engine, "lead", "lead")
    annotator = make_user(engine, "ann", "annotator")
    with Session(engine) as s:
        with pytest.raises(Forbidden):
            fit_calibration(s, annotator, "score", ["cal"])
        with pytest.raises(AgreementError, match="too few"):
            fit_calibration(s, lead, "score", ["cal"], min_n=100)
        row, metrics = fit_calibration(s, lead, "score", ["cal"], method="isotonic", target_under_blocking=0.1)
        s.commit()
        cal_id = int(row.id)  # type: ignore[arg-type]
        assert metrics["n"] == n - 1 and row.n_items == n - 1
        assert metrics["ece_calibrated_in_sample"] < metrics["ece_raw"]
        assert metrics["threshold"]["under_blocking"] <= 0.1
        stored = s.get(Calibration, cal_id)
        assert stored is not None and stored.threshold == metrics["threshold"]["threshold"]
        res = apply_calibration(s, lead, cal_id, ["cal"])
        s.commit()
        assert res["judge_id"] == f"j+cal{cal_id}" and res["written"] == n - 1
        assert res["skipped_without_probability"] == 1
        again = apply_calibration(s, lead, cal_id, ["cal"])
        assert again["written"] == 0  # never overwrites
        new = s.exec(select(Verdict).where(Verdict.judge_id == f"j+cal{cal_id}")).all()
        raw = s.exec(select(Verdict).where(Verdict.judge_id == "j")).all()
        assert len(new) == n - 1 and len(raw) == n
        assert all(v.calibration_id == cal_id and 0 <= v.score <= 1 for v in new)  # type: ignore[operator]
        assert all(v.calibration_id is None for v in raw)
        assert all((v.label == "unsafe") == (v.score >= stored.threshold) for v in new)  # type: ignore[operator]
        assert s.get(JudgeConfig, f"j+cal{cal_id}").protocol == "calibrated"  # type: ignore[union-attr]
