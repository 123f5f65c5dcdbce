"""Intervals for the per-person agreement figures: pairwise Cohen's kappa, each annotator
against the majority of the others, and the audit's agreement with the others.

- the multinomial draw over a two-rater table's cells is item resampling (checked in
  distribution against explicit resampling of the items);
- coverage: simulated annotators with known confusion matrices, written to a real database
  by ``agreement.synthetic.bulk_load`` and read back through ``agreement_report`` and
  ``audit.annotator_agreement``; every interval is checked against the value the rating
  process implies (exactly from the confusion matrices; for alpha, AC1, Fleiss' kappa,
  percent agreement and alpha with minus without the judge, their value over a million
  items), so a wrong interval, a wrong point
  estimate or a wrong reading of the stored labels fails it;
- the small-sample warnings reach the rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from safereview.agreement import data
from safereview.agreement.alpha import paired_alpha_difference
from safereview.agreement.audit import annotator_agreement
from safereview.agreement.kappa import cohen, confusion, kappa_from_table, table_bootstrap
from safereview.agreement.report import FEW_PAIRABLE_UNITS, agreement_report, summarize, two_rater_warnings
from safereview.agreement.synthetic import bulk_load
from safereview.db.taxonomy import unsafe_labels as unsafe_labels_of

# bulk_load's rating process: truth drawn with weights 2 .. 1 over the V labels, each
# annotator reports the truth with probability ACCURACY, otherwise a uniform label (which
# may be the truth again)
V = 3
P_TRUTH = np.linspace(2, 1, V) / np.linspace(2, 1, V).sum()
ACCURACY = 0.75
CONFUSION = ACCURACY * np.eye(V) + (1 - ACCURACY) / V  # P(reported j | truth t), rows t


def truths(joint: np.ndarray) -> dict[str, float]:
    """Agreement and the three kappas of a joint distribution of two labels."""
    out = {"agreement": float(np.trace(joint))}
    for kind, key in (("unweighted", "kappa"), ("linear", "kappa_linear"), ("quadratic", "kappa_quadratic")):
        out[key] = float(kappa_from_table(joint, kind)[0])  # type: ignore[arg-type]
    return out


def true_pairwise() -> dict[str, float]:
    return truths(np.einsum("t,tj,tk->jk", P_TRUTH, CONFUSION, CONFUSION))


def true_against_two_others() -> dict[str, float]:
    """One annotator against the two others on the items where those two agree (else a tie)."""
    joint = np.einsum("t,tj,tk,tk->jk", P_TRUTH, CONFUSION, CONFUSION, CONFUSION)
    return truths(joint / joint.sum())


def true_share_with_others() -> float:
    """Expected share of the two others' labels matching the annotator's, per item."""
    return float(np.einsum("t,tj,tj->", P_TRUTH, CONFUSION, CONFUSION))


MULTI = ("alpha", "alpha_nominal", "percent_agreement", "gwet_ac1", "fleiss_kappa")


def multirater_truths(n: int = 1_000_000) -> dict[str, float]:
    """The multi-rater coefficients of the rating process: their value over a million items
    drawn as bulk_load draws them (sampling error about 0.001; ordinal alpha has no closed form)."""
    rng = np.random.default_rng(99)
    truth = rng.choice(V, size=n, p=P_TRUTH)
    codes = np.where(rng.random((n, 3)) < ACCURACY, truth[:, None], rng.integers(0, V, size=(n, 3)))
    r = data.Ratings(
        "joint",
        ["safe", "borderline", "unsafe"],
        True,
        np.arange(n),
        ["a", "b", "c"],
        np.tile(np.arange(n), 3),
        np.repeat(np.arange(3), n),
        codes.T.ravel(),
    )
    s = summarize(r, resamples=0)
    out = {k: s[k]["value"] for k in MULTI}
    # the judge bulk_load writes: right with probability 0.75, else a uniformly drawn label
    judge = np.where(rng.random(n) < 0.75, truth, rng.integers(0, V, size=n))
    with_judge = r.add_rater("judge", r.item_ids, judge)
    out["alpha_difference"] = paired_alpha_difference(r.counts(), with_judge.counts(), r.level, resamples=0).difference
    return out


def test_cell_multinomial_is_item_resampling() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 3, 60)
    b = np.where(rng.random(60) < 0.7, a, rng.integers(0, 3, 60))
    table = confusion(a, b, 3)
    fast = [kappa_from_table(t)[0] for t in table_bootstrap(table, 4000, seed=1)]
    idx = rng.integers(0, 60, size=(4000, 60))
    slow = [kappa_from_table(confusion(a[i], b[i], 3))[0] for i in idx]
    assert np.mean(fast) == pytest.approx(np.mean(slow), abs=0.01)
    assert np.std(fast) == pytest.approx(np.std(slow), rel=0.06)
    assert np.quantile(fast, [0.025, 0.975]) == pytest.approx(np.quantile(slow, [0.025, 0.975]), abs=0.03)


def test_cohen_interval_brackets_the_estimate_and_counts_undefined_resamples() -> None:
    a = np.array([0] * 30 + [1] * 2)
    b = np.array([0] * 30 + [1, 0])
    res = cohen(a, b, 2, ordered=False, resamples=500, seed=0)
    assert res["kappa_ci_low"] <= res["kappa"] <= res["kappa_ci_high"]
    assert res["agreement_ci_low"] <= res["agreement"] <= res["agreement_ci_high"]
    # resamples without a single '1' from rater a have no variation on that side: kappa undefined
    assert 0 < res["kappa_resamples_undefined"] < 500
    assert res["rarest_label_values"] == 3
    ordered = cohen(a, b, 3, ordered=True, resamples=200, seed=0)
    assert ordered["kappa_quadratic_ci_low"] <= ordered["kappa_quadratic"] <= ordered["kappa_quadratic_ci_high"]
    assert "kappa_ci_low" not in cohen(a, b, 2, ordered=False)  # no resamples, no interval


def test_small_sample_warnings() -> None:
    assert two_rater_warnings({"n": FEW_PAIRABLE_UNITS, "rarest_label_values": 12}) == []
    few = two_rater_warnings({"n": 12, "rarest_label_values": 12})
    assert few == ["only 12 items compared: one item can swing these figures"]
    rare = two_rater_warnings({"n_compared": 80, "rarest_label_values": 4})
    assert rare == ["interval unreliable: the rarest label was given only 4 times"]


def test_intervals_cover_the_rating_process(engine: sa.Engine) -> None:
    """Per-person intervals cover the values the simulated annotators' confusion implies."""
    reps, n_items = 120, 80
    expected = {"pair": true_pairwise(), "loo": true_against_two_others()}
    share = true_share_with_others()
    multi = multirater_truths()
    hits: dict[str, list[bool]] = {"share": []}
    for rep in range(reps):
        name = f"rep{rep}"
        bulk_load(engine, n_items, 3, collection=name, accuracy=ACCURACY, seed=1000 + rep)
        report = agreement_report(engine, [name], ["joint"], resamples=300, seed=rep)
        d = report["dimensions"][0]
        assert d["ordered"] and len(d["pairwise"]) == 3 and all(row["n"] == n_items for row in d["pairwise"])
        for key, truth in multi.items():  # alpha, AC1, Fleiss' kappa, percent agreement, with - without judge
            e = d["judge"][key] if key == "alpha_difference" else d["overall"][key]
            hits.setdefault(key, []).append(e["ci_low"] <= truth <= e["ci_high"])
        for kind, rows in (("pair", d["pairwise"]), ("loo", d["raters"])):
            for row in rows:
                for key, truth in expected[kind].items():
                    hits.setdefault(f"{kind} {key}", []).append(row[f"{key}_ci_low"] <= truth <= row[f"{key}_ci_high"])
        sc = data.scope(engine, [name])
        spec = sc.dimension("joint")
        r = data.load_ratings(engine, sc.collection_ids, "joint", spec["labels"], unsafe_labels=unsafe_labels_of(spec))
        for row in annotator_agreement(r, resamples=300, seed=rep):
            assert row["items_shared"] == n_items
            hits["share"].append(row["ci_low"] <= share <= row["ci_high"])
    coverage = {k: float(np.mean(v)) for k, v in hits.items()}
    # per-person figures: 360 intervals each (three per campaign, not independent), the
    # multi-rater ones 120; nominal 0.95, Monte Carlo noise about 0.012-0.02
    per_person = {k: c for k, c in coverage.items() if k not in multi}
    assert all(c >= 0.90 for c in per_person.values()), coverage
    assert all(coverage[k] >= 0.88 for k in multi), coverage
    assert all(c <= 0.99 for c in coverage.values()), coverage  # not vacuously wide


