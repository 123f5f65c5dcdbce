"""Agreement coefficients against published worked examples (sources in tests/agreement_support.py)."""

from __future__ import annotations

import krippendorff
import numpy as np
import pytest
from agreement_support import (
    IRRCAC_CONT3X3,
    IRRCAC_DISTRIB_6RATERS,
    KRIPPENDORFF_2011,
    KRIPPENDORFF_2011_ALPHA,
    WIKIPEDIA_FLEISS,
    triples_from_columns,
)

from safereview.agreement.alpha import (
    _pattern_coincidences,
    alpha_from_coincidence,
    alpha_package,
    batch_alpha,
    coincidence,
    krippendorff_alpha,
    patterns,
    resample_weights,
    value_counts,
)
from safereview.agreement.kappa import cohen, kappa_from_table, leave_one_out, multirater, pairwise, specific_agreement

VALUES = np.arange(1, 6)


def _kripp_counts() -> np.ndarray:
    u, _, v = triples_from_columns(KRIPPENDORFF_2011)
    return value_counts(u, v - 1, 12, 5)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
def test_krippendorff_2011_example(level: str) -> None:
    counts = _kripp_counts()
    ours, _ = alpha_from_coincidence(coincidence(counts), level, VALUES)
    pkg, _ = alpha_package(counts, level, VALUES)
    assert round(pkg, 3) == KRIPPENDORFF_2011_ALPHA[level]  # type: ignore[arg-type]
    assert ours == pytest.approx(pkg, abs=1e-12)
    est = krippendorff_alpha(counts, level, values=VALUES, resamples=200, seed=3)
    assert est.value == pytest.approx(pkg)
    assert est.ci_low is not None and est.ci_low <= est.value <= est.ci_high  # type: ignore[operator]


def test_own_coincidence_path_matches_package_on_random_data() -> None:
    rng = np.random.default_rng(7)
    for trial in range(30):
        n_units, n_raters, v = rng.integers(5, 60), rng.integers(2, 6), rng.integers(2, 6)
        data = rng.integers(0, v, size=(n_raters, n_units)).astype(float)
        data[rng.random(data.shape) < 0.3] = np.nan
        u, r = np.nonzero(~np.isnan(data.T))
        counts = value_counts(u, data.T[u, r].astype(int), int(n_units), int(v))
        for level in ("nominal", "ordinal", "interval"):
            ours, _reason = alpha_from_coincidence(coincidence(counts), level)
            if ours is None:
                continue
            pkg = krippendorff.alpha(reliability_data=data, value_domain=list(range(v)), level_of_measurement=level)
            assert ours == pytest.approx(pkg, abs=1e-9), (trial, level)


def test_pattern_bootstrap_equals_resampling_units() -> None:
    """A multinomial draw of pattern frequencies is a resample of units: same alpha exactly."""
    rng = np.random.default_rng(1)
    counts = rng.multinomial(3, [0.5, 0.3, 0.2], size=200)
    counts[:20] = rng.multinomial(2, [0.2, 0.3, 0.5], size=20)
    pat, freq = patterns(counts)
    w = resample_weights(freq, 5, seed=11)
    fast = batch_alpha(w @ _pattern_coincidences(pat), 3, "ordinal")
    key = {tuple(row): i for i, row in enumerate(pat.tolist())}
    members = [np.flatnonzero([key[tuple(c)] == p for c in counts.tolist()]) for p in range(len(pat))]
    for b in range(5):
        units = np.concatenate([np.resize(members[p], int(w[b, p])) for p in range(len(pat)) if w[b, p]])
        slow, _ = alpha_package(counts[units], "ordinal")
        assert fast[b] == pytest.approx(slow, abs=1e-12)


def test_bootstrap_is_seeded_and_interval_shrinks_with_more_units() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 4000)
    codes = np.where(rng.random((4000, 3)) < 0.8, truth[:, None], rng.integers(0, 3, (4000, 3)))
    unit = np.repeat(np.arange(4000), 3)
    small = value_counts(unit[:600], codes.ravel()[:600], 200, 3)
    big = value_counts(unit, codes.ravel(), 4000, 3)
    a = krippendorff_alpha(big, "nominal", resamples=300, seed=5)
    b = krippendorff_alpha(big, "nominal", resamples=300, seed=5)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    s = krippendorff_alpha(small, "nominal", resamples=300, seed=5)
    assert (a.ci_high - a.ci_low) < (s.ci_high - s.ci_low)  # type: ignore[operator]


def test_undefined_alpha_is_none_with_reason() -> None:
    same = np.array([[3, 0], [2, 0], [4, 0]])
    est = krippendorff_alpha(same, "nominal", resamples=10)
    assert est.value is None and "no variation" in est.reason
    single = np.array([[1, 0], [0, 1]])
    est = krippendorff_alpha(single, "ordinal", resamples=10)
    assert est.value is None and "fewer than 2 pairable" in est.reason
    unpaired = multirater(single, 2)
    assert all(unpaired[k].value is None for k in ("percent_agreement", "gwet_ac1", "fleiss_kappa"))
    assert {unpaired[k].reason for k in ("percent_agreement", "gwet_ac1", "fleiss_kappa")} == {
        "no unit has two or more ratings"
    }
    uniform = multirater(same, 2)  # every rating the same label: agreement is perfect, kappa undefined
    assert uniform["percent_agreement"].value == 1.0 and uniform["gwet_ac1"].value == 1.0
    assert uniform["fleiss_kappa"].value is None
    assert uniform["fleiss_kappa"].reason == "no variation: every rating is the same label"


