"""Small-sample honesty for Krippendorff's alpha.

- the rare-label warning: few pairable values of the rarest label given (not only few units);
- undefined bootstrap resamples are counted, not silently dropped;
- a paired unit bootstrap for alpha with vs without one more rater (the judge), checked
  against explicit resampling recomputed with the ``krippendorff`` package.
"""

from __future__ import annotations

import krippendorff
import numpy as np
import pytest
import sqlalchemy as sa
from agreement_support import taxonomy, write_ratings, write_verdicts

from safereview.agreement.alpha import (
    krippendorff_alpha,
    paired_alpha_difference,
    patterns,
    resample_weights,
    value_counts,
)
from safereview.agreement.data import Ratings
from safereview.agreement.report import (
    FEW_PAIRABLE_UNITS,
    MIN_RARE_PAIRABLE_VALUES,
    agreement_report,
    small_sample_check,
    summarize,
)
from safereview.agreement.tables import stats_rows


def ratings(columns: dict[str, list[int | None]], labels: list[str], ordered: bool = False) -> Ratings:
    """Ratings from per-rater columns of label codes (None = not rated); unit i is item i."""
    unit, rater, code = [], [], []
    for r, values in enumerate(columns.values()):
        for u, v in enumerate(values):
            if v is not None:
                unit.append(u)
                rater.append(r)
                code.append(v)
    n_units = max(len(v) for v in columns.values())
    return Ratings(
        "d",
        labels,
        ordered,
        np.arange(n_units),
        list(columns),
        np.asarray(unit, dtype=np.int64),
        np.asarray(rater, dtype=np.int64),
        np.asarray(code, dtype=np.int64),
    )


def two_raters(n: int, n_rare_units: int) -> Ratings:
    """n units rated by two people: the first ``n_rare_units`` unsafe (code 1) for both, and
    one disagreement (the last unit: safe for one, unsafe for the other)."""
    first = [1 if u < n_rare_units else 0 for u in range(n)]
    second = [*first[:-1], 1]
    return ratings({"a": first, "b": second}, ["safe", "unsafe"])  # type: ignore[dict-item]


# ---------------------------------------------------------------------------------------
# the rare-label warning
# ---------------------------------------------------------------------------------------


def test_rare_label_warning_fires_with_many_units() -> None:
    r = two_raters(200, 3)  # 200 pairable units, but "unsafe" rarely said
    s = summarize(r, resamples=0)
    n_rare = s["pairable_values_per_label"]["unsafe"]
    assert 0 < n_rare < MIN_RARE_PAIRABLE_VALUES
    assert s["few_units"] is False and s["few_rare_values"] is True
    assert s["rarest_label"] == "unsafe" and s["rarest_label_pairable_values"] == n_rare
    assert len(s["warnings"]) == 1
    assert f"the interval is unreliable: only {n_rare} pairable values of the rarest label 'unsafe'" in s["warnings"][0]
    note = stats_rows({"overall": s})[0]["note"]
    assert "rarest label 'unsafe'" in note and "few units" not in note


def test_no_warning_for_a_balanced_sample() -> None:
    s = summarize(two_raters(200, 100), resamples=0)
    assert s["few_units"] is False and s["few_rare_values"] is False and s["warnings"] == []
    assert stats_rows({"overall": s})[0]["note"] == ""


def test_threshold_is_on_pairable_values_of_the_rarest_label_given() -> None:
    labels = ["safe", "borderline", "unsafe"]

    def check(columns: dict[str, list[int | None]]) -> dict:
        return small_sample_check(ratings(columns, labels).counts(), labels)

    # 40 units, two raters: "unsafe" on exactly 5 units by both = 10 pairable values; "borderline" never given
    both: list[int | None] = [2] * 5 + [0] * 35
    s = check({"a": both, "b": both})
    assert s["rarest_label"] == "unsafe" and s["rarest_label_pairable_values"] == MIN_RARE_PAIRABLE_VALUES
    assert s["few_rare_values"] is False  # a label never given does not enter alpha and is not "rarest"
    # 9 pairable values: four units by both raters, one more by one rater only
    a: list[int | None] = [2] * 5 + [0] * 35
    b: list[int | None] = [2] * 4 + [0] * 36
    s = check({"a": a, "b": b})
    assert s["rarest_label_pairable_values"] == 9 and s["few_rare_values"] is True
    assert s["pairable_values_per_label"] == {"safe": 71, "borderline": 0, "unsafe": 9}
    # twenty more "unsafe" ratings on units nobody else rated are not pairable values
    s = check({"a": a, "b": b, "c": [None] * 40 + [2] * 20})
    assert s["rarest_label_pairable_values"] == 9 and s["few_rare_values"] is True


