"""Judge audit (leads): rates over the collection as judge / human / corrected, judge vs people, error tags.

Every figure is design-weighted over the review sample (the queue's order is a
probability sample, so borderline-first review still gives collection-wide estimates; see
docs/agreement.md). Everything
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
    labels: str,
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
        labels=labels,
    )


@st.cache_data(ttl=60, show_spinner=False, max_entries=8)
def _population(db_url: str, collections: tuple[str, ...], judge: str, method: str, labels: str) -> dict[str, Any]:
    from safereview.agreement.population import population_rates

    return population_rates(ui.get_engine(), list(collections), judge_id=judge, method=method, labels=labels)


@st.cache_data(ttl=60, show_spinner=False, max_entries=8)
def _compositional(db_url: str, collections: tuple[str, ...], judge: str | None, min_n: int) -> dict[str, Any]:
    from safereview.agreement.audit import compositional_error

    return compositional_error(ui.get_engine(), list(collections), judge_id=judge, min_n=min_n)


def _tags(user: Any, names: tuple[str, ...], dimension: str, judge: str | None, items: list[dict[str, Any]]) -> None:
    from safereview.agreement.audit import error_tags, tag_error

    st.markdown("**Tag judge errors**")
    if items:
        ids = [d["item_id"] for d in items]
        known_as = {d["item_id"]: str(d.get("external_id") or d["item_id"]) for d in items}
        with st.form("audit_tag_form", border=True, clear_on_submit=True):
            item_id = st.selectbox("Item", ids, key="audit_tag_item", format_func=lambda i: ui.plain(known_as[i]))
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
    from safereview.agreement.tables import (
        annotator_rows,
        confusion_rows,
        confusion_shares_note,
        judge_as_rater_row,
        population_rows,
        rate_rows,
    )

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
    c4, c5, c6, c7 = st.columns(4)
    min_n = int(c4.number_input("Fewest sample items for an estimate", 2, 10000, 20, key="aud_min_n"))
    method = c5.selectbox(
        "People's reference",
        ["majority", "dawid-skene"],
        format_func=lambda m: {"majority": "reviews averaged", "dawid-skene": "Dawid–Skene"}[m],
        key="aud_method",
        help="Dawid–Skene weighs each reviewer by their fitted accuracy. It moves the figures toward the truth "
        "with three or more reviews per item (not with two), and its intervals are wider: they carry the fit's "
        "own uncertainty.",
    )
    labels = c6.selectbox(
        "People's labels",
        ["final", "blind"],
        format_func=lambda k: {"final": "final (after the reveal)", "blind": "blind (before the reveal)"}[k],
        key="aud_labels",
        help="Blind labels were committed before the judge's verdict was shown, so the judge could not shape them.",
    )
    seed = int(c7.number_input("Seed", 0, 2**31 - 1, 0, key="aud_seed"))
    try:
        with st.spinner("Computing…"):
            pop = _population(ui.config().db_url, names, judge, method, labels)  # the judge picked above
            res = _audit(ui.config().db_url, names, dimension, judge, tuple(by), min_n, method, seed, labels)
    except AgreementError as exc:
        st.error(ui.md_literal(str(exc)))
        return
    sample = pop["sample"]
    st.markdown("**Rates over the collection**")
    st.caption(
        f"judge = the share of {ui.md_literal(judge, max_chars=80)}'s labels, uncorrected (no interval: its "
        "error is bias). human = the people's "
        "share over the review sample, weighted by the sampling design. corrected = the judge on every item, "
        "corrected by the people's labels (PPI++): same target as human, narrower when the judge is good. "
        f"95% intervals. The review sample holds {sample['n_in_sample']} of {sample['n_items']} items "
        f"({sample['n_reviewed']} reviewed)."
    )
    for warning in dict.fromkeys([*pop.get("warnings", []), *res.get("warnings", [])]):  # once each
        st.warning(ui.md_literal(ui.sentence(warning), max_chars=2000), icon=":material/warning:")  # whole
    st.dataframe(population_rows(pop), hide_index=True, width="stretch")
    for note in sample["notes"]:
        st.info(ui.md_literal(ui.sentence(note), max_chars=2000), icon=":material/hourglass_top:")
    st.markdown(f"**Judge vs people on {ui.md_literal(dimension)}**")
    st.caption(
        f"{res['n']} sample items compared ({res['n_sample_without_labels']} without labels on this dimension, "
        f"{res['n_sample_without_verdict']} without a verdict). Reference: {ui.md_literal(res['reference'])}. "
        "Design-weighted (Hájek) estimates over the collection, 95% intervals."
    )
    if res["n"] < min_n:
        st.info(
            f"Too few sample items for these estimates yet: {res['n']} of the {min_n} needed. The sample grows "
            "as annotators work through the queue (its order is the sampling design). Until then the "
            "disagreement list below shows where the judge and the people differ, without weights.",
            icon=":material/hourglass_top:",
        )
    st.dataframe(rate_rows(res), hide_index=True, width="stretch", column_config=ui.SLICE_COLUMNS)
    k = res["kappa"]
    st.dataframe(
        [
            {
                "kappa": k.get("value"),
                "weights": k.get("weights"),
                "95% low": k.get("ci_low"),
                "95% high": k.get("ci_high"),
                "sample items": k.get("n"),
                "undefined": k.get("undefined_reason", ""),
                **judge_as_rater_row(res),
                "accuracy over all reviewed items (unweighted; not the collection)": res["all_reviewed"][
                    "accuracy_unweighted"
                ],
            }
        ],
        hide_index=True,
        width="stretch",
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Confusion (sample items; rows: people's consensus, columns: judge)**")
        st.dataframe(confusion_rows(res), hide_index=True, width="stretch")
    with right:
        st.markdown("**Share of the collection, design-weighted, with 95% intervals**")
        st.dataframe(confusion_rows(res, shares=True), hide_index=True, width="stretch")
        if note := confusion_shares_note(res):
            st.caption(ui.md_literal(note))
    if {"image", "text", "joint"} <= set(dims):
        ce = _compositional(ui.config().db_url, names, judge, min_n)
        st.markdown("**Compositional errors** (joint grade wrong although image and text grades are right)")
        st.dataframe(
            [
                {
                    "rate": ce.get("value"),
                    "95% low": ce.get("ci_low"),
                    "95% high": ce.get("ci_high"),
                    "sample items with both unimodal grades right": ce.get("n"),
                    "undefined": ce.get("undefined_reason", ""),
                }
            ],
            hide_index=True,
            width="stretch",
        )
    if res.get("annotators"):
        st.markdown("**Annotators against the others** (descriptive: each person's reviewed items)")
        st.dataframe(annotator_rows(res), hide_index=True, width="stretch")
        st.caption(
            "The share of the others' labels that match the person's, per shared item, averaged over the person's "
            "items; 95% bootstrap intervals (BCa) over those items."
        )
    st.markdown(f"**Disagreements** ({res['disagreements']['n']} reviewed items where the judge and the people differ)")
    st.dataframe(res["disagreements"]["items"], hide_index=True, width="stretch")
    _tags(user, names, dimension, judge, res["disagreements"]["items"])


page()
