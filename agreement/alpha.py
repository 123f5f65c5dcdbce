"""Krippendorff's alpha from coincidence matrices, with an exact, vectorised unit bootstrap.

Ratings arrive as a *value-count matrix* ``counts`` of shape (units, values): how many
coders gave each value to each unit (Krippendorff's "reliability data" in the form the
``krippendorff`` package calls ``value_counts``). Values are integer codes ``0..V-1`` in the
taxonomy's label order, so ordinal distances follow that order.

Why our own coincidence code beside the ``krippendorff`` package: the point estimate goes
through the package (:func:`alpha_package`), but a bootstrap of 1,000 resamples over 100,000
units needs a faster route. Every unit contributes ``(n_u n_u^T - diag(n_u)) / (m_u - 1)``
to the coincidence matrix, and that contribution depends only on the unit's count vector.
Units with the same count vector ("pattern") are interchangeable, so resampling N units with
replacement is *exactly* a multinomial draw of pattern frequencies; each resample's
coincidence matrix is then one matrix product. The tests check both routes agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LEVELS: tuple[str, ...] = ("nominal", "ordinal", "interval", "ratio")
DEFAULT_RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass
class Estimate:
    """A coefficient with its bootstrap interval; ``value`` None means undefined (see ``reason``)."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    reason: str = ""
    resamples: int = 0  # bootstrap resamples with a defined value
    extra: dict[str, Any] = field(default_factory=dict)
    # bootstrap resamples in which the coefficient was undefined (no variation, fewer than two
    # pairable values) and so left out of the interval; None when no bootstrap counted them
    resamples_undefined: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}
        if self.reason:
            out["undefined_reason"] = self.reason
        if self.resamples:
            out["resamples"] = self.resamples
        if self.resamples_undefined is not None:
            out["n_resamples_undefined"] = self.resamples_undefined
        out.update(self.extra)
        return out


# ---------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------


def value_counts(unit: np.ndarray, code: np.ndarray, n_units: int, n_values: int) -> np.ndarray:
    """(units, values) count matrix from parallel arrays of unit index and value code."""
    flat = np.bincount(unit.astype(np.int64) * n_values + code.astype(np.int64), minlength=n_units * n_values)
    return flat.reshape(n_units, n_values)


def coincidence(counts: np.ndarray) -> np.ndarray:
    """Krippendorff's coincidence matrix o_ck (units with fewer than two values drop out)."""
    counts = np.asarray(counts, dtype=np.float64)
    m = counts.sum(axis=1)
    pairable = m >= 2
    c = counts[pairable]
    w = 1.0 / (m[pairable] - 1.0)
    o = (c * w[:, None]).T @ c
    o -= np.diag((c * w[:, None]).sum(axis=0))
    return o


