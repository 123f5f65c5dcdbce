"""Design-based estimators against a known finite population: unbiased, intervals that cover,
PPI narrower than human-only when the judge is informative, and ``ppi_py``'s point estimate.

Each check draws Poisson samples (every item in or out independently with its known
inclusion probability) from one fixed synthetic collection whose truth is known, so the
figures are compared with the truth, not with a hard-coded number.
"""

from __future__ import annotations

import numpy as np
import pytest

from safereview.agreement.estimators import (
    Estimate,
    hajek_mean,
    hajek_ratio,
    judge_only_mean,
    kish_n,
    ppi_lambda,
    ppi_mean,
    rate_bounds,
    reviews_needed,
    satterthwaite_df,
)

N = 3000
REPS = 400


def _population(seed: int = 7) -> dict[str, np.ndarray]:
    """A collection: truth y (1 = unsafe, prevalence ~0.2), a judge score f that is informative
    but biased (it misses some unsafe items), and borderline-first inclusion probabilities
    with a uniform floor."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-1.8, 1.6, N)
    p_true = 1.0 / (1.0 + np.exp(-logit))
    y = (rng.random(N) < p_true).astype(float)
    f = np.clip(p_true + 0.1 + rng.normal(0, 0.12, N), 0.0, 1.0)
    judge_unsafe = (f > 0.5).astype(float)
    uncertainty = 1.0 - np.abs(2.0 * f - 1.0)
    s = 0.8 * uncertainty / uncertainty.mean() + 0.2  # mixed with a uniform floor, mean 1
    pi = np.minimum(1.0, 300 / N * s)  # about 300 reviews, borderline items far more likely
    return {"y": y, "f": f, "judge": judge_unsafe, "pi": pi}


def _samples(pop: dict[str, np.ndarray], reps: int = REPS, seed: int = 11):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        yield rng.random(N) < pop["pi"]


def _coverage(estimates: list[Estimate], truth: float) -> float:
    return float(np.mean([e.low <= truth <= e.high for e in estimates]))


def test_hajek_mean_is_unbiased_and_covers_under_unequal_probabilities() -> None:
    pop = _population()
    truth = float(pop["y"].mean())
    ests = [hajek_mean(pop["y"][m], pop["pi"][m]) for m in _samples(pop)]
    values = np.array([e.value for e in ests])
    naive = np.array([pop["y"][m].mean() for m in _samples(pop)])
    assert abs(values.mean() - truth) < 0.01
    assert 0.92 <= _coverage(ests, truth) <= 0.98
    assert abs(naive.mean() - truth) > 0.03, "the unweighted mean of a borderline-first sample should be biased"


def test_ppi_mean_is_unbiased_covers_and_beats_human_only_with_an_informative_judge() -> None:
    pop = _population()
    truth = float(pop["y"].mean())
    ppi, human = [], []
    for m in _samples(pop):
        ppi.append(ppi_mean(pop["y"][m], pop["judge"][m], pop["pi"][m], pop["judge"]))
        human.append(hajek_mean(pop["y"][m], pop["pi"][m]))
    values = np.array([e.value for e in ppi])
    assert abs(values.mean() - truth) < 0.01
    assert 0.92 <= _coverage(ppi, truth) <= 0.98
    width_ratio = np.mean([e.half_width for e in ppi]) / np.mean([e.half_width for e in human])
    assert width_ratio < 0.9, width_ratio
    judge = judge_only_mean(pop["judge"])
    assert abs(judge - truth) > 0.02, "the uncorrected judge figure is biased on this population"


def test_ppi_with_a_useless_judge_stays_valid() -> None:
    """A judge that knows nothing gets λ near 0: the figure falls back to human-only, still covering."""
    pop = _population()
    noise = np.random.default_rng(3).random(N)
    truth = float(pop["y"].mean())
    ests = [ppi_mean(pop["y"][m], noise[m], pop["pi"][m], noise) for m in _samples(pop, 200)]
    assert abs(np.mean([e.value for e in ests]) - truth) < 0.015
    assert _coverage(ests, truth) >= 0.91


def test_conditional_rate_under_blocking_covers() -> None:
    """Under-blocking: among items people call unsafe, the share the judge calls safe."""
    pop = _population()
    missed = (pop["y"] == 1) & (pop["judge"] == 0)
    truth = float(missed.sum() / pop["y"].sum())
    ests = [hajek_ratio(missed[m], pop["y"][m], pop["pi"][m]) for m in _samples(pop)]
    assert abs(np.mean([e.value for e in ests]) - truth) < 0.015
    assert 0.92 <= _coverage(ests, truth) <= 0.98


def test_point_estimate_matches_ppi_py_for_a_simple_random_sample() -> None:
    import ppi_py  # a test dependency (pyproject's test extra): the reference implementation

    rng = np.random.default_rng(5)
    f_all = rng.random(2000)
    idx = rng.choice(2000, 250, replace=False)
    y = (rng.random(250) < f_all[idx]).astype(float)
    pi = np.full(250, 250 / 2000)
    for lam in (0.0, 0.4, 1.0):
        ours = ppi_mean(y, f_all[idx], pi, f_all, lam=lam).value
        theirs = float(np.asarray(ppi_py.ppi_mean_pointestimate(y, f_all[idx], f_all, lam=lam)).item())
        assert ours == pytest.approx(theirs, abs=1e-12)
    # without tuning the two differ only in how lam is chosen; both are in [0, 1]
    assert 0.0 <= ppi_lambda(y, f_all[idx], pi) <= 1.0


def test_weights_effective_size_and_reviews_needed() -> None:
    assert kish_n(np.ones(10)) == pytest.approx(10.0)
    assert kish_n(np.array([1.0, 9.0])) < 2.0
    est = hajek_mean(np.array([0, 1, 1, 0, 1, 0, 0, 1] * 10, dtype=float), np.full(80, 0.1))
    more = reviews_needed(est, 0.02)
    assert more > 0
    # the planning rule: n (h/x)^2 in total, so twice the half-width needs a quarter of the reviews
    total = est.n_labelled + more
    assert total == pytest.approx(est.n_labelled * (est.half_width / 0.02) ** 2, rel=0.05)
    assert reviews_needed(est, 1.0) == 0
    assert reviews_needed(hajek_mean([], []), 0.02) == -1
    with pytest.raises(ValueError, match="half_width"):
        reviews_needed(est, 0.0)


def test_bad_probabilities_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="pi"):
        hajek_mean([1.0, 0.0], [0.5, 0.0])
    with pytest.raises(ValueError, match="pi"):
        hajek_mean([1.0], [1.5])
    with pytest.raises(ValueError, match="shape"):
        hajek_mean([1.0, 0.0], [0.5])


def test_a_few_heavy_items_cost_degrees_of_freedom_and_widen_the_interval() -> None:
    assert satterthwaite_df(np.ones(50)) == pytest.approx(50.0)
    assert satterthwaite_df(np.array([100.0] + [1.0] * 49)) == pytest.approx(149**2 / (100**2 + 49))  # ~2, not 50
    assert satterthwaite_df(np.zeros(5)) == float("inf")
    # the same 60 labels (30 unsafe), once with equal and once with very unequal probabilities
    y = np.array([1.0, 0.0] * 30)
    even = hajek_mean(y, np.full(60, 0.1))
    pi = np.where(np.arange(60) < 4, 0.01, 0.5)  # four items weigh 50 times the rest
    uneven = hajek_mean(y, pi)
    low, high = rate_bounds(uneven.value, uneven.se**2, pi, 1.959964, 30)  # the same interval on the normal value
    assert uneven.high - uneven.low > (high - low) * 1.05  # t on few degrees of freedom widens it
    assert even.high - even.low == pytest.approx(2 * 2.0 * even.se, rel=0.05)  # ~t(59), Wilson-shaped