def test_irrcac_raw4raters_percent_agreement_ac1_fleiss() -> None:
    """irrCAC README: pa 0.8181818, AC1 0.77544 (p_e 0.1903212), Fleiss 0.76117 (p_e 0.2387153)."""
    res = multirater(_kripp_counts(), 5)
    assert res["percent_agreement"].value == pytest.approx(0.8181818, abs=1e-7)
    assert res["gwet_ac1"].value == pytest.approx(0.77544, abs=1e-5)
    assert res["gwet_ac1"].extra["p_e"] == pytest.approx(0.1903212, abs=1e-7)
    assert res["fleiss_kappa"].value == pytest.approx(0.76117, abs=1e-5)
    assert res["fleiss_kappa"].extra["p_e"] == pytest.approx(0.2387153, abs=1e-7)


def test_wikipedia_fleiss_example() -> None:
    res = multirater(WIKIPEDIA_FLEISS)
    assert round(res["fleiss_kappa"].value, 3) == 0.210  # type: ignore[arg-type]
    assert round(res["fleiss_kappa"].extra["p_a"], 3) == 0.378
    assert round(res["fleiss_kappa"].extra["p_e"], 3) == 0.213


def test_irrcac_distrib_6raters() -> None:
    res = multirater(IRRCAC_DISTRIB_6RATERS)
    assert res["gwet_ac1"].value == pytest.approx(0.4448007, abs=1e-7)
    assert res["fleiss_kappa"].value == pytest.approx(0.4139265, abs=1e-7)
    assert alpha_package(IRRCAC_DISTRIB_6RATERS, "nominal")[0] == pytest.approx(0.4204384, abs=1e-7)


def test_cohen_kappa_irrcac_contingency_table() -> None:
    assert kappa_from_table(IRRCAC_CONT3X3)[0] == pytest.approx(0.7964094, abs=1e-7)
    assert kappa_from_table(IRRCAC_CONT3X3, "quadratic")[0] == pytest.approx(0.8921569, abs=1e-7)
    # the same through raw rating pairs
    a, b = np.nonzero(IRRCAC_CONT3X3)
    reps = IRRCAC_CONT3X3[a, b]
    res = cohen(np.repeat(a, reps), np.repeat(b, reps), 3, ordered=True)
    assert res["n"] == 100 and res["agreement"] == pytest.approx(0.89)
    assert res["kappa"] == pytest.approx(0.7964094, abs=1e-7)
    assert res["kappa_quadratic"] == pytest.approx(0.8921569, abs=1e-7)
    # linear weights: recompute from the definition with the full ordered label list
    p = IRRCAC_CONT3X3 / 100
    w = 1 - np.abs(np.subtract.outer(np.arange(3), np.arange(3))) / 2
    po, pe = (w * p).sum(), (w * np.outer(p.sum(1), p.sum(0))).sum()
    assert res["kappa_linear"] == pytest.approx((po - pe) / (1 - pe))


def test_specific_agreement_two_raters_is_dice() -> None:
    a = np.array([0, 0, 0, 1, 1, 0, 1, 1, 1, 1])
    b = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 1])
    unit = np.concatenate([np.arange(10), np.arange(10)])
    counts = value_counts(unit, np.concatenate([a, b]), 10, 2)
    sa = specific_agreement(counts, ["safe", "unsafe"])
    both0, both1, diff = 3, 5, 2
    assert sa["safe"] == pytest.approx(2 * both0 / (2 * both0 + diff))
    assert sa["unsafe"] == pytest.approx(2 * both1 / (2 * both1 + diff))


def test_pairwise_and_leave_one_out() -> None:
    # raters A and B always agree; C always says the other label
    truth = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    unit = np.tile(np.arange(8), 3)
    rater = np.repeat(np.arange(3), 8)
    code = np.concatenate([truth, truth, 1 - truth])
    rows = {(r["rater_a"], r["rater_b"]): r for r in pairwise(unit, rater, code, ["A", "B", "C"], 2, ordered=False)}
    assert rows[("A", "B")]["kappa"] == pytest.approx(1.0)
    assert rows[("A", "C")]["kappa"] == pytest.approx(-1.0)
    loo = {r["rater"]: r for r in leave_one_out(unit, rater, code, ["A", "B", "C"], 8, 2, ordered=False)}
    assert loo["C"]["agreement"] == 0.0 and loo["C"]["n_compared"] == 8
    assert loo["A"]["ties"] == 8 and loo["A"]["n_compared"] == 0  # B and C always tie for A
