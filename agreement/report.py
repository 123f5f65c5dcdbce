"""Agreement report: every coefficient for a dimension, overall and per slice, JSON-ready.

One call gives what the CLI prints and the app shows: Krippendorff's alpha (ordinal for
ordered label sets, and always nominal too) with bootstrap intervals, percent agreement,
Gwet's AC1, Fleiss' kappa, specific agreement per label, unit and pairable-value counts,
pairwise Cohen's kappa and each annotator against the others (with bootstrap intervals over
their shared items), and alpha with and without the judge as one more rater (with a paired
bootstrap interval of the difference). Small samples are flagged twice: few pairable units,
and few pairable values of the rarest label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from safereview.agreement import data
from safereview.agreement import items as item_reads
from safereview.agreement import verdicts as verdict_reads
from safereview.agreement.alpha import (
    DEFAULT_RESAMPLES,
    krippendorff_alpha,
    paired_alpha_difference,
    patterns,
    resample_weights,
)
from safereview.agreement.kappa import leave_one_out, multirater, pairwise, specific_agreement
from safereview.db.taxonomy import unsafe_labels as unsafe_labels_of

SLICES: tuple[str, ...] = ("collection", "task_type", "category", "subcategory", "model", "modality")
# Below this many pairable units a coefficient swings with a single item and its bootstrap
# interval mostly reflects the handful of units there are: the app and the CLI say so. (A
# rule of thumb, not a power calculation: rare labels need far more units than this.)
FEW_PAIRABLE_UNITS = 30
# Below this many pairable values of the rarest label given, alpha's bootstrap interval covers
# far less than its nominal 95%: alpha then hinges on the few units carrying that label, and
# many resamples hold none of them. (Two raters, 10% "unsafe", BCa: the interval covered 41% of
# the time at 10 units, 74% at 20 and 90% at 30, i.e. at about 2, 4 and 6 such values;
# bench/bench_rater_intervals.py --small-samples.)
MIN_RARE_PAIRABLE_VALUES = 10


# What every coefficient here is about. Unlike the audit's rates these are not design-weighted:
# they describe the people's agreement on the items they labelled, which the queue chose
# borderline-first, so they are not collection-wide figures.
DESCRIBES = (
    "agreement among the people on the items they labelled, every labelled item counted once (not weighted "
    "by the review sample's design: the queue serves borderline items first, so these items may be harder than "
    "the collection's average and agreement over the whole collection may differ); the intervals resample "
    "these items"
)


def small_sample_check(counts: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Whether the sample is too small for alpha's interval: few pairable units or a rare label.

    The rarest label is the one with the fewest *pairable values* (ratings on units with two
    or more ratings) among the labels given at least once on such units; labels never given do
    not enter alpha. With a single label given alpha is undefined anyway (no variation) and
    there is no rarest label. Returns the flags, the counts and one plain-words warning each.
    """
    counts = np.asarray(counts)
    m = counts.sum(axis=1)
    pairable = m >= 2
    n_pairable = int(pairable.sum())
    per_label = counts[pairable].sum(axis=0)
    present = np.flatnonzero(per_label > 0)
    rarest: str | None = None
    n_rare: int | None = None
    if present.size >= 2:
        k = int(present[np.argmin(per_label[present])])
        rarest, n_rare = labels[k], int(per_label[k])
    few_units = n_pairable < FEW_PAIRABLE_UNITS
    few_rare = n_rare is not None and n_rare < MIN_RARE_PAIRABLE_VALUES
    warnings = []
    if few_units:
        warnings.append(
            f"only {n_pairable} pairable unit{'s' if n_pairable != 1 else ''} (fewer than {FEW_PAIRABLE_UNITS}): "
            "one item can swing these figures"
        )
    if few_rare:
        warnings.append(
            f"the interval is unreliable: only {n_rare} pairable value{'s' if n_rare != 1 else ''} of the rarest "
            f"label '{rarest}' (fewer than {MIN_RARE_PAIRABLE_VALUES}); alpha hinges on those few ratings and its "
            "bootstrap interval covers the true value far less often than 95%"
        )
    return {
        "few_units": bool(few_units),
        "few_rare_values": bool(few_rare),
        "rarest_label": rarest,
        "rarest_label_pairable_values": n_rare,
        "pairable_values_per_label": {lab: int(c) for lab, c in zip(labels, per_label, strict=True)},
        "warnings": warnings,
    }


