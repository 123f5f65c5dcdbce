"""Percent agreement, specific agreement, Gwet's AC1, Fleiss' kappa and Cohen's (weighted) kappa.

Multi-rater coefficients work on the (units, values) count matrix like :mod:`agreement.alpha`;
they follow Gwet (2014, *Handbook of Inter-Rater Reliability*) and his irrCAC package for
missing ratings:

- percent agreement ``p_a``: mean over units with >= 2 ratings of
  ``sum_k n_uk (n_uk - 1) / (m_u (m_u - 1))`` (share of agreeing rater pairs);
- class shares ``pi_k``: mean over units with >= 1 rating of ``n_uk / m_u``;
- AC1 chance agreement ``p_e = sum_k pi_k (1 - pi_k) / (Q - 1)`` with Q the size of the
  full label list; Fleiss' ``p_e = sum_k pi_k^2``; coefficient ``(p_a - p_e) / (1 - p_e)``.

All are linear in the units' count vectors, so the bootstrap reuses the pattern resample
weights of the alpha bootstrap (same resamples for every coefficient).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from safereview.agreement.alpha import CONFIDENCE, Estimate, bca_interval, honest_bounds, pattern_jackknife
from safereview.agreement.estimators import wilson_interval


def _unit_terms(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per unit (or pattern): agreeing-pair share, has>=2, class shares n/m, has>=1."""
    counts = np.asarray(counts, dtype=np.float64)
    m = counts.sum(axis=1)
    two = m >= 2
    pa_u = np.where(two, (counts * (counts - 1)).sum(axis=1) / np.maximum(m * (m - 1), 1), 0.0)
    one = m >= 1
    share = np.where(one[:, None], counts / np.maximum(m, 1)[:, None], 0.0)
    return pa_u, two.astype(np.float64), share, one.astype(np.float64)


def _coeffs(w: np.ndarray, terms: tuple[np.ndarray, ...], n_labels: int) -> dict[str, np.ndarray]:
    """Coefficients for a batch of unit weights ``w`` (R, U) (all ones = the sample itself)."""
    pa_u, two, share, one = terms
    with np.errstate(divide="ignore", invalid="ignore"):
        n2 = w @ two
        pa = (w @ pa_u) / n2
        pi = (w @ share) / (w @ one)[:, None]
        pe_ac1 = (pi * (1 - pi)).sum(axis=1) / max(n_labels - 1, 1)
        pe_fleiss = (pi**2).sum(axis=1)
        ac1 = (pa - pe_ac1) / (1 - pe_ac1)
        fleiss = (pa - pe_fleiss) / (1 - pe_fleiss)
    fleiss[pe_fleiss >= 1] = np.nan
    ac1[pe_ac1 >= 1] = np.nan
    for arr in (pa, ac1, fleiss):
        arr[n2 == 0] = np.nan
    return {"pa": pa, "ac1": ac1, "fleiss": fleiss, "pe_ac1": pe_ac1, "pe_fleiss": pe_fleiss}