def test_bca_matches_scipy() -> None:
    """The BCa interval of the audit's agreement with the others (a mean of per-item shares)
    against scipy's own BCa on the same shares."""
    from scipy.stats import bootstrap

    from safereview.agreement.audit import _mean_share_interval

    rng = np.random.default_rng(8)
    others = rng.integers(1, 4, 70)
    same = rng.binomial(others, 0.7)
    lo, hi = _mean_share_interval(same, others, 20_000, seed=2)
    shares = same / others
    ref = bootstrap((shares,), np.mean, n_resamples=20_000, method="BCa", rng=3).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.006) and hi == pytest.approx(ref.high, abs=0.006)
    # skewed (almost every item agreeing), where BCa and the percentile interval part
    others = np.full(40, 2)
    same = np.where(np.arange(40) < 3, 1, 2)
    lo, hi = _mean_share_interval(same, others, 20_000, seed=2)
    shares = same / others
    ref = bootstrap((shares,), np.mean, n_resamples=20_000, method="BCa", rng=3).confidence_interval
    percentile = bootstrap((shares,), np.mean, n_resamples=20_000, method="percentile", rng=3).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.0126)  # resample means move in steps of 1/80
    assert lo < percentile.low - 0.005


def test_agreement_is_wilson_and_a_collapsed_bootstrap_gives_no_kappa_interval() -> None:
    from safereview.agreement.estimators import wilson_bounds

    a = np.array([0] * 12 + [1] * 6)
    res = cohen(a, a.copy(), 2, ordered=False, resamples=300, seed=0)
    assert res["agreement"] == 1.0
    assert (res["agreement_ci_low"], res["agreement_ci_high"]) == pytest.approx(wilson_bounds(1.0, 18, 1.959964))
    assert res["agreement_ci_low"] < 0.85  # not [1, 1]
    assert res["kappa"] == 1.0 and res["kappa_ci_low"] is None and res["no_interval"] == ["kappa"]
    assert "no interval for kappa" in two_rater_warnings(res)[-1]
