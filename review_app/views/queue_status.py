"""Queue status (leads): progress of every collection and labels done per reviewer."""

from __future__ import annotations

from typing import Any

import streamlit as st

from safereview.review_app import ui
from safereview.review_app.data import CollectionInfo


def page() -> None:
    from safereview.workflow import progress

    user = ui.require("view_queue_status")
    st.subheader("Queue status")
    infos = ui.collections()
    if not infos:
        st.info("No collections yet.")
        return
    overview = []
    details = {}
    with ui.session() as s:
        for info in infos:
            status = progress.queue_status(s, user, info.id)
            p = status["progress"]
            details[info.id] = status["per_user"]
            overview.append(
                {
                    "collection": info.name,
                    "items": p.n_items,
                    "overlap k": p.overlap_target,
                    "labels done": p.everyone_done,
                    "of slots": p.slots_total,
                    "done": 100 * p.fraction_done,
                    "leased now": p.slots_leased,
                    "items fully covered": p.items_fully_covered,
                    "blind": info.blind,
                    "uniform share": 100 * info.audit_share,
                }
            )
    st.dataframe(
        overview,
        hide_index=True,
        width="stretch",
        column_config={
            "done": st.column_config.ProgressColumn("done", format="%.0f%%", min_value=0.0, max_value=100.0),
            "uniform share": st.column_config.NumberColumn("uniform share", format="%.0f%%"),
        },
    )
    by_id = {c.id: c for c in infos}
    cid = st.selectbox("Per reviewer", list(by_id), format_func=lambda i: ui.plain(by_id[i].name), key="qs_collection")
    rows = [
        {"reviewer": name, **{k: counts.get(k, 0) for k in ("done", "not confirmed", "leased", "skipped", "released")}}
        for name, counts in details.get(cid, {}).items()
    ]
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
    else:
        st.caption("Nobody has reviewed this collection yet.")
    _review_defaults(user, by_id[cid])


def _review_defaults(user: Any, c: CollectionInfo) -> None:
    """What reviewers of this collection start with: media protection, break reminders, the reveal reason."""
    from safereview.workflow.collections import update_settings
    from safereview.workflow.errors import WorkflowError

    with st.form(f"qs_defaults_{c.id}", border=True):
        st.markdown("**Reviewer defaults** for " + ui.md_literal(c.name))
        protect = st.toggle(
            "Blur images and video until the reviewer shows them (each reviewer may turn it off for themselves)",
            value=c.protect_media,
        )
        a, b = st.columns(2)
        minutes = a.number_input(
            "Suggest a break after minutes (0 = never)",
            0,
            10_000,
            c.break_minutes,
            step=5,
        )
        unsafe = b.number_input(
            "… or after items labelled unsafe (0 = never)",
            0,
            10_000,
            c.break_unsafe_items,
        )
        reason = st.radio(
            "A label changed after seeing the judge needs a reason",
            ["required", "optional"],
            index=0 if c.reveal_reason == "required" else 1,
            horizontal=True,
        )
        if st.form_submit_button("Save defaults", icon=":material/save:"):
            try:
                with ui.session() as s:
                    update_settings(
                        s,
                        c.id,
                        actor=user,
                        protect_media=bool(protect),
                        break_minutes=int(minutes),
                        break_unsafe_items=int(unsafe),
                        reveal_reason=str(reason),
                    )
                ui.clear_data_caches()
                st.toast("Saved.", icon=":material/check:")
                st.rerun()
            except WorkflowError as exc:
                st.error(ui.md_literal(str(exc), max_chars=300))


page()