def multirater(
    counts: np.ndarray,
    n_labels: int | None = None,
    *,
    pats: tuple[np.ndarray, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
    confidence: float = CONFIDENCE,
) -> dict[str, Estimate]:
    """Percent agreement, AC1 and Fleiss' kappa with BCa bootstrap intervals when ``weights`` given.

    ``pats`` = (patterns, frequencies) and ``weights`` = (R, P) resample weights from
    :func:`agreement.alpha.resample_weights`; without them only point values are returned.
    """
    counts = np.asarray(counts)
    q = counts.shape[1] if n_labels is None else n_labels
    if pats is None:
        point = _coeffs(np.ones((1, counts.shape[0])), _unit_terms(counts), q)
    else:
        pat, freq = pats
        point = _coeffs(freq[None, :].astype(np.float64), _unit_terms(pat), q)
        boot = jack = None
        if weights is not None and len(weights):
            boot = _coeffs(weights, _unit_terms(pat), q)
            jack_w, jack_n = pattern_jackknife(freq)
            jack = _coeffs(jack_w, _unit_terms(pat), q)
    out: dict[str, Estimate] = {}
    # why each is undefined (callers add "undefined"). AC1's chance agreement is at most 1/Q,
    # so only the lack of pairs leaves it undefined; Fleiss' is 1 when every rating is one label
    no_pairs = "no unit has two or more ratings"
    paired = not np.isnan(float(point["pa"][0]))
    reasons = {
        "pa": no_pairs,
        "ac1": no_pairs,
        "fleiss": "no variation: every rating is the same label" if paired else no_pairs,
    }
    for key, name in (("pa", "percent_agreement"), ("ac1", "gwet_ac1"), ("fleiss", "fleiss_kappa")):
        v = float(point[key][0])
        if np.isnan(v):
            out[name] = Estimate(None, reason=reasons[key])
            continue
        est = Estimate(v)
        if pats is not None and weights is not None and len(weights):
            est.ci_low, est.ci_high, est.resamples = bca_interval(
                v,
                boot[key],  # type: ignore[index]
                jack[key],  # type: ignore[index]
                jack_n,
                confidence,
            )
            est.ci_low, est.ci_high = honest_bounds(est.ci_low, est.ci_high, est.extra)
        if key != "pa":
            est.extra["p_a"] = float(point["pa"][0])
            est.extra["p_e"] = float(point["pe_ac1" if key == "ac1" else "pe_fleiss"][0])
        out[name] = est
    return out


def specific_agreement(counts: np.ndarray, labels: list[str]) -> dict[str, float | None]:
    """Per-class (specific) agreement: of the rater pairs in which one says class k, the share
    in which the other says k too (``2a / (2a + b + c)`` for two raters)."""
    counts = np.asarray(counts, dtype=np.float64)
    m = counts.sum(axis=1)
    c = counts[m >= 2]
    mm = m[m >= 2]
    num = (c * (c - 1)).sum(axis=0)
    den = (c * (mm[:, None] - 1)).sum(axis=0)
    return {lab: (float(num[k] / den[k]) if den[k] > 0 else None) for k, lab in enumerate(labels)}


# ---------------------------------------------------------------------------------------
# two raters
# ---------------------------------------------------------------------------------------


def agreement_weights(n_labels: int, kind: str = "unweighted") -> np.ndarray:
    """Agreement weight matrix: identity, linear ``1-|i-j|/(q-1)`` or quadratic ``1-(i-j)^2/(q-1)^2``."""
    i = np.arange(n_labels)
    if kind == "unweighted" or n_labels < 2:
        return np.eye(n_labels)
    diff = np.abs(i[:, None] - i[None, :]) / (n_labels - 1)
    if kind == "linear":
        return 1.0 - diff
    if kind == "quadratic":
        return 1.0 - diff**2
    raise ValueError(f"weights must be unweighted, linear or quadratic, got {kind!r}")


def confusion(a: np.ndarray, b: np.ndarray, n_labels: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(V, V) table of rater a's code (rows) against rater b's (columns), optionally weighted."""
    flat = np.bincount(
        a.astype(np.int64) * n_labels + b.astype(np.int64), weights=weights, minlength=n_labels * n_labels
    )
    return flat.reshape(n_labels, n_labels).astype(np.float64)


def kappa_from_table(table: np.ndarray, kind: str = "unweighted") -> tuple[float | None, str]:
    """Cohen's kappa (weighted for linear/quadratic) from a contingency table over the full label list."""
    table = np.asarray(table, dtype=np.float64)
    n = table.sum()
    if n <= 0:
        return None, "no items rated by both"
    p = table / n
    w = agreement_weights(table.shape[0], kind)
    po = float((w * p).sum())
    pe = float((w * np.outer(p.sum(axis=1), p.sum(axis=0))).sum())
    if pe >= 1.0 - 1e-12:
        return None, "no variation: chance agreement is 1"
    return (po - pe) / (1.0 - pe), ""


def _batch_kappa(tables: np.ndarray, kind: str) -> np.ndarray:
    """Kappa of each (V, V) table in a (R, V, V) batch; NaN where undefined (no variation)."""
    n = tables.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = tables / n[:, None, None]
        w = agreement_weights(tables.shape[1], kind)
        po = (w * p).sum(axis=(1, 2))
        pe = np.einsum("jk,rj,rk->r", w, p.sum(axis=2), p.sum(axis=1))
        out = (po - pe) / (1.0 - pe)
    out[(n <= 0) | (pe >= 1.0 - 1e-12)] = np.nan
    return out


def table_jackknife(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, V, V) tables with one item left out of each non-empty cell, and the cells' counts."""
    table = np.asarray(table, dtype=np.float64)
    flat = table.ravel()
    cells = np.flatnonzero(flat > 0)
    out = np.repeat(flat[None, :], len(cells), axis=0)
    out[np.arange(len(cells)), cells] -= 1.0
    return out.reshape(len(cells), *table.shape), flat[cells]


def table_bootstrap(table: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(R, V, V) tables of ``resamples`` item bootstraps of an unweighted (V, V) count table.

    Items in the same cell are exchangeable for every coefficient computed from the table, so
    drawing the cell counts from a multinomial is exactly resampling the items, at a cost
    that does not grow with their number.
    """
    table = np.asarray(table, dtype=np.float64)
    n = int(np.rint(table.sum()))
    rng = np.random.default_rng(seed)
    flat = rng.multinomial(n, table.ravel() / n, size=resamples).astype(np.float64)
    return flat.reshape(resamples, *table.shape)


def cohen(
    a: np.ndarray,
    b: np.ndarray,
    n_labels: int,
    *,
    ordered: bool,
    sample_weights: np.ndarray | None = None,
    resamples: int = 0,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Agreement of two aligned code arrays: n, raw agreement, kappa (+ weighted if ordered).

    With ``resamples`` (unweighted only) the kappas get BCa bootstrap intervals over the items
    and raw agreement Wilson's score interval (``<figure>_ci_low`` / ``_ci_high``);
    ``kappa_resamples_undefined`` counts the resamples with no variation, left out of kappa's
    interval; ``no_interval`` names the kappas whose resamples all gave one value.
    """
    n = len(a)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        out.update({"agreement": None, "kappa": None, "undefined_reason": "no items rated by both"})
        return out
    table = confusion(a, b, n_labels, sample_weights)
    out["agreement"] = float(np.trace(table) / table.sum())
    # how often the rarest label the two gave was given (both people's uses): kappa's interval,
    # like alpha's, hinges on those few items (agreement.report turns this into a warning)
    given = table.sum(axis=0) + table.sum(axis=1)
    given = given[given > 0]
    out["rarest_label_values"] = int(np.rint(given.min())) if given.size >= 2 else None
    kinds = ("unweighted", "linear", "quadratic") if ordered else ("unweighted",)
    for kind in kinds:
        value, reason = kappa_from_table(table, kind)
        key = "kappa" if kind == "unweighted" else f"kappa_{kind}"
        out[key] = value
        if reason and "undefined_reason" not in out:
            out["undefined_reason"] = reason
    if resamples > 0 and sample_weights is None:
        boot = table_bootstrap(table, resamples, seed)
        jack, jack_w = table_jackknife(table)
        # raw agreement is a share of items: Wilson's score interval, which keeps its coverage
        # where a bootstrap collapses (every compared item agreeing gives [1, 1] resamples)
        out["agreement_ci_low"], out["agreement_ci_high"] = wilson_interval(out["agreement"], n, confidence)
        for kind in kinds:
            key = "kappa" if kind == "unweighted" else f"kappa_{kind}"
            ks = _batch_kappa(boot, kind)
            if out[key] is None:
                lo = hi = None
                defined = int(np.count_nonzero(~np.isnan(ks)))
            else:
                lo, hi, defined = bca_interval(out[key], ks, _batch_kappa(jack, kind), jack_w, confidence)
                if lo is not None and lo == hi:
                    # every resample gave the same kappa (e.g. all items agree): a zero-width
                    # interval would claim certainty that a few items cannot give
                    lo = hi = None
                    out.setdefault("no_interval", []).append(key)
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = lo, hi
            if kind == "unweighted":
                out["kappa_resamples_undefined"] = resamples - defined
    return out


def rater_index(
    unit: np.ndarray, rater: np.ndarray, code: np.ndarray, n_raters: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per rater: (sorted unit indices, codes). A rater's repeated ratings of a unit keep the last."""
    order = np.lexsort((unit, rater))
    r_sorted, u_sorted, c_sorted = rater[order], unit[order], code[order]
    bounds = np.searchsorted(r_sorted, np.arange(n_raters + 1))
    out = []
    for r in range(n_raters):
        u = u_sorted[bounds[r] : bounds[r + 1]]
        c = c_sorted[bounds[r] : bounds[r + 1]]
        if len(u) > 1:
            keep = np.append(u[1:] != u[:-1], True)
            u, c = u[keep], c[keep]
        out.append((u, c))
    return out


def pairwise(
    unit: np.ndarray,
    rater: np.ndarray,
    code: np.ndarray,
    rater_names: list[str],
    n_labels: int,
    *,
    ordered: bool,
    min_overlap: int = 1,
    resamples: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Cohen's kappa (and weighted kappas for ordered labels) for every pair of raters who share
    items, with bootstrap intervals over the pair's shared items when ``resamples`` > 0."""
    idx = rater_index(unit, rater, code, len(rater_names))
    rows = []
    for a, b in combinations(range(len(rater_names)), 2):
        ua, ca = idx[a]
        ub, cb = idx[b]
        _, ia, ib = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
        if len(ia) < min_overlap:
            continue
        rows.append(
            {
                "rater_a": rater_names[a],
                "rater_b": rater_names[b],
                **cohen(ca[ia], cb[ib], n_labels, ordered=ordered, resamples=resamples, seed=seed),
            }
        )
    return rows


def leave_one_out(
    unit: np.ndarray,
    rater: np.ndarray,
    code: np.ndarray,
    rater_names: list[str],
    n_units: int,
    n_labels: int,
    *,
    ordered: bool,
    resamples: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each rater against the majority of the *other* raters on the items they share.

    Items where the others tie are left out (counted in ``ties``): there is no consensus
    to agree with. With ``resamples`` the figures get bootstrap intervals over the compared
    items (each item's consensus is fixed by the others' labels, so resampling items
    resamples (own label, consensus) pairs).
    """
    from safereview.agreement.alpha import value_counts

    counts = value_counts(unit, code, n_units, n_labels)
    idx = rater_index(unit, rater, code, len(rater_names))
    rows = []
    for r, name in enumerate(rater_names):
        u, c = idx[r]
        others = counts[u].copy()
        # remove every rating of this rater on the unit (repeated ratings count once above)
        own = value_counts(unit[rater == r], code[rater == r], n_units, n_labels)[u]
        others -= own
        has = others.sum(axis=1) > 0
        top = others.max(axis=1)
        tie = (others == top[:, None]).sum(axis=1) > 1
        ok = has & ~tie
        cons = others.argmax(axis=1)
        res = cohen(c[ok], cons[ok], n_labels, ordered=ordered, resamples=resamples, seed=seed)
        if not ok.any():
            res["undefined_reason"] = "no item with another annotator's label to compare (or only tied ones)"
        rows.append(
            {
                "rater": name,
                "n_items": len(u),
                "n_compared": int(ok.sum()),
                "ties": int((has & tie).sum()),
                **{k: v for k, v in res.items() if k != "n"},
            }
        )
    return rows
