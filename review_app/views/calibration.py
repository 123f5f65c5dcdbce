"""Calibration (leads): the judge's P(unsafe) against what people say; fit, store, apply.

Fitting and applying go through :mod:`agreement.calibration`, which checks the "calibrate"
permission itself. Calibrated verdicts are new rows (judge id ``<judge>+cal<id>``) beside
the raw ones.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from safereview.review_app import ui


def _reliability_chart(metrics: dict[str, Any]) -> None:
    import pandas as pd

    raw = pd.DataFrame(metrics["reliability_raw"])
    cal = pd.DataFrame(metrics["reliability_calibrated"])
    rows = []
    for name, df in (("raw", raw), ("calibrated", cal)):
        for r in df.to_dict("records"):
            if r["n"]:
                rows.append(
                    {
                        "mean predicted P(unsafe)": r["mean_predicted"],
                        "share of people saying unsafe": r["observed"],
                        "judge": name,
                        "items": r["n"],
                    }
                )
    if not rows:
        return
    import altair as alt

    chart = (
        alt.Chart(pd.DataFrame(rows))
        .mark_line(point=True)
        .encode(
            x=alt.X("mean predicted P(unsafe):Q", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("share of people saying unsafe:Q", scale=alt.Scale(domain=[0, 1])),
            color="judge:N",
            tooltip=["judge", "items", "mean predicted P(unsafe)", "share of people saying unsafe"],
        )
    )
    diagonal = (
        alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]}))
        .mark_line(strokeDash=[4, 4], color="gray")
        .encode(x="x:Q", y="y:Q")
    )
    st.altair_chart(diagonal + chart, width="stretch")


def _show_metrics(metrics: dict[str, Any]) -> None:
    cv = metrics.get("cross_validated", {})
    thr = metrics.get("threshold", {})
    for warning in metrics.get("warnings", []):
        st.warning(ui.md_literal(ui.sentence(warning), max_chars=2000), icon=":material/warning:")

    def est(e: Any) -> dict[str, Any]:
        e = e or {}
        return {"value": e.get("value"), "95% low": e.get("low"), "95% high": e.get("high")}

    def span(e: Any) -> str:
        e = e or {}
        lo, hi = e.get("low"), e.get("high")
        return "" if lo is None or hi is None else f"[{lo:.4f}, {hi:.4f}]"

    st.caption(
        f"{metrics.get('n')} sample items, weighted by the sampling design so that every figure describes the "
        "collection. Cross-fitted = each item scored by a map fitted without it (honest); in sample = "
        "optimistic (isotonic's in-sample error is small by construction)."
    )
    st.dataframe(
        [
            {
                "metric": "ECE (descriptive)",
                "raw": metrics.get("ece_raw"),
                "calibrated (cross-fitted)": cv.get("ece_calibrated"),
                "calibrated (in sample)": metrics.get("ece_calibrated_in_sample"),
                "raw 95%": "none: descriptive",
                "cross-fitted 95%": "none: descriptive",
            },
            {
                "metric": "Brier",
                "raw": (cv.get("brier_raw") or {}).get("value"),
                "calibrated (cross-fitted)": (cv.get("brier_calibrated") or {}).get("value"),
                "calibrated (in sample)": metrics.get("brier_calibrated_in_sample"),
                "raw 95%": span(cv.get("brier_raw")),
                "cross-fitted 95%": span(cv.get("brier_calibrated")),
            },
        ],
        hide_index=True,
        width="stretch",
    )
    change = est(cv.get("brier_change"))
    st.dataframe(
        [
            {
                "Brier change, calibrated minus raw (below 0 = better)": change["value"],
                **{k: change[k] for k in change if k != "value"},
            }
        ],
        hide_index=True,
        width="stretch",
    )
    ub, ob = est(thr.get("under_blocking")), est(thr.get("over_blocking"))
    st.caption(
        "The upper bound certifies the cut. The rates *in sample* are measured on the same reviews that chose "
        "it, so under-blocking there leans low: report the guarantee, not them."
    )
    st.dataframe(
        [
            {
                "block when raw P(unsafe) ≥": thr.get("raw_threshold"),
                "same cut on calibrated P(unsafe)": thr.get("calibrated_threshold"),
                "target under-blocking": thr.get("target"),
                "confidence": None if thr.get("delta") is None else 1 - thr["delta"],
                "under-blocking upper bound": thr.get("under_blocking_upper_bound"),
                "under-blocking, in sample": ub["value"],
                "under-blocking 95% low, in sample": ub["95% low"],
                "under-blocking 95% high, in sample": ub["95% high"],
                "over-blocking, in sample": ob["value"],
                "over-blocking 95% low, in sample": ob["95% low"],
                "over-blocking 95% high, in sample": ob["95% high"],
                "undefined": thr.get("undefined_reason", ""),
            }
        ],
        hide_index=True,
        width="stretch",
    )
    _reliability_chart(metrics)


def page() -> None:
    from safereview.agreement import data
    from safereview.agreement import verdicts as verdict_reads
    from safereview.agreement.calibration import apply_calibration, fit_calibration, list_calibrations

    user = ui.require("calibrate")
    st.subheader("Calibration")
    picked = ui.pick_collections("cal_collections")
    if picked is None:
        return
    chosen_infos, dims = picked
    chosen = [c.id for c in chosen_infos]
    names = [c.name for c in chosen_infos]
    c1, c2 = st.columns(2)
    dimension = c1.selectbox("Dimension", dims, format_func=ui.plain, key="cal_dimension")
    judges = [j for j, _ in verdict_reads.judges(ui.get_engine(), chosen, dimension) if "+cal" not in j]
    if not judges:
        st.info("No judge verdicts on this dimension yet.")
        return
    judge = c2.selectbox("Judge", judges, format_func=lambda j: ui.plain(j, max_chars=80), key="cal_judge")
    c3, c4, c5, c6 = st.columns(4)
    method = c3.selectbox("Map", ["isotonic", "platt"], key="cal_method")
    target = c4.slider(
        "Target under-blocking (share of people-unsafe items let through)", 0.0, 0.5, 0.05, step=0.01, key="cal_target"
    )
    confidence = c5.selectbox(
        "Confidence that the target holds", [0.9, 0.95, 0.99], format_func=lambda x: f"{x:.0%}", key="cal_conf"
    )
    bins = int(c6.number_input("Reliability bins", 2, 50, 10, key="cal_bins"))
    labels = st.selectbox(
        "People's labels",
        ["final", "blind"],
        format_func=lambda k: {"final": "final (after the reveal)", "blind": "blind (before the reveal)"}[k],
        key="cal_labels",
        help="Blind labels were committed before the judge's verdict was shown, so the judge could not shape them.",
    )
    st.caption(
        "P(unsafe) comes from the judge's label probabilities; the target is the share of each item's "
        "annotators who chose an unsafe label. Only the review sample enters, weighted by the sampling "
        "design; verdicts without probabilities are left out. The threshold keeps the collection's "
        "under-blocking at or below the target with the chosen confidence."
    )
    if st.button("Fit and store a calibration", type="primary", icon=":material/tune:", key="cal_fit"):

        def fit() -> dict[str, Any]:
            with ui.session() as s:
                row, metrics = fit_calibration(
                    s,
                    user,
                    dimension,
                    names,
                    judge_id=judge,
                    method=method,
                    target_under_blocking=float(target),
                    delta=round(1 - float(confidence), 6),
                    bins=bins,
                    labels=labels,
                )
                return {"id": row.id, "metrics": metrics}

        try:
            out = ui.run(fit)
        except data.AgreementError as exc:
            st.error(ui.md_literal(str(exc)))
            out = None
        if out:
            st.session_state["cal_last"] = out
            st.toast(f"Stored calibration {out['id']}.", icon=":material/check:")
    last = st.session_state.get("cal_last")
    if last:
        st.markdown(f"**Calibration {int(last['id'])}** ({last['metrics']['n']} items)")
        _show_metrics(last["metrics"])

    st.markdown("**Stored calibrations of this judge**")
    with ui.session() as s:
        stored = list_calibrations(s, user, judge, dimension)
    if not stored:
        st.caption("None yet.")
        return
    st.dataframe(stored, hide_index=True, width="stretch")
    cal_id = st.selectbox("Apply calibration", [r["id"] for r in stored], key="cal_apply_id")
    if st.button("Write calibrated verdicts beside the raw ones", icon=":material/playlist_add:", key="cal_apply"):

        def apply() -> dict[str, Any]:
            with ui.session() as s:
                return apply_calibration(s, user, int(cal_id), names)

        try:
            res = ui.run(apply)
        except data.AgreementError as exc:
            st.error(ui.md_literal(str(exc)))
            res = None
        if res:
            st.success(
                f"Wrote {res['written']} calibrated verdicts as judge {ui.md_literal(res['judge_id'])}; "
                f"{res['skipped_without_probability']} raw verdicts had no probability."
            )


page()
