"""Agreement report: every coefficient for a dimension, overall and per slice, JSON-ready.

One call gives what the CLI prints and the app shows: Krippendorff's alpha (ordinal for
ordered label sets, and always nominal too) with bootstrap intervals, percent agreement,
Gwet's AC1, Fleiss' kappa, specific agreement per label, unit and pairable-value counts,
pairwise Cohen's kappa, each annotator against the others, and alpha with and without the
judge as one more rater.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from safereview.agreement import data
from safereview.agreement import items as item_reads
from safereview.agreement import verdicts as verdict_reads
from safereview.agreement.alpha import DEFAULT_RESAMPLES, krippendorff_alpha, patterns, resample_weights
from safereview.agreement.kappa import leave_one_out, multirater, pairwise, specific_agreement
from safereview.db.taxonomy import unsafe_labels as unsafe_labels_of

SLICES: tuple[str, ...] = ("collection", "task_type", "category", "subcategory", "model", "modality")
# Below this many pairable units a coefficient swings with a single item and its bootstrap
# interval mostly reflects the handful of units there are: the app and the CLI say so. (A
# rule of thumb, not a power calculation: rare labels need far more units than this.)
FEW_PAIRABLE_UNITS = 30


def summarize(r: data.Ratings, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """All multi-rater coefficients of one set of ratings (one resample set shared by all)."""
    counts = r.counts()
    m = counts.sum(axis=1)
    pats = patterns(counts)
    weights = resample_weights(pats[1], resamples, seed) if resamples > 0 else None
    out: dict[str, Any] = {
        "n_units": int((m >= 1).sum()),
        "n_units_pairable": int((m >= 2).sum()),
        "few_units": bool((m >= 2).sum() < FEW_PAIRABLE_UNITS),
        "n_ratings": int(m.sum()),
        "n_pairable_values": int(m[m >= 2].sum()),
        "n_raters": len(np.unique(r.rater)) if len(r.rater) else 0,
        "label_counts": {lab: int(c) for lab, c in zip(r.labels, counts.sum(axis=0), strict=True)},
    }
    out["alpha"] = krippendorff_alpha(
        counts, r.level, resamples=resamples, seed=seed, pats=pats, weights=weights
    ).as_dict()
    if r.ordered:
        out["alpha_nominal"] = krippendorff_alpha(
            counts, "nominal", resamples=resamples, seed=seed, pats=pats, weights=weights
        ).as_dict()
    for name, est in multirater(counts, r.n_labels, pats=pats, weights=weights).items():
        out[name] = est.as_dict()
    out["specific_agreement"] = specific_agreement(counts, r.labels)
    return out


def slice_values(items: dict[str, np.ndarray], column: str, item_ids: np.ndarray) -> np.ndarray:
    """The slice column's value for each of ``item_ids`` (items loaded by :func:`item_reads.load_items`)."""
    pos = np.searchsorted(items["id"], item_ids)
    return items[column][pos]


def by_slice(r: data.Ratings, values: np.ndarray, *, resamples: int, seed: int) -> list[dict[str, Any]]:
    """:func:`summarize` for each distinct slice value (units resampled within the slice)."""
    rows = []
    uniq, inv = np.unique(np.asarray([str(v) for v in values], dtype=object).astype(str), return_inverse=True)
    for k, value in enumerate(uniq.tolist()):
        rows.append({"value": value, **summarize(r.select_units(inv == k), resamples=resamples, seed=seed)})
    return rows


def agreement_report(
    bind: Any,
    collections: Sequence[str] | None = None,
    dimensions: Sequence[str] | None = None,
    *,
    by: Sequence[str] = (),
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    judge_id: str | None = None,
    field_name: str = "labels",
    max_pairwise_raters: int = 200,
) -> dict[str, Any]:
    """The full agreement report for the collections (default: all active) and dimensions."""
    for b in by:
        if b not in SLICES:
            raise data.AgreementError(f"unknown slice {b!r}; choose from {', '.join(SLICES)}")
    sc = data.scope(bind, collections)
    dims = list(dimensions) if dimensions else sc.dimensions()
    items = item_reads.load_items(bind, sc.collection_ids, list(by)) if by else None
    report: dict[str, Any] = {
        "collections": [sc.collection_names[c] for c in sc.collection_ids],
        "resamples": resamples,
        "seed": seed,
        "confidence": 0.95,
        "field": field_name,
        "dimensions": [],
    }
    for dim in dims:
        spec = sc.dimension(dim)
        r = data.load_ratings(
            bind,
            sc.collection_ids,
            dim,
            spec["labels"],
            ordered=bool(spec.get("ordered")),
            field_name=field_name,
            unsafe_labels=unsafe_labels_of(spec),
        )
        entry: dict[str, Any] = {
            "dimension": dim,
            "labels": list(spec["labels"]),
            "ordered": bool(spec.get("ordered")),
            "level": r.level,
            "n_invalid_labels": r.n_invalid,
            "overall": summarize(r, resamples=resamples, seed=seed),
        }
        if items is not None:
            entry["slices"] = {
                b: by_slice(r, slice_values(items, b, r.item_ids), resamples=resamples, seed=seed) for b in by
            }
        if len(r.rater_names) <= max_pairwise_raters:
            entry["pairwise"] = pairwise(r.unit, r.rater, r.code, r.rater_names, r.n_labels, ordered=r.ordered)
        entry["raters"] = leave_one_out(
            r.unit, r.rater, r.code, r.rater_names, r.n_units, r.n_labels, ordered=r.ordered
        )
        jid = judge_id or verdict_reads.default_judge(bind, sc.collection_ids, dim)
        if jid:
            v = verdict_reads.load_verdicts(bind, sc.collection_ids, dim, spec["labels"], jid)
            with_judge = r.add_rater(f"judge:{jid}", v.item_ids, v.code)
            entry["judge"] = {
                "judge_id": jid,
                "n_items_with_verdict": int((v.codes_for(r.item_ids) >= 0).sum()),
                "alpha_without_judge": entry["overall"]["alpha"],
                "alpha_with_judge": krippendorff_alpha(
                    with_judge.counts(), r.level, resamples=resamples, seed=seed
                ).as_dict(),
            }
        report["dimensions"].append(entry)
    return report