def two_rater_warnings(row: dict[str, Any]) -> list[str]:
    """The small-sample warnings of one two-rater row (pairwise or an annotator against the others).

    The same rules as alpha's: fewer than ``FEW_PAIRABLE_UNITS`` items compared, or fewer than
    ``MIN_RARE_PAIRABLE_VALUES`` uses of the rarest label given. (30 items, 10% of one label:
    pairwise kappa's interval covered 0.86 on rows with a note and 0.99 on the others; one
    annotator against the two others' majority, 0.71 with a note; docs/agreement.md.)
    """
    n = row.get("n", row.get("n_compared", 0)) or 0
    out = []
    if 0 < n < FEW_PAIRABLE_UNITS:
        out.append(f"only {n} item{'s' if n != 1 else ''} compared: one item can swing these figures")
    rare = row.get("rarest_label_values")
    if rare is not None and rare < MIN_RARE_PAIRABLE_VALUES:
        out.append(f"interval unreliable: the rarest label was given only {rare} time{'s' if rare != 1 else ''}")
    if row.get("no_interval"):
        names = ", ".join(k.replace("_", " ") for k in row["no_interval"])
        out.append(f"no interval for {names}: every resample of these items gave the same value")
    return out


def with_warnings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their ``warnings`` (see :func:`two_rater_warnings`)."""
    return [{**row, "warnings": two_rater_warnings(row)} for row in rows]


def per_person(
    r: data.Ratings, *, resamples: int, seed: int, max_pairwise_raters: int = 200
) -> dict[str, list[dict[str, Any]]]:
    """``pairwise`` Cohen's kappa (skipped above ``max_pairwise_raters`` people: the pairs grow
    as their square) and ``raters``, each annotator against the others' majority; both with
    intervals and each row's small-sample ``warnings``."""
    who = (r.unit, r.rater, r.code, r.rater_names)
    out: dict[str, list[dict[str, Any]]] = {}
    if len(r.rater_names) <= max_pairwise_raters:
        out["pairwise"] = with_warnings(pairwise(*who, r.n_labels, ordered=r.ordered, resamples=resamples, seed=seed))
    out["raters"] = with_warnings(
        leave_one_out(*who, r.n_units, r.n_labels, ordered=r.ordered, resamples=resamples, seed=seed)
    )
    return out


def summarize(r: data.Ratings, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """All multi-rater coefficients of one set of ratings (one resample set shared by all)."""
    counts = r.counts()
    m = counts.sum(axis=1)
    pats = patterns(counts)
    weights = resample_weights(pats[1], resamples, seed) if resamples > 0 else None
    check = small_sample_check(counts, r.labels)
    out: dict[str, Any] = {
        "n_units": int((m >= 1).sum()),
        "n_units_pairable": int((m >= 2).sum()),
        "few_units": check["few_units"],
        "few_rare_values": check["few_rare_values"],
        "rarest_label": check["rarest_label"],
        "rarest_label_pairable_values": check["rarest_label_pairable_values"],
        "n_ratings": int(m.sum()),
        "n_pairable_values": int(m[m >= 2].sum()),
        "n_raters": len(np.unique(r.rater)) if len(r.rater) else 0,
        "label_counts": {lab: int(c) for lab, c in zip(r.labels, counts.sum(axis=0), strict=True)},
        "pairable_values_per_label": check["pairable_values_per_label"],
        "warnings": check["warnings"],
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
        "describes": DESCRIBES,
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
        entry.update(per_person(r, resamples=resamples, seed=seed, max_pairwise_raters=max_pairwise_raters))
        jid = judge_id or verdict_reads.default_judge(bind, sc.collection_ids, dim)
        if jid:
            v = verdict_reads.load_verdicts(bind, sc.collection_ids, dim, spec["labels"], jid)
            with_judge = r.add_rater(f"judge:{jid}", v.item_ids, v.code)
            counts_with = with_judge.counts()
            entry["judge"] = {
                "judge_id": jid,
                "n_items_with_verdict": int((v.codes_for(r.item_ids) >= 0).sum()),
                "alpha_without_judge": entry["overall"]["alpha"],
                "alpha_with_judge": krippendorff_alpha(counts_with, r.level, resamples=resamples, seed=seed).as_dict(),
                # with minus without, its interval from the same resampled items for both
                "alpha_difference": paired_alpha_difference(
                    r.counts(), counts_with, r.level, resamples=resamples, seed=seed
                ).as_dict(),
            }
        report["dimensions"].append(entry)
    return report
