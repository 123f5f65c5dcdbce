"""Collections (admins): overlap k, blind review, audit share, archive."""

from __future__ import annotations

from typing import Any

import streamlit as st

from safereview.review_app import ui


def _save(actor: Any, collection_id: int, **values: Any) -> None:
    from safereview.workflow import collections

    with ui.session() as s:
        collections.update_settings(s, collection_id, actor=actor, **values)
    ui.clear_data_caches()


def _design_text(c: Any) -> str:
    if not c.design_frozen:
        return "not yet (at the first review)"
    if c.design_share is not None and c.design_share > c.audit_share + 1e-9:
        return f"frozen, uniform share raised to {c.design_share:.2f}"
    return "frozen"


def page() -> None:
    from safereview.workflow.errors import WorkflowError

    user = ui.require("manage_collections")
    st.subheader("Collections")
    infos = ui.collections(include_archived=True)
    if not infos:
        st.info("No collections yet: import data first.")
        return
    st.dataframe(
        [
            {
                "collection": c.name,
                "taxonomy": c.taxonomy,
                "overlap k": c.overlap_target,
                "blind": c.blind,
                "uniform share": c.audit_share,
                "sampling design": _design_text(c),
                "archived": c.archived,
            }
            for c in infos
        ],
        hide_index=True,
        width="stretch",
    )
    by_id = {c.id: c for c in infos}
    cid = st.selectbox(
        "Collection to change", list(by_id), format_func=lambda i: ui.plain(by_id[i].name), key="col_target"
    )
    c = by_id[cid]
    with st.form(f"col_edit_{cid}", border=True):
        k = st.number_input(
            "Overlap: annotators per item (k)", min_value=1, max_value=50, value=c.overlap_target, step=1
        )
        blind = st.toggle("Blind review: hide the judge's verdict until the annotator commits", value=c.blind)
        audit = st.slider(
            "Uniform share of the sampling design (1 = a random order)",
            0.0,
            1.0,
            value=float(c.audit_share),
            step=0.05,
            disabled=c.design_frozen,
            help="Fixed at the first review: the estimates rely on the inclusion probabilities it sets.",
        )
        archived = st.toggle("Archived (hidden from the review queue)", value=c.archived)
        st.caption(
            "Raising k reopens fully covered items. The queue serves borderline items first but in a random "
            "order that is a probability sample; the uniform share spreads part of it evenly over all items, "
            "which keeps every item's weight in the estimates bounded. When the judge's scores sit on a few "
            "items, the first review raises the share so the weights cost at most 15% of the sample's size."
        )
        if st.form_submit_button("Save", type="primary", icon=":material/save:"):
            try:
                _save(
                    user,
                    cid,
                    overlap_target=int(k),
                    blind=bool(blind),
                    audit_share=float(audit),
                    archived=bool(archived),
                )
                st.toast("Saved.", icon=":material/check:")
                st.rerun()
            except WorkflowError as exc:
                st.error(ui.md_literal(str(exc), max_chars=300))


page()