def test_one_label_only_has_no_rarest_label_and_few_units_still_warns() -> None:
    s = summarize(ratings({"a": [0] * 12, "b": [0] * 12}, ["safe", "unsafe"]), resamples=0)  # type: ignore[dict-item]
    assert s["alpha"]["value"] is None and s["rarest_label"] is None and s["few_rare_values"] is False
    assert s["few_units"] is True and f"fewer than {FEW_PAIRABLE_UNITS}" in s["warnings"][0]


def test_the_warning_marks_intervals_that_undercover() -> None:
    """Two raters, 10% unsafe, 95%-accurate: coverage of alpha's interval with vs without the warning."""
    rng = np.random.default_rng(11)

    def sample(n: int) -> np.ndarray:
        t = (rng.random(n) < 0.1).astype(int)
        r = [np.where(rng.random(n) < 0.95, t, 1 - t) for _ in range(2)]
        return value_counts(np.tile(np.arange(n), 2), np.concatenate(r), n, 2)

    truth = krippendorff_alpha(sample(200_000), "nominal", resamples=0).value
    covered: dict[bool, list[bool]] = {True: [], False: []}
    for rep in range(300):
        c = sample(int(rng.choice([15, 30, 60])))
        warned = small_sample_check(c, ["safe", "unsafe"])["few_rare_values"]
        est = krippendorff_alpha(c, "nominal", resamples=300, seed=rep)
        ok = est.ci_low is not None and est.ci_low <= truth <= est.ci_high  # type: ignore[operator]
        # no value, or no interval (every resample the same): flagged too
        covered[bool(warned or est.value is None or est.ci_low is None)].append(ok)
    assert len(covered[True]) > 50 and len(covered[False]) > 50
    assert np.mean(covered[True]) < 0.85 < np.mean(covered[False])


# ---------------------------------------------------------------------------------------
# undefined resamples are counted
# ---------------------------------------------------------------------------------------


def test_undefined_resamples_are_counted_exactly() -> None:
    # alpha is 1 on the sample; a resample with only one of the two patterns has no variation
    counts = np.array([[2, 0], [2, 0], [0, 2]])
    pats = patterns(counts)
    assert pats[0].tolist() == [[2, 0], [0, 2]] and pats[1].tolist() == [2, 1]
    weights = np.array([[3, 0], [0, 3], [2, 1], [1, 2], [3, 0]], dtype=float)
    est = krippendorff_alpha(counts, "nominal", pats=pats, weights=weights, resamples=len(weights))
    assert est.value == pytest.approx(1.0)
    assert est.resamples_undefined == 3 and est.resamples == 2
    d = est.as_dict()
    assert d["n_resamples_undefined"] == 3 and d["resamples"] == 2
    # random resamples: the count is the number of draws holding only one pattern
    w = resample_weights(pats[1], 400, 5)
    est = krippendorff_alpha(counts, "nominal", resamples=400, seed=5)
    assert est.resamples_undefined == int(((w[:, 0] == 0) | (w[:, 1] == 0)).sum()) > 0
    assert est.resamples + est.resamples_undefined == 400


def test_undefined_resamples_reach_the_report_rows() -> None:
    r = ratings({"a": [0] * 8 + [1], "b": [0] * 8 + [1]}, ["safe", "unsafe"])  # type: ignore[dict-item]
    s = summarize(r, resamples=300, seed=2)
    n_undef = s["alpha"]["n_resamples_undefined"]
    assert 0 < n_undef < 300 and s["alpha"]["resamples"] == 300 - n_undef
    row = stats_rows({"overall": s})[0]
    assert row["alpha undefined resamples"] == n_undef
    assert f"alpha: {n_undef} of 300 resamples undefined" in row["note"]
    assert "few units" in row["note"] and "rarest label 'unsafe'" in row["note"]
    # without a bootstrap there is nothing to count
    assert "n_resamples_undefined" not in summarize(r, resamples=0)["alpha"]


# ---------------------------------------------------------------------------------------
# the paired bootstrap of alpha with vs without the judge
# ---------------------------------------------------------------------------------------

PEOPLE = {  # 10 items, 3 labels in order; item 8 has one person only, item 9 two
    "ann": [0, 0, 1, 2, 2, 0, 1, 0, None, 2],
    "bob": [0, 1, 1, 2, 1, 0, 0, 0, 2, None],
    "cat": [None, 0, 1, 2, 2, None, 1, 0, None, 2],
}
JUDGE = [0, 2, 1, 2, 0, 0, 1, 1, 2, 2]
LABELS = ["safe", "borderline", "unsafe"]


def _people_and_judge(ordered: bool) -> tuple[Ratings, Ratings]:
    r = ratings(PEOPLE, LABELS, ordered)  # type: ignore[arg-type]
    return r, r.add_rater("judge", r.item_ids, np.asarray(JUDGE, dtype=np.int64))


