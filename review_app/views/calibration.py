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
    st.dataframe(
        [
            {
                "metric": "ECE",
                "raw": metrics.get("ece_raw"),
                "calibrated (in sample)": metrics.get("ece_calibrated_in_sample"),
                "calibrated (cross-validated)": cv.get("ece_calibrated"),
            },
            {
                "metric": "Brier",
                "raw": metrics.get("brier_raw"),
                "calibrated (in sample)": metrics.get("brier_calibrated_in_sample"),
                "calibrated (cross-validated)": cv.get("brier_calibrated"),
            },
        ],
        hide_index=True,
        width="stretch",
    )
    st.dataframe(
        [
            {
                "threshold on calibrated P(unsafe)": thr.get("threshold"),
                "under-blocking at threshold": thr.get("under_blocking"),
                "over-blocking at threshold": thr.get("over_blocking"),
                "items people call unsafe": thr.get("n_unsafe"),
                "items people call safe": thr.get("n_safe"),
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
    c3, c4, c5 = st.columns(3)
    method = c3.selectbox("Map", ["isotonic", "platt"], key="cal_method")
    target = c4.slider(
        "Target under-blocking (share of people-unsafe items let through)", 0.0, 0.5, 0.05, step=0.01, key="cal_target"
    )
    bins = int(c5.number_input("Reliability bins", 2, 50, 10, key="cal_bins"))
    st.caption(
        "P(unsafe) comes from the judge's label probabilities; the target is the share of each item's "
        "annotators who chose an unsafe label. Verdicts without probabilities are left out."
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
                    bins=bins,
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
