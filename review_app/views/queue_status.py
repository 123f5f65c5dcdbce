"""Queue status (leads): progress of every collection and labels done per reviewer."""

from __future__ import annotations

import streamlit as st

from safereview.review_app import ui


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


page()
