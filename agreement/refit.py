"""Dawid–Skene as the reference of design-based estimates: fitted under the design, with the
fit's own uncertainty carried into every interval.

A majority reference is fixed per item, so the design variance is the whole story. A
Dawid–Skene posterior depends on every sample item through the fitted confusion matrices and
class priors, and two things follow (both measured: ``bench/bench_estimates.py --method
dawid-skene``, docs/statistics-validation.md):

1. **The fit is weighted by the design.** Each sample item counts 1/π in the EM, so the fit
   estimates the one a full review would give, not the fit of a sample tilted toward the
   borderline items the queue serves first. Items reviewed outside the sample get a posterior
   but do not shape the fit.
2. **Intervals are widened for the fit.** On bootstrap resamples of the sample (each item
   drawn Poisson(1) times, Poisson sampling's own bootstrap) every estimate is computed twice:
   with Dawid–Skene refitted on the resample, and with the full sample's posteriors held
   fixed. The ratio of their variances is the share the fit adds; the interval's sides are
   stretched by its square root (never narrowed). Without it, 95% intervals covered 0.72–0.89.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from safereview.agreement import data
from safereview.agreement.consensus import Consensus, consensus_from_ratings
from safereview.agreement.sample import DesignSample

REPLICATES = 100  # bootstrap refits; the variance ratio's own noise is about ±14% (±7% in width)
REFIT_TOL = 1e-6  # a refit starts at the full fit's posteriors; it only has to move as far as its resample
MIN_REPLICATES = 20  # fewer usable replicates than this: the estimate is left undefined


def _unit_weights(r: data.Ratings, ds: DesignSample) -> np.ndarray:
    """1/π for each rated item in the sample, 0 for the others (rated outside the sample)."""
    sample_ids, pi = ds.sample_ids, ds.sample_pi
    w = np.zeros(r.n_units)
    if len(sample_ids) == 0 or r.n_units == 0:
        return w
    pos = np.clip(np.searchsorted(sample_ids, r.item_ids), 0, len(sample_ids) - 1)
    found = sample_ids[pos] == r.item_ids
    w[found] = 1.0 / pi[pos[found]]
    return w


def _resample(ds: DesignSample, rng: np.random.Generator) -> DesignSample:
    """The design sample with each sample item drawn Poisson(1) times: weight k/π (π/k as its
    inclusion probability, at most 1); an item drawn 0 times leaves this resample."""
    k = rng.poisson(1.0, size=int(ds.in_sample.sum()))
    pos = np.flatnonzero(ds.in_sample)
    in_sample = ds.in_sample.copy()
    in_sample[pos[k == 0]] = False
    pi = ds.pi.copy()
    pi[pos[k > 0]] = pi[pos[k > 0]] / k[k > 0]
    return dataclasses.replace(ds, in_sample=in_sample, pi=pi)


def bootstrap_samples(ds: DesignSample, replicates: int = REPLICATES, seed: int = 0) -> list[DesignSample]:
    """Bootstrap resamples of the design sample, shared by every dimension of one report (so
    that a figure combining dimensions, such as Both-Safe, is resampled as one)."""
    rng = np.random.default_rng([seed, 7])
    return [_resample(ds, rng) for _ in range(replicates)]


def design_consensus(
    r: data.Ratings,
    ds: DesignSample,
    samples: list[DesignSample],
    *,
    threshold: float,
    adjudications: dict[int, dict[str, Any]] | None,
) -> tuple[Consensus, list[Consensus]]:
    """Dawid–Skene fitted with the design's weights, and refitted on each of ``samples``."""
    w = _unit_weights(r, ds)
    if r.n_units == 0 or not w.sum() > 0:  # nothing reviewed in the sample yet: nothing to fit on
        cons = consensus_from_ratings(r, method="majority", threshold=threshold, adjudications=adjudications)
        return cons, [cons for _ in samples]
    main = consensus_from_ratings(
        r, method="dawid-skene", threshold=threshold, adjudications=adjudications, unit_weights=w
    )
    fits = []
    for ds_b in samples:
        w_b = _unit_weights(r, ds_b)
        fits.append(
            consensus_from_ratings(
                r,
                method="dawid-skene",
                threshold=threshold,
                adjudications=adjudications,
                unit_weights=w_b,
                init=main.ds.posteriors if main.ds is not None else None,
                tol=REFIT_TOL,
            )
            if w_b.sum() > 0
            else main  # a resample without any rated item: nothing to refit on
        )
    return main, fits