def _package_alpha(counts: np.ndarray, level: str) -> float:
    """Alpha of one explicit resample through the package; NaN where alpha is undefined."""
    pairable = counts[counts.sum(axis=1) >= 2]
    if pairable.sum() < 2 or (pairable.sum(axis=0) > 0).sum() < 2:
        return float("nan")
    return float(
        krippendorff.alpha(value_counts=pairable, value_domain=list(range(counts.shape[1])), level_of_measurement=level)
    )


def _bca_by_hand(theta: float, samples: np.ndarray, jack: np.ndarray) -> tuple[float, float]:
    """Efron's BCa interval written out (Efron & Tibshirani 1993, 14.3), one jackknife value per unit."""
    from scipy.stats import norm

    ok = samples[~np.isnan(samples)]
    z0 = norm.ppf((np.sum(ok < theta) + 0.5 * np.sum(ok == theta)) / ok.size)
    d = jack.mean() - jack
    acc = (d**3).sum() / (6 * ((d**2).sum()) ** 1.5)
    levels = [norm.cdf(z0 + (z0 + z) / (1 - acc * (z0 + z))) for z in norm.ppf([0.025, 0.975])]
    lo, hi = np.quantile(ok, levels)
    return float(lo), float(hi)


@pytest.mark.parametrize("level", ["nominal", "ordinal"])
def test_paired_interval_matches_explicit_resampling(level: str) -> None:
    r, with_judge = _people_and_judge(level == "ordinal")
    a, b = r.counts(), with_judge.counts()
    assert a.shape == b.shape and (b.sum(axis=1) >= 2).sum() > (a.sum(axis=1) >= 2).sum()  # item 8 pairs up
    rng = np.random.default_rng(4)
    draws = rng.integers(0, a.shape[0], size=(400, a.shape[0]))
    unit_weights = np.stack([np.bincount(d, minlength=a.shape[0]) for d in draws])
    res = paired_alpha_difference(a, b, level, unit_weights=unit_weights)

    without = np.array([_package_alpha(a[d], level) for d in draws])
    with_ = np.array([_package_alpha(b[d], level) for d in draws])
    diff = with_ - without
    ok = diff[~np.isnan(diff)]
    assert res.alpha_without == pytest.approx(_package_alpha(a, level), abs=1e-12)
    assert res.alpha_with == pytest.approx(_package_alpha(b, level), abs=1e-12)
    assert res.difference == pytest.approx(res.alpha_with - res.alpha_without)  # type: ignore[operator]
    # BCa from the explicit resamples and a leave-one-unit-out jackknife, both recomputed with
    # the krippendorff package
    units = range(a.shape[0])
    jack_without = np.array([_package_alpha(np.delete(a, u, axis=0), level) for u in units])
    jack_with = np.array([_package_alpha(np.delete(b, u, axis=0), level) for u in units])
    assert not np.isnan(jack_without).any() and not np.isnan(jack_with).any()
    assert (res.ci_low, res.ci_high) == pytest.approx(_bca_by_hand(res.difference, diff, jack_with - jack_without))
    assert (res.ci_low, res.ci_high) != pytest.approx(tuple(np.quantile(ok, [0.025, 0.975])))  # not the percentile one
    assert res.resamples == 400 and res.resamples_defined == ok.size
    assert res.resamples_undefined == int(np.isnan(diff).sum())
    assert res.resamples_undefined_without == int(np.isnan(without).sum())
    assert res.resamples_undefined_with == int(np.isnan(with_).sum())
    assert res.without_ci == pytest.approx(_bca_by_hand(res.alpha_without, without, jack_without))
    d = res.as_dict()
    assert d["difference"] == res.difference and d["n_resamples_undefined"] == res.resamples_undefined


def test_paired_random_resampling_agrees_with_explicit_resampling_in_distribution() -> None:
    """The default route draws pattern frequencies; its differences follow explicit unit draws."""
    r, with_judge = _people_and_judge(False)
    a, b = r.counts(), with_judge.counts()
    n = a.shape[0]
    rng = np.random.default_rng(9)
    draws = rng.integers(0, n, size=(3000, n))
    explicit = np.array([_package_alpha(b[d], "nominal") - _package_alpha(a[d], "nominal") for d in draws])
    res = paired_alpha_difference(a, b, "nominal", resamples=3000, seed=1)
    ref = paired_alpha_difference(a, b, "nominal", unit_weights=np.stack([np.bincount(d, minlength=n) for d in draws]))
    assert abs(res.resamples_undefined / 3000 - np.isnan(explicit).mean()) < 0.02
    assert abs(res.ci_low - ref.ci_low) < 0.08 and abs(res.ci_high - ref.ci_high) < 0.08  # type: ignore[operator]
    # seeded: the same call gives the same interval
    again = paired_alpha_difference(a, b, "nominal", resamples=3000, seed=1)
    assert (again.ci_low, again.ci_high) == (res.ci_low, res.ci_high)


