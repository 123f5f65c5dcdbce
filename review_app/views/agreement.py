"""Agreement (leads): Krippendorff's alpha, AC1, Fleiss and Cohen's kappa, per slice and rater.

All figures come from :func:`agreement.report.agreement_report`; tables are ``st.dataframe``
(inert cell values), so rater names, labels and collection names never render as markdown.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from safereview.review_app import ui

SLICE_NAMES = {
    "collection": "collection",
    "task_type": "task type",
    "category": "category",
    "subcategory": "subcategory",
    "model": "model",
    "modality": "modality",
}


@st.cache_data(ttl=60, show_spinner=False, max_entries=16)
def _report(
    db_url: str,
    collections: tuple[str, ...],
    dimension: str,
    by: tuple[str, ...],
    resamples: int,
    seed: int,
    blind: bool,
) -> dict[str, Any]:
    from safereview.agreement.report import agreement_report

    return agreement_report(
        ui.get_engine(),
        list(collections),
        [dimension],
        by=by,
        resamples=resamples,
        seed=seed,
        field_name="blind_labels" if blind else "labels",
    )


def page() -> None:
    from safereview.agreement.data import AgreementError
    from safereview.agreement.report import FEW_PAIRABLE_UNITS
    from safereview.agreement.tables import pairwise_rows, rater_rows, specific_rows, stats_rows

    ui.require("view_agreement")
    st.subheader("Agreement")
    picked = ui.pick_collections("agr_collections")
    if picked is None:
        return
    chosen_infos, dims = picked
    c1, c2, c3, c4 = st.columns([2, 3, 1, 1])
    dimension = c1.selectbox("Dimension", dims, format_func=ui.plain, key="agr_dimension")
    by = c2.multiselect("Break down by", list(SLICE_NAMES), format_func=lambda k: SLICE_NAMES[k], key="agr_by")
    resamples = int(c3.number_input("Bootstrap resamples", 0, 10000, 1000, step=100, key="agr_resamples"))
    seed = int(c4.number_input("Seed", 0, 2**31 - 1, 0, key="agr_seed"))
    blind = st.toggle("Use blind labels (committed before the judge's verdict was shown)", key="agr_blind")
    names = tuple(c.name for c in chosen_infos)
    try:
        with st.spinner("Computing…"):
            rep = _report(ui.config().db_url, names, dimension, tuple(by), resamples, seed, blind)
    except AgreementError as exc:
        st.error(ui.md_literal(str(exc)))
        return
    d = rep["dimensions"][0]
    if d["overall"]["n_ratings"] == 0:
        st.info("No ratings on this dimension yet.")
        return
    st.caption(
        f"{'Ordinal' if d['ordered'] else 'Nominal'} alpha; 95% bootstrap intervals (BCa) from {resamples} "
        f"resamples of items (seed {seed}). Undefined values (no variation, too few ratings) are empty "
        f"with the reason in the last column. These figures: {rep['describes']}."
    )
    pairable = d["overall"]["n_units_pairable"]
    if d["overall"].get("few_units"):  # the broadest warning first, in the page's own words
        st.warning(
            f"Only {pairable} item{'s' if pairable != 1 else ''} carr{'y' if pairable != 1 else 'ies'} two "
            f"or more labels here. With fewer than {FEW_PAIRABLE_UNITS} such items a coefficient can swing "
            "with a single item and its interval is not worth much: raise the overlap (k) or label more "
            "before reading these numbers.",
            icon=":material/warning:",
        )
    for w in d["overall"].get("warnings") or []:
        if not w.startswith("only ") or not d["overall"].get("few_units"):  # the few-items case is above
            st.warning(ui.md_literal(ui.sentence(w), max_chars=2000), icon=":material/warning:")
    st.dataframe(stats_rows(d), hide_index=True, width="stretch", column_config=ui.SLICE_COLUMNS)
    if d.get("n_invalid_labels"):
        n = d["n_invalid_labels"]
        st.warning(
            f"{n} rating{'s carry' if n != 1 else ' carries'} a label outside the taxonomy and "
            f"{'were' if n != 1 else 'was'} left out."
        )
    left, right = st.columns(2)
    with left:
        st.markdown("**Specific agreement per label**")
        st.dataframe(specific_rows(d), hide_index=True, width="stretch")
    with right:
        st.markdown("**The judge as one more rater**")
        j = d.get("judge")
        if j:
            st.dataframe(
                [
                    {
                        "judge": j["judge_id"],
                        "items with a verdict": j["n_items_with_verdict"],
                        "alpha, people only": j["alpha_without_judge"].get("value"),
                        "alpha with the judge": j["alpha_with_judge"].get("value"),
                        "95% low": j["alpha_with_judge"].get("ci_low"),
                        "95% high": j["alpha_with_judge"].get("ci_high"),
                    }
                ],
                hide_index=True,
                width="stretch",
            )
        else:
            st.caption("No judge verdicts on this dimension.")
    note = " (weighted kappas use the ordered label list)" if d["ordered"] else ""
    st.markdown("**Pairwise Cohen's kappa**" + note)
    if d.get("pairwise"):
        st.dataframe(pairwise_rows(d), hide_index=True, width="stretch")
        st.caption(
            "95% intervals over the items both annotators labelled: BCa bootstrap for the kappas, "
            "Wilson's score interval for agreement."
        )
    else:
        st.caption("No two annotators share an item yet.")
    st.markdown("**Each annotator against the majority of the others**")
    st.dataframe(rater_rows(d), hide_index=True, width="stretch")
    st.caption(
        "Agreement and kappa with the majority label of the others, on the items where they do not tie; "
        "95% intervals over those items (BCa bootstrap for the kappas, Wilson for agreement)."
    )


page()