def reference(
    r: data.Ratings,
    ds: DesignSample,
    samples: list[DesignSample],
    *,
    method: str,
    threshold: float,
    adjudications: dict[int, dict[str, Any]] | None,
) -> tuple[Consensus, list[Consensus]]:
    """The people's reference for design-based estimates and its refits: Dawid–Skene fitted
    under the design (:func:`design_consensus`), or the averaged reviews (nothing to refit)."""
    if method == "dawid-skene":
        return design_consensus(r, ds, samples, threshold=threshold, adjudications=adjudications)
    return consensus_from_ratings(r, method=method, threshold=threshold, adjudications=adjudications), []


def widened(
    compute: Callable[[Any, DesignSample], Any], main: Any, ds: DesignSample, samples: list, refits: list
) -> Any:
    """``compute(reference, sample)`` (any nesting of dicts and lists holding estimate dicts)
    for the fitted reference ``main`` on the design sample, with every estimate's interval
    widened for the fit: ``refits[b]`` is the reference refitted on ``samples[b]``."""
    out = compute(main, ds)
    if not samples:
        return out
    refit = [compute(a, s) for a, s in zip(refits, samples, strict=True)]
    fixed = [compute(main, s) for s in samples]
    return _walk(out, refit, fixed)


_KEYS = ("metric", "group", "dimension", "label")  # what names a row in a list of rows


def _row_key(row: Any, i: int) -> Any:
    if isinstance(row, dict):
        named = tuple((k, row[k]) for k in _KEYS if isinstance(row.get(k), str))
        if named:
            return named
        if isinstance(row.get("value"), str) and "ci_low" not in row and "low" not in row:
            return (("value", row["value"]),)  # a slice row: its value names it
    return i


def _walk(main: Any, refit: list[Any], fixed: list[Any]) -> Any:
    if isinstance(main, dict):
        if _is_estimate(main):
            return _widen(main, refit, fixed)
        return {k: _walk(v, [_get(x, k) for x in refit], [_get(x, k) for x in fixed]) for k, v in main.items()}
    if isinstance(main, list):
        out = []
        for i, item in enumerate(main):
            key = _row_key(item, i)
            out.append(_walk(item, [_find(x, key) for x in refit], [_find(x, key) for x in fixed]))
        return out
    return main


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, dict) else None


def _find(rows: Any, key: Any) -> Any:
    if not isinstance(rows, list):
        return None
    if isinstance(key, int):
        return rows[key] if key < len(rows) else None
    return next((r for i, r in enumerate(rows) if _row_key(r, i) == key), None)


def _bounds_keys(e: dict[str, Any]) -> tuple[str, str] | None:
    if "ci_low" in e and "ci_high" in e:
        return "ci_low", "ci_high"
    if "low" in e and "high" in e:
        return "low", "high"
    return None


def _is_estimate(e: dict[str, Any]) -> bool:
    return _bounds_keys(e) is not None and "value" in e


def _value(e: Any) -> float:
    v = e.get("value") if isinstance(e, dict) else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan


def _widen(e: dict[str, Any], refit: list[Any], fixed: list[Any]) -> dict[str, Any]:
    value = _value(e)
    if not math.isfinite(value):
        return e
    lo_key, hi_key = _bounds_keys(e)  # type: ignore[misc]
    pairs = np.array([(_value(a), _value(b)) for a, b in zip(refit, fixed, strict=True)], dtype=float)
    pairs = pairs[np.isfinite(pairs).all(axis=1)] if len(pairs) else pairs.reshape(0, 2)
    out = dict(e)
    if len(pairs) < MIN_REPLICATES:
        out.update({"value": None, lo_key: None, hi_key: None})
        out["undefined_reason"] = "too few sample items to refit Dawid–Skene on resamples"
        return out
    var_refit, var_fixed = float(pairs[:, 0].var(ddof=1)), float(pairs[:, 1].var(ddof=1))
    se = e.get("se")
    if var_fixed > 0:
        factor = max(1.0, var_refit / var_fixed)
    elif isinstance(se, (int, float)) and se > 0:
        factor = 1.0 + var_refit / se**2
    else:
        factor = 1.0 if var_refit == 0 else math.inf
    stretch = math.sqrt(factor)
    out["fit_inflation"] = factor
    low, high = e[lo_key], e[hi_key]
    if not math.isfinite(stretch):  # the fixed posteriors do not vary at all, the refits do
        out.update({lo_key: 0.0, hi_key: 1.0})
        return out
    if low is None or high is None:
        return out
    out[lo_key] = max(0.0, value - (value - low) * stretch)
    out[hi_key] = min(1.0, value + (high - value) * stretch)
    if isinstance(se, (int, float)):
        out["se"] = se * stretch
    for n_key in ("n_eff", "n_effective"):
        if isinstance(e.get(n_key), (int, float)):
            out[n_key] = e[n_key] / factor
    if isinstance(e.get("method"), str):
        out["method"] = f"{e['method']}; widened ×{stretch:.2f} for the Dawid–Skene fit"
    return out
