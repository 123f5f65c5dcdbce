"""The validation study (bench/bench_estimates.py) in small: the real queue, the real
estimators, a known truth. A few replications check bias; two small cells with a hundred or
more replications each check that every 95% interval covers and that the calibrated
threshold keeps its promise, on both back ends. The full grid is a benchmark
(docs/statistics-validation.md)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_estimates.py"


def _bench(path: Path = BENCH):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("overlap", [1, 2])
def test_estimates_through_the_queue_are_unbiased_on_a_few_replications(engine, overlap: int) -> None:  # type: ignore[no-untyped-def]
    be = _bench()
    cell = be.Cell(items=400, budget=0.3, overlap=overlap, reviewer_accuracy=0.85 if overlap == 2 else 1.0)
    reps = [be.replicate(engine, cell, seed) for seed in range(8)]
    for name in ("accuracy", "unsafe_rate (human)", "unsafe_rate (corrected)", "under_blocking"):
        errors = np.array([r[name]["estimate"] - r[name]["truth"] for r in reps])
        assert np.all(np.isfinite(errors)), name
        # unbiased: the mean error is within 4 standard errors of 0 (a biased design is off by 0.05-0.2)
        assert abs(errors.mean()) < 4 * errors.std(ddof=1) / math.sqrt(len(errors)) + 0.005, (name, errors)
        widths = np.array([r[name]["width"] for r in reps])
        assert np.all((widths > 0) & (widths < 0.5)), (name, widths)
    corrected = np.mean([r["unsafe_rate (corrected)"]["width"] for r in reps])
    human = np.mean([r["unsafe_rate (human)"]["width"] for r in reps])
    assert corrected < human  # an informative judge narrows the interval
    for r in reps:
        t = r.get("threshold_under_blocking")
        if t is not None and t["certified"]:
            assert t["estimate"] <= 0.3  # never wildly above a 0.1 target (the guarantee is checked by the study)


COVERAGE_CELLS = {
    # perfect reviewers, one review per item; the threshold's target is rarely certifiable here
    "overlap 1": ({"items": 300, "budget": 0.3, "overlap": 1, "kappa_resamples": 200}, 150),
    # two 85%-accurate reviews per item; a target the sample can certify in most campaigns
    "overlap 2": (
        {"items": 300, "budget": 0.3, "overlap": 2, "reviewer_accuracy": 0.85, "target": 0.25, "kappa_resamples": 200},
        100,
    ),
    # a judge that gives labels only: the correction works from its labels
    "no probabilities": (
        {"items": 300, "budget": 0.3, "overlap": 1, "probabilities": False, "kappa_resamples": 200},
        100,
    ),
}
INTERVALS = (
    "accuracy",
    "under_blocking",
    "over_blocking",
    "confusion [unsafe, judge safe]",  # the audit's confusion matrix as shares of the collection
    "confusion [safe, judge unsafe]",
    "unsafe_rate (human)",
    "unsafe_rate (corrected)",
    "kappa",  # the audit's design-weighted kappa with its bootstrap interval
    "accuracy [t1]",  # domain estimates: one task type's slice, as the audit's --by reports them
    "under_blocking [t1]",
    "unsafe_rate (corrected) [t1]",
)


@pytest.mark.slow
@pytest.mark.parametrize("cell_name", list(COVERAGE_CELLS))
def test_every_interval_covers_at_its_nominal_rate_through_the_queue(engine, cell_name: str) -> None:  # type: ignore[no-untyped-def]
    """Fixed seeds, so the outcome is the same on every run; a 95% interval that truly covered
    only 85-88% of the time would fall below the line with these replications (SE ~0.02)."""
    be = _bench()
    settings, replications = COVERAGE_CELLS[cell_name]
    cell = be.Cell(**settings)
    reps = [be.replicate(engine, cell, 7000 + seed) for seed in range(replications)]
    for name in INTERVALS:
        covered = [r[name]["covered"] for r in reps if name in r and np.isfinite(r[name]["estimate"])]
        assert len(covered) >= 0.9 * replications, (name, len(covered))  # defined in (almost) every campaign
        assert np.mean(covered) >= 0.90, (name, np.mean(covered))
    if not cell.probabilities:  # nothing to calibrate: the study records no threshold
        assert all("threshold_under_blocking" not in r for r in reps)
        return
    threshold = [r["threshold_under_blocking"] for r in reps]
    held = np.mean([t["covered"] for t in threshold])  # true under-blocking at or below the target
    assert held >= 1 - cell.delta - 0.05, held
    if cell_name == "overlap 2":  # here the promise is tested, not met by blocking everything
        assert np.mean([t["certified"] for t in threshold]) >= 0.5


PRESETS = Path(__file__).resolve().parent.parent / "bench" / "bench_estimates_presets.py"


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["uni-safebench", "vlsu"])
def test_benchmark_rates_cover_through_the_queue(engine, preset: str) -> None:  # type: ignore[no-untyped-def]
    """The built-in benchmarks' figures: Uni-SafeBench's C-Unsafe, C-Reject, I-Unsafe and
    Both-Safe and the audit on its three-label contextual dimension; VLSU's grade shares, the
    audit on the joint grade and the compositional error rate. On collections the queue
    orders by contextual/intrinsic disagreement, borderline verdicts and safe + safe pairs,
    with two 85%-accurate reviews per item: unbiased and covering at the nominal rate. Fixed
    seeds; the full-size cells are benchmarks (docs/statistics-validation.md)."""
    be = _bench(PRESETS)
    cell = be.Cell(preset=preset, items=300, budget=0.3, overlap=2, reviewer_accuracy=0.85)
    replications = 100
    reps = [be.replicate(engine, cell, 9000 + seed) for seed in range(replications)]
    assert {r["_n"]["reviews"] for r in reps} == {90.0}  # the budget was spent through the queue
    for name in be.STUDIES[preset].estimands:
        got = [r[name] for r in reps if np.isfinite(r[name]["estimate"])]
        assert len(got) >= 0.9 * replications, (name, len(got))
        assert np.mean([g["covered"] for g in got]) >= 0.90, (name, np.mean([g["covered"] for g in got]))
        errors = np.array([g["estimate"] - g["truth"] for g in got])
        assert abs(errors.mean()) < 4 * errors.std(ddof=1) / math.sqrt(len(errors)) + 0.005, (name, errors.mean())
    rate = "C-Unsafe" if preset == "uni-safebench" else "joint: unsafe"
    corrected = np.mean([r[f"{rate} (corrected)"]["width"] for r in reps])
    human = np.mean([r[f"{rate} (human)"]["width"] for r in reps])
    assert corrected < human  # the judge narrows the interval


def test_dawid_skene_reference_is_fitted_under_the_design_and_its_intervals_widened(engine) -> None:  # type: ignore[no-untyped-def]
    """With ``method="dawid-skene"`` the audit's figures rest on the posterior of a fit that
    weights each sample item by 1/π (the fit a full review would give, not that of a sample
    tilted toward borderline items), and every interval carries the fit's own uncertainty."""
    import random

    from safereview.agreement import data
    from safereview.agreement.audit import audit
    from safereview.agreement.consensus import dawid_skene
    from safereview.agreement.estimators import hajek_mean
    from safereview.agreement.population import population_rates
    from safereview.agreement.sample import load_design_sample

    be = _bench()
    cell = be.Cell(items=300, budget=0.6, overlap=3, reviewer_accuracy=0.8, method="dawid-skene")
    pop = be.population(cell, np.random.default_rng(11))
    cid, pos = be._setup(engine, cell, pop, "ds")
    be.review(engine, cell, cid, pos, pop, be._reviewers(engine, cell.reviewers, "ds"), random.Random(11))
    au = audit(engine, be.DIMENSION, ["ds"], judge_id=be.JUDGE, method="dawid-skene", resamples=0)
    majority = audit(engine, be.DIMENSION, ["ds"], judge_id=be.JUDGE, resamples=0)

    # the same figure by hand: the design-weighted fit over the sample's ratings
    ds = load_design_sample(engine, [cid])
    r = data.load_ratings(engine, [cid], be.DIMENSION, ["safe", "unsafe"])
    in_sample = np.isin(r.item_ids, ds.sample_ids)
    w = np.zeros(r.n_units)
    w[in_sample] = 1.0 / ds.sample_pi[np.searchsorted(ds.sample_ids, r.item_ids[in_sample])]
    fit = dawid_skene(r.unit, r.rater, r.code, r.n_units, len(r.rater_names), 2, weights=w)
    post = fit.posteriors[np.searchsorted(r.item_ids, ds.sample_ids)]
    judge = pop["judge"][[pos[int(i)] for i in ds.sample_ids]].astype(int)
    agree = post[np.arange(len(judge)), judge]
    assert au["accuracy"]["value"] == pytest.approx(hajek_mean(agree, ds.sample_pi).value, abs=1e-9)
    assert au["accuracy"]["value"] != pytest.approx(majority["accuracy"]["value"], abs=1e-3)

    shares = [cell for row in au["confusion"]["shares"] for cell in row]
    figures = [au["accuracy"], au["under_blocking"], au["over_blocking"], *shares]
    pr = population_rates(engine, ["ds"], method="dawid-skene")
    row = next(m for m in pr["metrics"] if m["label"] == "unsafe")
    figures += [row["human"], row["corrected"]]
    for e in figures:
        low, high = e.get("ci_low", e.get("low")), e.get("ci_high", e.get("high"))
        assert e["fit_inflation"] >= 1.0 and low <= e["value"] <= high, e
    assert max(e["fit_inflation"] for e in figures) > 1.2  # the fit's uncertainty is real here
    assert "fitted with the design's weights" in au["reference"]
