"""Flatten agreement/audit results into rows of plain values (for tables in the app and CSVs).

Pure functions, no Streamlit: the app's pages show these rows with ``st.dataframe`` (whose
cell values are inert), so annotator names, labels and collection names never pass through
markdown.
"""

from __future__ import annotations

from typing import Any

from safereview.agreement.population import interval_text
from safereview.agreement.report import FEW_PAIRABLE_UNITS, MIN_RARE_PAIRABLE_VALUES

STAT_KEYS = (
    ("alpha", "alpha"),
    ("alpha_nominal", "alpha (nominal)"),
    ("percent_agreement", "percent agreement"),
    ("gwet_ac1", "Gwet AC1"),
    ("fleiss_kappa", "Fleiss kappa"),
)


def _est_cells(prefix: str, e: dict[str, Any] | None) -> dict[str, Any]:
    e = e or {}
    return {prefix: e.get("value"), f"{prefix} 95% low": e.get("ci_low"), f"{prefix} 95% high": e.get("ci_high")}


def ci_text(e: dict[str, Any] | None, value_key: str = "value") -> str:
    """``0.447 [-0.069, 0.746]`` for a coefficient with a bootstrap interval; the value alone
    when no interval was computed; ``undefined: <reason>`` when there is no value."""
    e = e or {}
    v = e.get(value_key)
    if v is None or v != v:
        return f"undefined: {e.get('undefined_reason') or e.get('reason') or 'no value'}"
    lo, hi = e.get("ci_low"), e.get("ci_high")
    if lo is None or hi is None:
        return f"{v:.3f} (no interval: {e['no_interval']})" if e.get("no_interval") else f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def judge_as_rater_row(res: dict[str, Any]) -> dict[str, Any]:
    """Alpha among the people, with the judge as one more rater, and the paired difference,
    each with its 95% interval, as text."""
    jr = res.get("judge_as_rater") or {}
    return {
        "alpha, people only [95%]": ci_text(jr.get("alpha_without_judge")),
        "alpha with the judge [95%]": ci_text(jr.get("alpha_with_judge")),
        "with minus without [95%, paired]": ci_text(jr.get("alpha_difference"), "difference"),
    }


def small_sample_notes(s: dict[str, Any]) -> list[str]:
    """Short notes on one summary: few pairable units, a rare label, undefined bootstrap resamples."""
    notes = []
    if s.get("few_units"):
        notes.append(f"few units (< {FEW_PAIRABLE_UNITS} pairable)")
    if s.get("few_rare_values"):
        notes.append(
            f"unreliable interval: only {s['rarest_label_pairable_values']} pairable values of the rarest "
            f"label '{s['rarest_label']}' (< {MIN_RARE_PAIRABLE_VALUES})"
        )
    for key, name in STAT_KEYS:
        e = s.get(key) or {}
        if e.get("no_interval"):
            notes.append(f"{name}: no interval ({e['no_interval']})")
        undefined = e.get("n_resamples_undefined")
        if undefined:
            total = undefined + e.get("resamples", 0)
            notes.append(f"{name}: {undefined} of {total} resamples undefined (left out of the interval)")
    return notes


