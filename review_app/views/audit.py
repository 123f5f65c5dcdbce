"""Judge audit (leads): judge vs human consensus on the random audit stratum, and error tags.

Rates are inverse-probability (Hájek) estimates over the audit stratum, so they stay
unbiased although review favours borderline items (see docs/agreement.md). Everything
untrusted (labels, judge ids, names, notes) is shown in ``st.dataframe`` cells or
escaped with ``ui.md_literal``/``ui.plain``.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from safereview.review_app import ui

SLICE_NAMES = {
    "task_type": "task type",
    "category": "category",
    "subcategory": "subcategory",
    "model": "model",
    "modality": "modality",
    "collection": "collection",
}


@st.cache_data(ttl=60, show_spinner=False, max_entries=16)
def _audit(
    db_url: str,
    collections: tuple[str, ...],
    dimension: str,
    judge: str | None,
    by: tuple[str, ...],
    min_n: int,
    method: str,
    seed: int,
) -> dict[str, Any]:
    from safereview.agreement.audit import audit

    return audit(
        ui.get_engine(),
        dimension,
        list(collections),
        judge_id=judge,
        by=by,
        min_n=min_n,
        resamples=500,
        seed=seed,
        method=method,
    )


@st.cache_data(ttl=60, show_spinner=False, max_entries=8)
def _compositional(db_url: str, collections: tuple[str, ...], judge: str | None, min_n: int) -> dict[str, Any]:
    from safereview.agreement.audit import compositional_error

    return compositional_error(ui.get_engine(), list(collections), judge_id=judge, min_n=min_n)


def _tags(user: Any, names: tuple[str, ...], dimension: str, judge: str | None, items: list[dict[str, Any]]) -> None:
    from safereview.agreement.audit import error_tags, tag_error

    st.markdown("**Tag judge errors**")
    if items:
        ids = [d["item_id"] for d in items]
        with st.form("audit_tag_form", border=True, clear_on_submit=True):
            item_id = st.selectbox("Item", ids, key="audit_tag_item")
            tag = st.text_input(
                "Error type", max_chars=80, placeholder="e.g. missed compositional harm", key="audit_tag_text"
            )
            note = st.text_area("Note (optional)", max_chars=2000, key="audit_tag_note")
            if st.form_submit_button("Add tag", icon=":material/sell:"):

                def save() -> bool:
                    with ui.session() as s:
                        tag_error(s, user, int(item_id), dimension, judge or "", tag, note)
                    return True

                if ui.run(save):
                    st.toast("Tagged.", icon=":material/check:")
                    _audit.clear()
    else:
        st.caption("No disagreements to tag.")
    with ui.session() as s:
        tags = ui.run(lambda: error_tags(s, user, list(names), dimension))
    if tags and tags["tags"]:
        st.dataframe([{"tag": k, "items": v} for k, v in tags["counts"].items()], hide_index=True, width="stretch")
        st.dataframe(tags["tags"], hide_index=True, width="stretch")


def page() -> None:
    from safereview.agreement import verdicts as verdict_reads
    from safereview.agreement.data import AgreementError
    from safereview.agreement.tables import confusion_rows, rate_rows

    user = ui.require("audit")
    st.subheader("Judge audit")
    picked = ui.pick_collections("aud_collections")
    if picked is None:
        return
    chosen_infos, dims = picked
    chosen = [c.id for c in chosen_infos]
    names = tuple(c.name for c in chosen_infos)
    c1, c2, c3 = st.columns([2, 3, 2])
    dimension = c1.selectbox("Dimension", dims, format_func=ui.plain, key="aud_dimension")
    judges = [j for j, _ in verdict_reads.judges(ui.get_engine(), chosen, dimension)]
    if not judges:
        st.info("No judge verdicts on this dimension yet.")
        return
    judge = c3.selectbox("Judge", judges, format_func=lambda j: ui.plain(j, max_chars=80), key="aud_judge")
    by = c2.multiselect(
        "Break down by", list(SLICE_NAMES), default=["task_type"], format_func=lambda k: SLICE_NAMES[k], key="aud_by"
    )
    c4, c5, c6 = st.columns(3)
    min_n = int(c4.number_input("Fewest audit items for an estimate", 2, 10000, 20, key="aud_min_n"))
    method = c5.selectbox("Human consensus", ["majority", "dawid-skene"], key="aud_method")
    seed = int(c6.number_input("Seed", 0, 2**31 - 1, 0, key="aud_seed"))
    try:
        with st.spinner("Computing…"):
            res = _audit(ui.config().db_url, names, dimension, judge, tuple(by), min_n, method, seed)
    except AgreementError as exc:
        st.error(ui.md_literal(str(exc)))
        return
    st.caption(
        f"{res['n']} audit items compared ({res['n_audit_items']} drawn into the random audit stratum; "
        f"{res['n_audit_without_consensus']} without a human consensus, {res['n_audit_without_verdict']} "
        "without a verdict). Hájek inverse-probability estimates, 95% Wilson intervals."
    )
    if res["n"] < min_n:
        shares = ", ".join(f"{ui.md_literal(c.name)} {c.audit_share:.0%}" for c in chosen_infos)
        st.info(
            f"Too few audit items for unbiased estimates yet: {res['n']} of the {min_n} needed. The audit "
            "stratum fills as annotators take items from the queue: each collection sends its audit share of "
            f"picks to items drawn uniformly at random ({shares}; set on the Collections page). Until then the "
            "disagreement list below shows where the judge and the people differ, without weights.",
            icon=":material/hourglass_top:",
        )
    st.dataframe(rate_rows(res), hide_index=True, width="stretch")
    k = res["kappa"]
    st.dataframe(
        [
            {
                "kappa": k.get("value"),
                "weights": k.get("weights"),
                "95% low": k.get("ci_low"),
                "95% high": k.get("ci_high"),
                "audit items": k.get("n"),
                "undefined": k.get("undefined_reason", ""),
                "alpha, people only": res["judge_as_rater"]["alpha_without_judge"].get("value"),
                "alpha with the judge": res["judge_as_rater"]["alpha_with_judge"].get("value"),
                "accuracy over all reviewed items (unweighted, biased)": res["all_reviewed"]["accuracy_unweighted"],
            }
        ],
        hide_index=True,
        width="stretch",
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Confusion (audit items; rows: people, columns: judge)**")
        st.dataframe(confusion_rows(res), hide_index=True, width="stretch")
    with right:
        st.markdown("**Weighted by 1 / sampling probability**")
        st.dataframe(confusion_rows(res, weighted=True), hide_index=True, width="stretch")
    if {"image", "text", "joint"} <= set(dims):
        ce = _compositional(ui.config().db_url, names, judge, min_n)
        st.markdown("**Compositional errors** (joint grade wrong although image and text grades are right)")
        st.dataframe(
            [
                {
                    "rate": ce.get("value"),
                    "95% low": ce.get("ci_low"),
                    "95% high": ce.get("ci_high"),
                    "audit items with both unimodal grades right": ce.get("n"),
                    "undefined": ce.get("undefined_reason", ""),
                }
            ],
            hide_index=True,
            width="stretch",
        )
    st.markdown(f"**Disagreements** ({res['disagreements']['n']} reviewed items where the judge and the people differ)")
    st.dataframe(res["disagreements"]["items"], hide_index=True, width="stretch")
    _tags(user, names, dimension, judge, res["disagreements"]["items"])


page()
