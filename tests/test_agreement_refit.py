"""Dawid–Skene as the reference of design-based estimates (agreement/refit.py): the fit weighted
by the design, and intervals widened by what refitting on resamples adds. Coverage itself is
checked through the queue in tests/test_statistics_validation.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safereview.agreement.consensus import dawid_skene
from safereview.agreement.refit import MIN_REPLICATES, widened


def _ratings(n: int = 120, k: int = 3, raters: int = 4, accuracy: float = 0.8, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.3
    who = np.argsort(rng.random((n, raters)), axis=1)[:, :k]
    says = np.where(rng.random((n, k)) < accuracy, truth[:, None], ~truth[:, None]).astype(np.int64)
    return np.repeat(np.arange(n), k), who.ravel(), says.ravel(), n, raters


def test_integer_weights_fit_as_repeated_items() -> None:
    """Weight 2 on a unit is the same fit as that unit's ratings entered twice: the
    pseudo-likelihood with 1/π weights is the fit of the collection the sample stands for."""
    unit, rater, code, n, raters = _ratings()
    w = np.random.default_rng(1).integers(1, 4, size=n)
    weighted = dawid_skene(unit, rater, code, n, raters, 2, weights=w.astype(float))
    # the same items repeated w times, as separate units
    rep_units = np.repeat(np.arange(n), w)
    u2, r2, c2 = [], [], []
    for new, old in enumerate(rep_units):
        mine = unit == old
        u2.append(np.full(mine.sum(), new))
        r2.append(rater[mine])
        c2.append(code[mine])
    repeated = dawid_skene(np.concatenate(u2), np.concatenate(r2), np.concatenate(c2), len(rep_units), raters, 2)
    np.testing.assert_allclose(weighted.priors, repeated.priors, atol=1e-6)
    np.testing.assert_allclose(weighted.confusion, repeated.confusion, atol=1e-6)
    first = np.searchsorted(rep_units, np.arange(n))
    np.testing.assert_allclose(weighted.posteriors, repeated.posteriors[first], atol=1e-6)


def test_unit_weights_of_one_are_the_plain_fit_and_zero_weight_units_do_not_shape_it() -> None:
    unit, rater, code, n, raters = _ratings(seed=2)
    plain = dawid_skene(unit, rater, code, n, raters, 2)
    ones = dawid_skene(unit, rater, code, n, raters, 2, weights=np.ones(n))
    np.testing.assert_allclose(plain.posteriors, ones.posteriors)
    w = np.ones(n)
    w[:40] = 0.0  # reviewed outside the sample
    part = dawid_skene(unit, rater, code, n, raters, 2, weights=w)
    keep = unit >= 40
    alone = dawid_skene(unit[keep] - 40, rater[keep], code[keep], n - 40, raters, 2)
    np.testing.assert_allclose(part.confusion, alone.confusion, atol=1e-6)
    np.testing.assert_allclose(part.posteriors[40:], alone.posteriors, atol=1e-6)
    assert np.isfinite(part.posteriors[:40]).all()  # they still get a posterior
    with pytest.raises(ValueError, match="weights"):
        dawid_skene(unit, rater, code, n, raters, 2, weights=np.zeros(n))


def _estimate(value: float, half: float) -> dict:  # type: ignore[type-arg]
    return {"value": value, "low": value - half, "high": value + half, "se": half / 1.96, "method": "Hájek"}


def test_intervals_stretch_by_the_variance_the_refits_add_and_never_narrow() -> None:
    """``widened`` computes every figure on each resample twice (refitted reference, and the
    full fit held fixed) and stretches each interval by the square root of their variance
    ratio; rows are matched by name, not position; a ratio below 1 leaves the interval as is."""
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(200)
    samples = list(range(200))

    def compute(reference: str, b: int | str) -> dict:  # type: ignore[type-arg]
        main = b == "design"
        e = 0.0 if main else noise[b]
        wide = 0.02 * e * (2.0 if reference == "refit" else 1.0)  # the refit doubles the spread
        calm = 0.02 * e * (0.5 if reference == "refit" else 1.0)  # here the refit halves it
        rows = [
            {"metric": "a", "human": _estimate(0.30 + wide, 0.05)},
            {"metric": "b", "human": _estimate(0.05 + calm, 0.03)},
        ]
        return {"metrics": rows if main or b % 2 else rows[::-1], "judge": {"value": 0.3}}

    out = widened(compute, "fit", "design", samples, ["refit"] * len(samples))
    a, b = (next(r["human"] for r in out["metrics"] if r["metric"] == m) for m in "ab")
    assert a["fit_inflation"] == pytest.approx(4.0, rel=1e-9)
    assert (a["low"], a["high"]) == pytest.approx((0.30 - 0.10, 0.30 + 0.10))
    assert a["se"] == pytest.approx(2 * 0.05 / 1.96)
    assert "widened ×2.00 for the Dawid–Skene fit" in a["method"]
    assert b["fit_inflation"] == 1.0 and (b["low"], b["high"]) == pytest.approx((0.02, 0.08))
    assert out["judge"] == {"value": 0.3}  # no interval: nothing to widen


def test_bounds_stay_in_zero_one_and_too_few_resamples_leave_the_figure_undefined() -> None:
    def compute(reference: str, b: int | str) -> dict:  # type: ignore[type-arg]
        if b == "design":
            return {"x": {"value": 0.01, "ci_low": 0.0, "ci_high": 0.05, "se": 0.02}}
        return {
            "x": {
                "value": 0.01 + (0.05 * (b % 3) if reference == "refit" else 0.01 * (b % 3)),
                "ci_low": 0,
                "ci_high": 1,
            }
        }

    out = widened(compute, "fit", "design", list(range(50)), ["refit"] * 50)["x"]
    assert out["ci_low"] == 0.0 and out["ci_high"] == pytest.approx(0.01 + 0.04 * 5)
    few = widened(compute, "fit", "design", list(range(MIN_REPLICATES - 1)), ["refit"] * (MIN_REPLICATES - 1))["x"]
    assert few["value"] is None and "refit" in few["undefined_reason"]
    assert math.isfinite(out["fit_inflation"])
