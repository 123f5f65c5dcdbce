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
    cross_fitted,
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
    pi = np.full(len(p), 0.5)  # a random half of a collection twice this size
    cv = cross_fitted(method, p, y, pi, folds=5, seed=0)
    assert cv["ece_raw"] > 0.08
    assert cv["ece_calibrated"] < cv["ece_raw"] / 2
    assert cv["brier_change"]["high"] < 0  # a real gain: the interval lies below 0
    assert cv["brier_calibrated"]["value"] < cv["brier_raw"]["value"]
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


def test_threshold_on_a_census_is_the_largest_cut_meeting_the_target() -> None:
    rng = np.random.default_rng(0)
    unsafe = (rng.random(2000) < 0.3).astype(float)
    p = np.clip(np.where(unsafe > 0, rng.normal(0.7, 0.15, 2000), rng.normal(0.3, 0.15, 2000)), 0, 1)
    for target in (0.01, 0.05, 0.2):
        res = threshold_for_under_blocking(p, unsafe, np.ones(2000), target, delta=0.1)
        cut = res["raw_threshold"]
        achieved = (p[unsafe > 0] < cut).mean()
        assert achieved <= target and res["under_blocking"]["value"] == pytest.approx(achieved)
        higher = np.sort(p)[np.sort(p) > cut]  # the next cut up would exceed the target
        if higher.size:
            assert (p[unsafe > 0] < higher[0]).mean() > target


def test_threshold_holds_on_the_collection_with_probability_one_minus_delta() -> None:
    """Borderline-first order samples of 400 from 4000 items: the chosen cut's TRUE under-blocking
    exceeds the target in at most delta of the runs (plus simulation noise)."""
    rng = np.random.default_rng(1)
    failures, runs, target, delta = 0, 300, 0.05, 0.1
    for _ in range(runs):
        n = 4000
        q = 1 / (1 + np.exp(-(np.where(rng.random(n) < 0.3, 2.0, -2.0) + rng.standard_normal(n))))
        unsafe = (rng.random(n) < q).astype(float)
        size = 0.2 + 0.8 * (1 - np.abs(2 * q - 1)) / np.mean(1 - np.abs(2 * q - 1))
        key = rng.random(n) / size
        order = np.argsort(key)
        sample, tau = order[:400], key[order[400]]
        pi = np.minimum(1.0, size[sample] * tau)
        res = threshold_for_under_blocking(q[sample], unsafe[sample], pi, target, delta=delta)
        true_ub = (q[unsafe > 0] < res["raw_threshold"]).mean()
        failures += true_ub > target
    assert failures / runs <= delta + 0.04, failures / runs


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
        assert metrics["threshold"]["under_blocking_upper_bound"] <= 0.1  # a census: the bound is the rate
        assert (
            metrics["cross_validated"]["brier_calibrated"]["value"] < metrics["cross_validated"]["brier_raw"]["value"]
        )
        stored = s.get(Calibration, cal_id)
        assert stored is not None and stored.threshold == metrics["threshold"]["raw_threshold"]
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
        raw_p = {v.item_id: v.probs["unsafe"] for v in raw if v.probs}  # type: ignore[index]
        assert all((v.label == "unsafe") == (raw_p[v.item_id] >= stored.threshold) for v in new)  # the certified rule
        assert s.get(JudgeConfig, f"j+cal{cal_id}").protocol == "calibrated"  # type: ignore[union-attr]
    # its threshold was chosen on these very reviews: an audit of it says so and points to the guarantee
    from safereview.agreement.audit import audit
    from safereview.agreement.population import population_rates

    calibrated = audit(engine, "score", ["cal"], judge_id=f"j+cal{cal_id}", resamples=0, min_n=5)
    (warning,) = calibrated["warnings"]
    assert f"calibration {cal_id}" in warning and f"labels of {n - 1} review-sample items" in warning
    assert "at most 0.1 with probability at least 90%" in warning
    assert population_rates(engine, ["cal"], judge_id=f"j+cal{cal_id}")["warnings"] == [warning]
    assert audit(engine, "score", ["cal"], judge_id="j", resamples=0, min_n=5)["warnings"] == []
    assert population_rates(engine, ["cal"], judge_id="j")["warnings"] == []
    # applied to another collection, nothing there was selected on its labels
    other = write_ratings(
        engine, "held-out", taxonomy(["safe", "unsafe"], ordered=False), "score", {"r0": ["safe"] * 5}
    )
    write_verdicts(engine, other, "score", ["safe"] * 5, "j", probs=[{"unsafe": 0.2, "safe": 0.8}] * 5)
    with Session(engine) as s:
        assert apply_calibration(s, lead, cal_id, ["held-out"])["written"] == 5
        s.commit()
    assert audit(engine, "score", ["held-out"], judge_id=f"j+cal{cal_id}", resamples=0, min_n=5)["warnings"] == []