def test_pairing_matters_and_identical_raters_give_zero() -> None:
    r, _ = _people_and_judge(False)
    a = r.counts()
    same = paired_alpha_difference(a, a, "nominal", resamples=200, seed=0)
    assert same.difference == 0 and (same.ci_low, same.ci_high) == (0.0, 0.0)
    # a judge that copies the first person: the paired interval is narrower than the span of the two
    # separate intervals would suggest
    copy = r.add_rater("judge", r.item_ids[r.unit[r.rater == 0]], r.code[r.rater == 0])
    res = paired_alpha_difference(a, copy.counts(), "nominal", resamples=500, seed=0)
    assert res.ci_high - res.ci_low < (res.with_ci[1] - res.with_ci[0]) + (res.without_ci[1] - res.without_ci[0])  # type: ignore[operator]


def test_paired_counts_undefined_resamples_on_a_constructed_case() -> None:
    # without the judge only unit 0 is pairable (all "safe"): alpha undefined at the sample
    a = np.array([[2, 0], [0, 1], [0, 1]])
    b = np.array([[2, 1], [0, 2], [1, 1]])
    res = paired_alpha_difference(a, b, "nominal", resamples=50)
    assert res.alpha_without is None and res.alpha_with is not None and res.difference is None
    assert "without: no variation" in res.as_dict()["undefined_reason"]
    # with both defined: explicit weights, undefined counted per side and jointly
    a = np.array([[2, 0], [0, 2], [1, 0]])
    b = np.array([[2, 1], [0, 2], [1, 1]])
    w = np.array(
        [
            [3, 0, 0],  # without: one pattern, no variation; with: defined
            [0, 3, 0],  # without: no variation; with: no variation
            [1, 1, 1],  # both defined
            [0, 0, 3],  # without: no pairable values; with: defined
        ]
    )
    res = paired_alpha_difference(a, b, "nominal", unit_weights=w)
    assert (res.resamples_undefined_without, res.resamples_undefined_with, res.resamples_undefined) == (3, 1, 3)
    assert res.resamples_defined == 1 and res.ci_low == res.ci_high == pytest.approx(res.difference)


def test_paired_refuses_misaligned_matrices() -> None:
    with pytest.raises(ValueError, match="same units"):
        paired_alpha_difference(np.zeros((3, 2)), np.zeros((4, 2)), "nominal")
    with pytest.raises(ValueError, match="level_of_measurement"):
        paired_alpha_difference(np.zeros((3, 2)), np.zeros((3, 2)), "cardinal")


def test_report_carries_the_paired_difference(engine: sa.Engine) -> None:
    cols = {"a": ["safe", "unsafe"] * 10, "b": ["safe", "unsafe"] * 9 + ["unsafe", "unsafe"]}
    ids = write_ratings(engine, "pj", taxonomy(["safe", "unsafe"], ordered=False), "score", cols)
    write_verdicts(engine, ids, "score", ["unsafe"] * 20, "judge-1")
    j = agreement_report(engine, ["pj"], resamples=200, seed=3)["dimensions"][0]["judge"]
    diff = j["alpha_difference"]
    assert diff["alpha_without"] == pytest.approx(j["alpha_without_judge"]["value"])
    assert diff["alpha_with"] == pytest.approx(j["alpha_with_judge"]["value"])
    assert diff["difference"] < 0 and diff["ci_low"] <= diff["difference"] <= diff["ci_high"]
    assert diff["ci_high"] < 0  # a judge saying "unsafe" to everything lowers alpha, surely
    assert diff["resamples"] == 200 and diff["n_resamples_undefined"] >= 0


def test_a_zero_width_interval_is_dropped_and_said() -> None:
    """Every pairable unit agreeing: each resample gives alpha 1, and [1, 1] would claim a
    certainty eleven items cannot give; the value stands alone with the reason."""
    from safereview.agreement.tables import ci_text, small_sample_notes

    r = ratings({"a": [0] * 8 + [1] * 3, "b": [0] * 8 + [1] * 3}, ["safe", "unsafe"])
    s = summarize(r, resamples=200, seed=0)
    assert s["alpha"]["value"] == 1.0 and s["alpha"]["ci_low"] is None and s["alpha"]["ci_high"] is None
    assert s["alpha"]["no_interval"] == "every resample gave the same value"
    assert ci_text(s["alpha"]) == "1.000 (no interval: every resample gave the same value)"
    assert "alpha: no interval (every resample gave the same value)" in small_sample_notes(s)
    assert s["percent_agreement"]["ci_low"] is None and s["percent_agreement"]["no_interval"]