def distance(level: str, n_c: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """Squared distance metric delta^2 for each value pair; ``n_c`` may be (V,) or (R, V).

    ``values`` are the numeric values behind the codes (interval/ratio only; default 0..V-1).
    The ordinal metric depends on the marginals, hence the batched form for bootstraps.
    """
    n_c = np.asarray(n_c, dtype=np.float64)
    n_vals = n_c.shape[-1]
    vals = np.arange(n_vals, dtype=np.float64) if values is None else np.asarray(values, dtype=np.float64)
    if level == "nominal":
        d = 1.0 - np.eye(n_vals)
        return np.broadcast_to(d, (*n_c.shape[:-1], n_vals, n_vals)).copy() if n_c.ndim > 1 else d
    if level == "interval":
        d = (vals[:, None] - vals[None, :]) ** 2
        return np.broadcast_to(d, (*n_c.shape[:-1], n_vals, n_vals)).copy() if n_c.ndim > 1 else d
    if level == "ratio":
        with np.errstate(divide="ignore", invalid="ignore"):
            s = vals[:, None] + vals[None, :]
            d = np.where(s == 0, 0.0, ((vals[:, None] - vals[None, :]) / np.where(s == 0, 1, s)) ** 2)
        return np.broadcast_to(d, (*n_c.shape[:-1], n_vals, n_vals)).copy() if n_c.ndim > 1 else d
    if level == "ordinal":
        # delta_ck = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2 for c <= k, symmetric.
        cum = np.concatenate([np.zeros((*n_c.shape[:-1], 1)), np.cumsum(n_c, axis=-1)], axis=-1)
        lo = np.minimum.outer(np.arange(n_vals), np.arange(n_vals))
        hi = np.maximum.outer(np.arange(n_vals), np.arange(n_vals))
        span = cum[..., hi + 1] - cum[..., lo]
        half = (n_c[..., :, None] + n_c[..., None, :]) / 2.0
        d = (span - half) ** 2
        eye = np.eye(n_vals, dtype=bool)
        d[..., eye] = 0.0
        return d
    raise ValueError(f"level_of_measurement must be one of {', '.join(LEVELS)}, got {level!r}")


def undefined_reason(n_c: np.ndarray, level: str, values: np.ndarray | None = None) -> str:
    """Why alpha is undefined given the pairable values per label ``n_c`` ("" when it is defined).

    ``n_c`` are the coincidence matrix's row sums, i.e. each label's count on units with two
    or more ratings: alpha needs two such values and expected disagreement D_e above zero.
    """
    n_c = np.asarray(n_c, dtype=np.float64)
    n = float(n_c.sum())
    if n < 2:
        return "fewer than 2 pairable values (no unit has two or more ratings)"
    if float((np.outer(n_c, n_c) * distance(level, n_c, values)).sum()) <= 0:
        return "no variation: every pairable value is the same label"
    return ""


def alpha_from_coincidence(o: np.ndarray, level: str, values: np.ndarray | None = None) -> tuple[float | None, str]:
    """alpha = 1 - D_o / D_e; (None, reason) when there are too few values or no variation."""
    n_c = o.sum(axis=1)
    n = float(n_c.sum())
    if n < 2:
        return None, "fewer than 2 pairable values (no unit has two or more ratings)"
    d = distance(level, n_c, values)
    d_o = float((o * d).sum())
    d_e = float((np.outer(n_c, n_c) * d).sum()) / (n - 1.0)
    if d_e <= 0:
        return None, "no variation: every pairable value is the same label"
    return 1.0 - d_o / d_e, ""


def alpha_package(
    counts: np.ndarray, level: str, values: np.ndarray | None = None, o: np.ndarray | None = None
) -> tuple[float | None, str]:
    """Point alpha through the ``krippendorff`` package, with the full value domain and level.

    The package's default level is interval and its default domain is the values seen,
    so both are always passed explicitly. Undefined cases are detected first (the package
    would return NaN or raise).
    """
    import krippendorff

    counts = np.asarray(counts)
    pairable_counts = counts[counts.sum(axis=1) >= 2]
    if o is None:  # the undefined cases need only the pairable values per label (o's row sums)
        reason = undefined_reason(pairable_counts.sum(axis=0), level, values)
    else:
        reason = alpha_from_coincidence(o, level, values)[1]
    if reason:
        return None, reason
    domain = list(range(counts.shape[1])) if values is None else [float(v) for v in values]
    result = float(krippendorff.alpha(value_counts=pairable_counts, value_domain=domain, level_of_measurement=level))  # type: ignore[arg-type]
    return result, ""


# ---------------------------------------------------------------------------------------
# patterns and the exact bootstrap
# ---------------------------------------------------------------------------------------


def patterns(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct count vectors (P, V) and how many units have each (P,)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape[0] == 0:
        return np.zeros((0, counts.shape[1]), dtype=np.int64), np.zeros(0, dtype=np.int64)
    base = int(counts.max()) + 1
    if base ** counts.shape[1] < 2**62:
        key = counts @ (base ** np.arange(counts.shape[1], dtype=np.int64))
        _uniq, first, freq = np.unique(key, return_index=True, return_counts=True)
        return counts[first], freq
    uniq_rows, freq = np.unique(counts, axis=0, return_counts=True)
    return uniq_rows, freq


def _pattern_coincidences(pat: np.ndarray) -> np.ndarray:
    """(P, V*V) coincidence contribution of one unit of each pattern."""
    pat = pat.astype(np.float64)
    m = pat.sum(axis=1)
    w = np.where(m >= 2, 1.0 / np.maximum(m - 1.0, 1.0), 0.0)
    outer = pat[:, :, None] * pat[:, None, :]
    idx = np.arange(pat.shape[1])
    outer[:, idx, idx] -= pat
    return (outer * w[:, None, None]).reshape(pat.shape[0], pat.shape[1] * pat.shape[1])


def batch_alpha(o_flat: np.ndarray, n_values: int, level: str, values: np.ndarray | None = None) -> np.ndarray:
    """Alpha for a batch of flattened coincidence matrices (R, V*V); NaN where undefined."""
    o = o_flat.reshape(-1, n_values, n_values)
    n_c = o.sum(axis=2)
    n = n_c.sum(axis=1)
    d = distance(level, n_c, values)
    d_o = (o * d).sum(axis=(1, 2))
    d_e = (n_c[:, :, None] * n_c[:, None, :] * d).sum(axis=(1, 2)) / np.maximum(n - 1.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = 1.0 - d_o / d_e
    a[(n < 2) | (d_e <= 0)] = np.nan
    return a


def resample_weights(freq: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(R, P) pattern frequencies of ``resamples`` unit bootstraps (multinomial = resampling units)."""
    rng = np.random.default_rng(seed)
    total = int(freq.sum())
    if total == 0 or resamples <= 0:
        return np.zeros((max(resamples, 0), len(freq)))
    return rng.multinomial(total, freq / total, size=resamples).astype(np.float64)


NO_INTERVAL = "every resample gave the same value"


def honest_bounds(lo: float | None, hi: float | None, extra: dict[str, Any]) -> tuple[float | None, float | None]:
    """A zero-width interval (every resample the same: e.g. all pairable units agree) claims a
    certainty that a sample cannot give: drop it and say why in ``extra["no_interval"]``."""
    if lo is not None and lo == hi:
        extra["no_interval"] = NO_INTERVAL
        return None, None
    return lo, hi


def pattern_jackknife(freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(J, P) pattern frequencies with one unit of each present pattern left out, and how many
    units each row stands for: the jackknife of any statistic linear in the frequencies."""
    freq = np.asarray(freq, dtype=np.float64)
    present = np.flatnonzero(freq > 0)
    w = np.repeat(freq[None, :], len(present), axis=0)
    w[np.arange(len(present)), present] -= 1.0
    return w, freq[present]


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float | None, float | None, int]:
    """Percentile interval over the defined (non-NaN) resamples."""
    ok = samples[~np.isnan(samples)]
    if ok.size == 0:
        return None, None, 0
    lo, hi = np.quantile(ok, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(lo), float(hi), int(ok.size)


def bca_interval(
    estimate: float,
    samples: np.ndarray,
    jackknife: np.ndarray,
    jackknife_weights: np.ndarray,
    confidence: float = CONFIDENCE,
) -> tuple[float | None, float | None, int]:
    """Efron's bias-corrected and accelerated (BCa) bootstrap interval.

    ``jackknife`` holds the statistic with one item left out, once per *kind* of item (a
    table cell, a pattern), and ``jackknife_weights`` how many items are of that kind, so the
    acceleration costs nothing per item. Falls back to the percentile interval when the
    correction is not defined (every resample on one side of the estimate, undefined
    jackknife values). Why not the percentile interval: for pairwise kappa it covered
    0.877-0.956 where BCa covered 0.905-0.987 (bench/bench_rater_intervals.py, docs/agreement.md).
    """
    from scipy.stats import norm

    ok = samples[~np.isnan(samples)]
    if ok.size == 0:
        return None, None, 0
    below = (np.count_nonzero(ok < estimate) + 0.5 * np.count_nonzero(ok == estimate)) / ok.size
    jack_ok = ~np.isnan(jackknife)
    if not 0.0 < below < 1.0 or not jack_ok.all():
        return percentile_interval(samples, confidence)
    z0 = float(norm.ppf(below))
    w = np.asarray(jackknife_weights, dtype=np.float64)
    d = (w * jackknife).sum() / w.sum() - jackknife
    spread = float((w * d**2).sum())
    accel = float((w * d**3).sum() / (6.0 * spread**1.5)) if spread > 0 else 0.0
    tail = (1.0 - confidence) / 2.0
    levels = []
    for z in (norm.ppf(tail), norm.ppf(1.0 - tail)):
        levels.append(float(norm.cdf(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))))
    lo, hi = np.quantile(ok, levels)
    return float(lo), float(hi), int(ok.size)


def krippendorff_alpha(
    counts: np.ndarray,
    level: str,
    *,
    values: np.ndarray | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    weights: np.ndarray | None = None,
    pats: tuple[np.ndarray, np.ndarray] | None = None,
) -> Estimate:
    """Point alpha (package) with a seeded 95% BCa bootstrap interval over units.

    ``weights``/``pats`` let callers share one set of resample weights across several
    coefficients (same resamples for alpha, AC1, ...). Resamples in which alpha is undefined
    (every pairable value the same label: likely when a label is rare) are left out of the
    interval and counted in ``resamples_undefined`` (``n_resamples_undefined``). BCa's
    jackknife leaves out one unit per pattern (:func:`pattern_jackknife`); where it is not
    defined the interval is the percentile one.
    """
    if level not in LEVELS:
        raise ValueError(f"level_of_measurement must be one of {', '.join(LEVELS)}, got {level!r}")
    counts = np.asarray(counts)
    n_values = counts.shape[1]
    extra = {"level": level}
    if resamples <= 0 and pats is None:  # point value only: no patterns needed (a sort of the units)
        value, reason = alpha_package(counts, level, values)
        return Estimate(value, reason=reason, extra=extra)
    pat, freq = pats if pats is not None else patterns(counts)
    contrib = _pattern_coincidences(pat)
    o = (freq.astype(np.float64) @ contrib).reshape(n_values, n_values)
    value, reason = alpha_package(counts, level, values, o=o)
    if value is None:
        return Estimate(None, reason=reason, extra=extra)
    if resamples <= 0:
        return Estimate(value, extra=extra)
    w = weights if weights is not None else resample_weights(freq, resamples, seed)
    boot = batch_alpha(w @ contrib, n_values, level, values)
    jack_w, jack_n = pattern_jackknife(freq)
    jack = batch_alpha(jack_w @ contrib, n_values, level, values)
    lo, hi, n_ok = bca_interval(value, boot, jack, jack_n)
    lo, hi = honest_bounds(lo, hi, extra)
    return Estimate(value, lo, hi, resamples=n_ok, extra=extra, resamples_undefined=int(np.isnan(boot).sum()))


# ---------------------------------------------------------------------------------------
# paired bootstrap: alpha with vs without one more rater
# ---------------------------------------------------------------------------------------


@dataclass
class PairedAlpha:
    """Alpha without and with one more rater (e.g. the judge) and their difference.

    ``difference`` = ``alpha_with - alpha_without``; ``ci_low``/``ci_high`` is its BCa
    interval from resampling units *jointly* (each resample takes the same units for both).
    Resamples where either alpha is undefined give no difference and are counted.
    """

    level: str
    alpha_without: float | None
    alpha_with: float | None
    difference: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = CONFIDENCE
    resamples: int = 0  # resamples drawn
    resamples_defined: int = 0  # ... with both alphas defined (the interval's sample)
    resamples_undefined_without: int = 0
    resamples_undefined_with: int = 0
    resamples_undefined: int = 0  # either undefined: no difference
    without_ci: tuple[float | None, float | None] = (None, None)  # from the same resamples
    with_ci: tuple[float | None, float | None] = (None, None)
    n_units: int = 0
    n_units_pairable_without: int = 0
    n_units_pairable_with: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "level": self.level,
            "alpha_without": self.alpha_without,
            "alpha_with": self.alpha_with,
            "difference": self.difference,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "resamples_defined": self.resamples_defined,
            "n_resamples_undefined": self.resamples_undefined,
            "n_resamples_undefined_without": self.resamples_undefined_without,
            "n_resamples_undefined_with": self.resamples_undefined_with,
            "alpha_without_ci": list(self.without_ci),
            "alpha_with_ci": list(self.with_ci),
            "n_units": self.n_units,
            "n_units_pairable_without": self.n_units_pairable_without,
            "n_units_pairable_with": self.n_units_pairable_with,
        }
        if self.reason:
            out["undefined_reason"] = self.reason
        return out


def paired_alpha_difference(
    counts_without: np.ndarray,
    counts_with: np.ndarray,
    level: str,
    *,
    values: np.ndarray | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    unit_weights: np.ndarray | None = None,
) -> PairedAlpha:
    """Alpha without vs with one more rater, with a paired unit-bootstrap interval of the difference.

    ``counts_without`` and ``counts_with`` are (units, values) count matrices over the *same*
    units in the same order: row u of both is the same item, the second holding the extra
    rater's rating too. Build both from one unit index, e.g. ``r.counts()`` and
    ``r.add_rater(name, item_ids, codes).counts()`` (``add_rater`` keeps ``r``'s items, so a
    unit with one person and the judge becomes pairable only in the second matrix, and the
    rows still line up). Matrices of different shapes are refused.

    Each resample draws units with replacement and uses the same draw for both matrices, so
    the interval of the difference reflects that both alphas come from the same items (two
    separate intervals would overstate its uncertainty). As in :func:`krippendorff_alpha`, a
    draw of units is a multinomial draw of the frequencies of the distinct *joint* count rows
    (a unit's row without and with the rater together), exact and fast. ``unit_weights``
    (resamples, units), how often each unit is drawn in each resample, replaces the random
    draws (for explicit resampling, e.g. tests). Point values come from the ``krippendorff``
    package.
    """
    if level not in LEVELS:
        raise ValueError(f"level_of_measurement must be one of {', '.join(LEVELS)}, got {level!r}")
    a = np.asarray(counts_without, dtype=np.int64)
    b = np.asarray(counts_with, dtype=np.int64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            "counts_without and counts_with must be (units, values) matrices over the same units, "
            f"row for row (e.g. r.counts() and r.add_rater(...).counts()); got shapes {a.shape} and {b.shape}"
        )
    n_units, n_values = a.shape
    out = PairedAlpha(
        level,
        None,
        None,
        None,
        confidence=confidence,
        n_units=n_units,
        n_units_pairable_without=int((a.sum(axis=1) >= 2).sum()),
        n_units_pairable_with=int((b.sum(axis=1) >= 2).sum()),
    )
    out.alpha_without, reason_a = alpha_package(a, level, values)
    out.alpha_with, reason_b = alpha_package(b, level, values)
    if out.alpha_without is None or out.alpha_with is None:
        out.reason = "; ".join(f"{which}: {why}" for which, why in (("without", reason_a), ("with", reason_b)) if why)
        return out
    out.difference = out.alpha_with - out.alpha_without
    if unit_weights is not None:
        w = np.asarray(unit_weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != n_units:
            raise ValueError(f"unit_weights must be (resamples, {n_units}), got {w.shape}")
        pat_a, pat_b, freq = a, b, np.ones(n_units)
    else:
        if resamples <= 0:
            return out
        pat, freq = patterns(np.concatenate([a, b], axis=1))
        pat_a, pat_b = pat[:, :n_values], pat[:, n_values:]
        w = resample_weights(freq, resamples, seed)
    contrib_a, contrib_b = _pattern_coincidences(pat_a), _pattern_coincidences(pat_b)
    boot_a = batch_alpha(w @ contrib_a, n_values, level, values)
    boot_b = batch_alpha(w @ contrib_b, n_values, level, values)
    diff = boot_b - boot_a  # NaN where either is undefined
    # BCa's jackknife: one unit of each joint pattern (or each unit) left out
    jack_w, jack_n = pattern_jackknife(freq)
    jack_a = batch_alpha(jack_w @ contrib_a, n_values, level, values)
    jack_b = batch_alpha(jack_w @ contrib_b, n_values, level, values)
    out.resamples = int(w.shape[0])
    out.ci_low, out.ci_high, out.resamples_defined = bca_interval(
        out.difference, diff, jack_b - jack_a, jack_n, confidence
    )
    out.resamples_undefined_without = int(np.isnan(boot_a).sum())
    out.resamples_undefined_with = int(np.isnan(boot_b).sum())
    out.resamples_undefined = int(np.isnan(diff).sum())
    out.without_ci = bca_interval(out.alpha_without, boot_a, jack_a, jack_n, confidence)[:2]
    out.with_ci = bca_interval(out.alpha_with, boot_b, jack_b, jack_n, confidence)[:2]
    return out