def stats_rows(dim: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per slice (overall first) with counts, coefficients, intervals and undefined reasons.

    ``alpha undefined resamples`` counts the bootstrap resamples in which alpha had no value
    (left out of its interval); ``note`` carries the small-sample warnings.
    """
    rows = []
    entries = [("overall", "", dim["overall"])]
    for by, values in dim.get("slices", {}).items():
        entries += [(by, v["value"], v) for v in values]
    for by, value, s in entries:
        row: dict[str, Any] = {
            "slice": by,
            "value": value,
            "units": s["n_units"],
            "pairable units": s["n_units_pairable"],
            "pairable values": s["n_pairable_values"],
            "raters": s["n_raters"],
        }
        reasons = []
        for key, name in STAT_KEYS:
            if key not in s:
                continue
            row.update(_est_cells(name, s[key]))
            if key == "alpha":
                row["alpha undefined resamples"] = s[key].get("n_resamples_undefined")
            if s[key].get("undefined_reason"):
                reasons.append(f"{name}: {s[key]['undefined_reason']}")
        row["undefined"] = "; ".join(reasons)
        row["note"] = "; ".join(small_sample_notes(s))
        rows.append(row)
    return rows


def specific_rows(dim: dict[str, Any]) -> list[dict[str, Any]]:
    sa = dim["overall"]["specific_agreement"]
    counts = dim["overall"]["label_counts"]
    return [{"label": lab, "ratings": counts.get(lab, 0), "specific agreement": sa.get(lab)} for lab in dim["labels"]]


def rate_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Audit rates (accuracy, over-blocking, under-blocking) overall and per slice."""
    entries = [("overall", "", res)]
    for by, values in res.get("slices", {}).items():
        entries += [(by, v["value"], v) for v in values]
    rows = []
    for by, value, r in entries:
        row: dict[str, Any] = {"slice": by, "value": value, "sample items": r.get("n")}
        reasons = []
        for key, name in (
            ("accuracy", "accuracy"),
            ("over_blocking", "over-blocking"),
            ("under_blocking", "under-blocking"),
        ):
            e = r.get(key) or {}
            row.update(_est_cells(name, e))
            row[f"{name} n"] = e.get("n")
            if e.get("undefined_reason"):
                reasons.append(f"{name}: {e['undefined_reason']}")
        row["undefined"] = "; ".join(reasons)
        rows.append(row)
    return rows


def confusion_rows(res: dict[str, Any], shares: bool = False) -> list[dict[str, Any]]:
    """The confusion matrix by row: sample counts, or (``shares``) the estimated share of the
    collection in each cell with its 95% interval, as text."""
    conf = res["confusion"]
    table = [[_share_text(e) for e in row] for row in conf["shares"]] if shares else conf["counts"]
    return [
        {"people \\ judge": lab, **{f"judge: {c}": v for c, v in zip(res["labels"], row, strict=True)}}
        for lab, row in zip(res["labels"], table, strict=True)
    ]


def _share_text(e: dict[str, Any]) -> str:
    v = e.get("value")
    return "—" if v is None else f"{v:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def confusion_shares_note(res: dict[str, Any]) -> str:
    """Why the shares table has empty cells ("" when every cell has an estimate)."""
    reasons = {e["undefined_reason"] for row in res["confusion"]["shares"] for e in row if e.get("undefined_reason")}
    return "—: " + "; ".join(sorted(reasons)) if reasons else ""


def population_rows(pop: dict[str, Any]) -> list[dict[str, Any]]:
    """The three columns per rate (judge uncorrected, human, corrected; 95% intervals as text)
    and how many more sample items (each reviewed as the overlap asks) the target half-width needs."""
    hw = pop["half_width"]
    rows = []
    for m in pop["metrics"]:
        more = m["more_reviews"]["corrected"]
        judge = m["judge"]["value"]
        rows.append(
            {
                "rate": m["metric"],
                "judge (uncorrected)": None if judge is None or judge != judge else round(judge, 3),
                "human [95%]": interval_text(m["human"]),
                "corrected [95%]": interval_text(m["corrected"]),
                # text, like the interval columns: an empty cell would not say why it is empty
                f"more sample items for ±{hw}": "unknown: no sample items yet" if more < 0 else str(more),
                "sample items": m["corrected"]["n_labelled"],
                "effective human labels": None
                if m["human"]["n_effective"] is None
                else round(float(m["human"]["n_effective"]), 1),
            }
        )
    return rows


def _two_rater_cells(row: dict[str, Any], ordered: bool) -> dict[str, Any]:
    """``agreement`` and the kappas of a two-rater row as ``value [low, high]`` texts."""
    keys = [("agreement", "agreement"), ("kappa", "kappa")]
    if ordered:
        keys += [("kappa_linear", "kappa (linear)"), ("kappa_quadratic", "kappa (quadratic)")]
    cells: dict[str, Any] = {}
    for key, name in keys:
        e = {
            "value": row.get(key),
            "ci_low": row.get(f"{key}_ci_low"),
            "ci_high": row.get(f"{key}_ci_high"),
            "undefined_reason": row.get("undefined_reason"),
        }
        text = ci_text(e)
        if key in row.get("no_interval", ()):
            text += " (no interval: see note)"
        cells[f"{name} [95%]"] = text
    return cells


def pairwise_rows(dim: dict[str, Any]) -> list[dict[str, Any]]:
    """Cohen's kappa per pair of annotators who share items, with intervals and warnings."""
    return [
        {
            "annotator A": r["rater_a"],
            "annotator B": r["rater_b"],
            "items both labelled": r["n"],
            **_two_rater_cells(r, dim["ordered"]),
            "note": "; ".join(r.get("warnings", [])),
        }
        for r in dim.get("pairwise", [])
    ]


def rater_rows(dim: dict[str, Any]) -> list[dict[str, Any]]:
    """Each annotator against the majority of the others, with intervals and warnings."""
    return [
        {
            "annotator": r["rater"],
            "items labelled": r["n_items"],
            "compared": r["n_compared"],
            "others tied": r["ties"],
            **_two_rater_cells(r, dim["ordered"]),
            "note": "; ".join(r.get("warnings", [])),
        }
        for r in dim.get("raters", [])
    ]


def annotator_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "annotator": a["annotator"],
            "items shared with others": a["items_shared"],
            "agreement with the others": a["agreement_with_others"],
            "95% low": a.get("ci_low"),
            "95% high": a.get("ci_high"),
        }
        for a in res.get("annotators", [])
    ]
