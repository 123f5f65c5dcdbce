"""Gold & adjudication (leads): decide ties and low-agreement items, then release gold labels.

The queue and decisions go through :mod:`agreement.consensus` (which checks the "adjudicate"
permission); snapshots through :mod:`agreement.gold` ("export"). Annotator rationales and
model text are shown only with inert widgets (``st.text``/``st.code``/``st.dataframe``).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from safereview.review_app import ui

FORMAT_LABELS = {"parquet": "Parquet", "csv": "CSV", "jsonl": "JSONL", "hf": "Hugging Face dataset (zip)"}


def _item_context(user: Any, item_id: int, dimension: str) -> None:
    """The item, every annotator's label and rationale, and the judge's verdicts."""
    from safereview.agreement.consensus import adjudication_context
    from safereview.review_app import item_view
    from safereview.workflow.errors import NotFound

    with ui.session() as s:
        try:
            item = item_view.load_item(s, item_id)
            ctx = adjudication_context(s, user, item_id, dimension)
        except (LookupError, NotFound):
            st.warning("Item not found.")
            return
        people = ctx["people"]
        verdicts = item_view.verdict_dicts(ctx["verdicts"])
    st.caption("item " + ui.md_literal(item.external_id, max_chars=120))
    item_view.render_item(item)
    st.markdown("**Annotators**")
    st.dataframe([{k: v for k, v in p.items() if k != "rationale"} for p in people], hide_index=True, width="stretch")
    for p in people:
        if p["rationale"]:
            st.caption("rationale of " + ui.md_literal(p["annotator"], max_chars=80))
            ui.safe_text(p["rationale"], max_chars=5000)
    st.markdown("**Judge**")
    item_view.render_verdicts(verdicts, [dimension])


def _adjudication(user: Any, names: list[str], dims: list[str], labels_of: dict[str, list[str]]) -> None:
    from safereview.agreement.consensus import adjudication_queue

    c1, c2 = st.columns([2, 3])
    dim = c1.selectbox("Dimension", ["(all)", *dims], format_func=ui.plain, key="gold_q_dim")
    threshold = c2.slider(
        "Agreement below which an item needs a decision", 0.0, 1.0, 0.6, step=0.05, key="gold_q_threshold"
    )
    with ui.session() as s:
        queue = ui.run(
            lambda: adjudication_queue(s, user, names, None if dim == "(all)" else [dim], threshold=float(threshold))
        )
    if queue is None:
        return
    if not queue:
        st.success("Nothing to adjudicate: no ties and no low-agreement items.")
        return
    # a row is one item on one dimension: "2 items" for one item tied on two dimensions misled
    n, items = len(queue), len({(q["collection"], q["external_id"]) for q in queue})
    st.caption(
        f"{n} decision{'s' if n != 1 else ''} to make on {items} item{'s' if items != 1 else ''} "
        "(ties first, then the lowest agreement)."
    )
    st.dataframe(
        [
            {
                "item": q["external_id"],
                "collection": q["collection"],
                "dimension": q["dimension"],
                "reason": q["reason"],
                "annotators": q["n_annotators"],
                "agreement": q["agreement"],
                "votes": ", ".join(f"{k}: {v}" for k, v in q["votes"].items()),
            }
            for q in queue
        ],
        hide_index=True,
        width="stretch",
    )
    keys = [f"{q['item_id']}|{q['dimension']}" for q in queue]
    by_key = dict(zip(keys, queue, strict=True))
    pick = st.selectbox(
        "Decide",
        keys,
        key="gold_pick",
        format_func=lambda k: ui.plain(
            f"{by_key[k]['external_id']} ({by_key[k]['collection']}) · {by_key[k]['dimension']} · {by_key[k]['reason']}"
        ),
    )
    q = by_key[pick]
    with st.container(border=True):
        _item_context(user, int(q["item_id"]), q["dimension"])
        st.markdown("**Consensus proposals**")
        st.dataframe(
            [
                {"method": "majority", "proposes": q.get("proposal_majority") or "nothing (a tie)"},
                {"method": "Dawid–Skene", "proposes": q.get("proposal_dawid_skene") or "nothing"},
            ],
            hide_index=True,
        )
    _decision_form(user, q, labels_of[q["dimension"]], pick)


def _decision_form(user: Any, q: dict[str, Any], labels: list[str], pick: str) -> None:
    """No label is pre-selected: a gold label is a choice, made explicitly, with a note and a confirmation."""
    from safereview.agreement.consensus import adjudicate

    with st.container(border=True):
        label = st.radio(
            "Gold label",
            labels,
            index=None,
            format_func=ui.md_literal,
            horizontal=True,
            key=f"gold_label_{pick}",
        )
        rationale = st.text_area(
            "Why (required; kept with the decision)", max_chars=5000, key=f"gold_why_{pick}", height=80
        )
        sure = st.checkbox(
            f"I decide {ui.md_literal(label)!s} for {ui.md_literal(q['external_id'], max_chars=80)} · "
            f"{ui.md_literal(q['dimension'])}"
            if label
            else "I have looked at the item, the annotators and the judge",
            key=f"gold_sure_{pick}",
        )
        ready = label is not None and bool((rationale or "").strip()) and sure
        if not ready:
            st.caption("Choose a label, write why, and confirm to record the decision.")
        if st.button(
            "Record decision", type="primary", icon=":material/gavel:", disabled=not ready, key=f"gold_record_{pick}"
        ):

            def decide() -> bool:
                with ui.session() as s:
                    adjudicate(s, user, int(q["item_id"]), q["dimension"], str(label), str(rationale))
                return True

            if ui.run(decide):
                st.toast("Decision recorded.", icon=":material/check:")
                st.rerun()


def _download_buttons(snapshot_id: int, key: str) -> None:
    """One link per format, to the authenticated download route: the file is built from the
    stored rows when the link is followed, and only for a signed-in user who may export."""
    from safereview.agreement.gold import ROWS_ARE_NOT_A_RANDOM_SAMPLE
    from safereview.agreement.gold_files import DOWNLOADS
    from safereview.review_app import server

    st.caption(ROWS_ARE_NOT_A_RANDOM_SAMPLE)
    for col, fmt in zip(st.columns(len(DOWNLOADS)), DOWNLOADS, strict=True):
        col.link_button(
            FORMAT_LABELS[fmt],
            server.download_url("gold", snapshot_id, fmt),
            key=f"{key}_{fmt}",
            icon=":material/download:",
        )


def _snapshots(user: Any, names: list[str], dims: list[str]) -> None:
    from safereview.agreement.data import AgreementError
    from safereview.agreement.gold import create_snapshot, list_snapshots
    from safereview.workflow import policies

    if not policies.can(user, "export"):
        st.caption("Your role may not export gold labels.")
        return
    c1, c2, c3 = st.columns([2, 2, 3])
    method = c1.selectbox("Method", ["majority", "dawid-skene"], key="gold_method")
    threshold = c2.slider("Adjudication threshold", 0.0, 1.0, 0.6, step=0.05, key="gold_threshold")
    chosen_dims = c3.multiselect("Dimensions", dims, default=dims, format_func=ui.plain, key="gold_dims")
    if st.button("Create a gold snapshot", type="primary", icon=":material/verified:", key="gold_create"):

        def create() -> dict[str, Any]:
            with ui.session() as s:
                snap, table = create_snapshot(
                    s, user, names, chosen_dims or None, method=method, threshold=float(threshold)
                )
                return {"id": snap.id, "rows": table.num_rows, "checksum": snap.checksum}

        try:
            res = ui.run(create)
        except AgreementError as exc:
            st.error(ui.md_literal(str(exc)))
            res = None
        if res:
            st.session_state["gold_last"] = res
    last = st.session_state.get("gold_last")
    if last:
        st.success(f"Snapshot {int(last['id'])}: {int(last['rows'])} rows.")
        st.code(f"checksum {last['checksum']}", language=None)
        _download_buttons(int(last["id"]), "gold_dl")
    with ui.session() as s:
        rows = list_snapshots(s, user, limit=50)
    if rows:
        st.markdown("**Snapshots**")
        st.dataframe(rows, hide_index=True, width="stretch")
        sid = st.selectbox("Download a stored snapshot", [r["snapshot"] for r in rows], key="gold_old")
        _download_buttons(int(sid), "gold_old_dl")


def page() -> None:
    user = ui.require("adjudicate")
    st.subheader("Gold & adjudication")
    picked = ui.pick_collections("gold_collections")
    if picked is None:
        return
    chosen_infos, dims = picked
    names = [c.name for c in chosen_infos]
    labels_of: dict[str, list[str]] = {}
    for info in chosen_infos:
        for d in info.dims:
            labels_of.setdefault(d["name"], list(d["labels"]))
    tab_q, tab_g = st.tabs(["Adjudication queue", "Gold snapshots"])
    with tab_q:
        _adjudication(user, names, dims, labels_of)
    with tab_g:
        _snapshots(user, names, dims)


page()
