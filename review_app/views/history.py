"""My history: the annotator's recent labels; reopen one and change it; undo the last change.

Edits go through ``annotations.edit`` (``update`` in a retried transaction of its own) with
the version the page loaded, so a change made elsewhere in the meantime (another tab, an
undo) is reported as a conflict, never lost.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from safereview.review_app import item_view, ui


def _rows(user: Any, collection_id: int | None) -> list[dict[str, Any]]:
    from safereview.workflow import annotations

    with ui.session() as s:
        rows = annotations.history_items(s, user, limit=200, collection_id=collection_id)
        return [
            {
                "annotation_id": a.id,
                "item_id": a.item_id,
                "version": a.version,
                "item": item.external_id,
                "collection_id": item.collection_id,
                "labels": dict(a.labels or {}),
                "categories": list(a.categories or []),
                "rationale": a.rationale,
                "flagged": a.flagged,
                "verdict": a.verdict_action or "",
                "updated": a.updated_at,
            }
            for a, item in rows
        ]


def _undo(user: Any) -> None:
    from safereview.review_app import item_view
    from safereview.workflow import annotations
    from safereview.workflow.errors import WorkflowError

    try:
        with ui.session() as s:
            ann = annotations.undo_last(s, user)
            item = item_view.load_item(s, ann.item_id) if ann is not None else None
            st.session_state["hist_msg"] = (
                ("info", "Nothing to undo.")
                if ann is None or item is None
                else ("success", f"Undid your last change to item {item.external_id} (now version {ann.version}).")
            )
    except WorkflowError as exc:
        st.session_state["hist_msg"] = ("error", str(exc))


def _editor(user: Any, row: dict[str, Any], info: Any) -> None:
    from safereview.workflow import annotations
    from safereview.workflow.errors import Conflict, WorkflowError

    aid = row["annotation_id"]
    # the version the annotator opened, kept across reruns: a change made elsewhere after
    # that (another tab, an undo) must surface as a conflict, not be re-read silently
    opened_key = f"hist_opened_{aid}"
    if st.session_state.get("hist_opened_for") != aid:
        st.session_state["hist_opened_for"] = aid
        st.session_state[opened_key] = row["version"]
    opened = st.session_state.setdefault(opened_key, row["version"])
    with ui.session() as s:
        view = item_view.load_item(s, row["item_id"])
        verdicts = item_view.verdict_dicts(annotations.verdicts_for(s, user, row["item_id"], revealed=True))
    left, right = st.columns([5, 4], gap="medium")
    with left:
        item_view.render_item(view)
    with right:
        with st.container(border=True):
            st.markdown("**Judge**")
            item_view.render_verdicts(verdicts, [d["name"] for d in info.dims], mine=row["labels"])
        with st.form(f"hist_edit_{aid}_{opened}", border=True):
            st.markdown(f"**Your labels** · version {opened}")
            new_labels = {}
            for dim in info.dims:
                current = row["labels"].get(dim["name"])
                new_labels[dim["name"]] = st.segmented_control(
                    ui.md_literal(dim["name"]),
                    dim["labels"],
                    format_func=ui.md_literal,
                    default=current if current in dim["labels"] else None,
                    key=f"hist_{aid}_{dim['name']}",
                )
            cats = st.multiselect(
                "Harm categories",
                info.category_options,
                format_func=ui.plain,
                default=[c for c in row["categories"] if c in info.category_options],
            )
            why = st.text_area("Rationale", value=row["rationale"], max_chars=4000, height=80)
            flagged = st.checkbox("Flag for discussion", value=row["flagged"])
            saved = st.form_submit_button("Save changes", type="primary", icon=":material/save:")
        if saved:
            if any(v is None for v in new_labels.values()):
                st.warning("Every dimension needs a label.")
                return
            try:
                ann = annotations.edit(  # its own transaction, retried; a lost COMMIT is not a conflict
                    ui.get_engine(),
                    user,
                    aid,
                    opened,
                    labels=new_labels,
                    categories=cats,
                    rationale=why,
                    flagged=flagged,
                )
                version = ann.version
            except Conflict:
                st.session_state.pop(opened_key, None)
                st.session_state.pop("hist_opened_for", None)
                st.error(
                    "This annotation changed since you opened it (another tab or an undo); nothing was "
                    "saved. Select it again to see the current version."
                )
                return
            except WorkflowError as exc:
                st.error(ui.md_literal(str(exc), max_chars=400))
                return
            st.session_state.pop(opened_key, None)
            st.session_state.pop("hist_opened_for", None)
            st.session_state["hist_msg"] = ("success", f"Saved (version {version}).")
            st.rerun()


def page() -> None:
    user = ui.require("view_own_history")
    st.subheader("My history")
    msg = st.session_state.pop("hist_msg", None)
    if msg:
        getattr(st, msg[0])(ui.md_literal(msg[1], max_chars=300))
    infos = {c.id: c for c in ui.collections(include_archived=True)}
    top_l, top_r = st.columns([3, 1], vertical_alignment="bottom")
    cid = top_l.selectbox(
        "Collection",
        [None, *infos],
        key="hist_collection",
        format_func=lambda i: "all collections" if i is None else ui.plain(infos[i].name),
    )
    top_r.button(
        "Undo my last change",
        icon=":material/undo:",
        key="hist_undo",
        on_click=_undo,
        args=(user,),
        shortcut="u",
        width="stretch",
    )
    rows = _rows(user, cid)
    if not rows:
        st.info("You have not labelled anything yet.")
        return
    table = [
        {
            "item": r["item"],
            "collection": infos[r["collection_id"]].name if r["collection_id"] in infos else "",
            "labels": ", ".join(f"{k}={v}" for k, v in r["labels"].items()),
            "categories": ", ".join(r["categories"]),
            "flag": r["flagged"],
            "verdict": r["verdict"],
            "version": r["version"],
            "changed": r["updated"],
        }
        for r in rows
    ]
    event = st.dataframe(
        table,
        key="hist_table",
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        height=min(38 + 35 * len(table), 360),
        column_config={"changed": st.column_config.DatetimeColumn("changed", format="YYYY-MM-DD HH:mm")},
    )
    selected = event.selection.rows if event is not None else []
    if not selected:
        st.caption("Select a row to reopen that item and change your labels.")
        return
    row = rows[selected[0]]
    info = infos.get(row["collection_id"])
    if info is None:
        st.warning("This item's collection is not available.")
        return
    st.divider()
    _editor(user, row, info)


page()
