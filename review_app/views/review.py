"""Review: the next item from the queue, the judge's verdict, and labels from the keyboard.

Flow per item: claim (``queue.next_item``) → label every dimension → submit
(``annotations.submit``). In a blind collection the judge's verdict is hidden until then;
after submit it is revealed and the annotator confirms or changes their labels, which
``annotations.finalize`` records (keeping the blind labels). Then the next item renders in
the same fragment rerun, so only the item panel updates.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from safereview.review_app import item_view, timing, ui
from safereview.review_app.data import CollectionInfo

LABEL_KEYS = ("123456789", "qwet", "asdg", "zxvb")  # one row of keys per dimension (no C/R)
KEY_SUBMIT, KEY_SKIP, KEY_FLAG, KEY_UNDO, KEY_JUDGE = "ctrl+enter", "k", "f", "u", "j"


def _state() -> dict[str, Any]:
    return st.session_state.setdefault("rv", {"assignment_id": None})


def _reset_item(state: dict[str, Any]) -> None:
    for key in (
        "assignment_id",
        "item",
        "verdicts",
        "labels",
        "stage",
        "annotation_id",
        "version",
        "started",
        "flagged",
        "blind_labels",
        "judge_id",
    ):
        state[key] = None


# ---------------------------------------------------------------------------------------
# Actions (button callbacks: they run before the fragment reruns)
# ---------------------------------------------------------------------------------------


def _claim(user: Any, flt: Any, state: dict[str, Any]) -> None:
    from safereview.workflow import annotations, queue

    assignment = queue.next_item(ui.get_engine(), user, flt)
    _reset_item(state)
    if assignment is None:
        state["empty"] = True
        return
    state["empty"] = False
    with ui.read_session() as s:
        state["item"] = item_view.load_item(s, assignment.item_id)
        state["verdicts"] = item_view.verdict_dicts(
            annotations.verdicts_for(s, user, assignment.item_id, revealed=False)
        )
    state.update(assignment_id=assignment.id, labels={}, stage="label", started=time.monotonic(), flagged=False)


def _set_label(state: dict[str, Any], dim: str, label: str) -> None:
    state["labels"] = {**(state.get("labels") or {}), dim: label}


def _toggle_flag(state: dict[str, Any]) -> None:
    state["flagged"] = not state.get("flagged")


def _take_judge(state: dict[str, Any]) -> None:
    state["labels"] = {
        **(state.get("labels") or {}),
        **item_view.judge_labels(state.get("verdicts") or [], state.get("judge_id")),
    }


def _submit(user: Any, info: CollectionInfo, state: dict[str, Any]) -> None:
    from safereview.workflow import annotations
    from safereview.workflow.errors import LeaseLost, WorkflowError

    if timing.enabled():
        state["t_submit"] = time.perf_counter()
    dims = [d["name"] for d in info.dims]
    labels = state.get("labels") or {}
    missing = [d for d in dims if d not in labels]
    if missing:
        state["message"] = ("warning", "Choose a label for: " + ", ".join(missing))
        return
    aid = state["assignment_id"]
    cats = list(st.session_state.get(f"rv_cats_{aid}") or [])
    rationale = str(st.session_state.get(f"rv_rationale_{aid}") or "")
    try:
        if state.get("stage") == "reveal":
            judge_id = state.get("judge_id")
            with ui.session() as s:  # confirm or override: the service compares with the stored verdict
                annotations.finalize(
                    s,
                    user,
                    state["annotation_id"],
                    dict(labels),
                    expected_version=state["version"],
                    judge_id=judge_id,
                )
            state["done"] = state.get("done", 0) + 1
            _reset_item(state)
            return
        spent = round(time.monotonic() - (state.get("started") or time.monotonic()), 2)
        judge_id = None
        if not info.blind:  # the verdict was on screen: the service records confirm/override with the submit
            judge_id = item_view.primary_judge(state.get("verdicts") or [])
        with ui.session() as s:
            ann = annotations.submit(
                s,
                user,
                aid,
                dict(labels),
                categories=cats,
                rationale=rationale,
                flagged=bool(state.get("flagged")),
                time_spent_s=spent,
                verdict_judge_id=judge_id,
            )
            ann_id, version = ann.id, ann.version
            revealed: list[Any] = []
            if info.blind:
                revealed = item_view.verdict_dicts(annotations.verdicts_for(s, user, state["item"].id, revealed=True))
        judge_id = item_view.primary_judge(revealed)
        if info.blind and judge_id is not None:
            state.update(
                stage="reveal",
                annotation_id=ann_id,
                version=version,
                verdicts=revealed,
                judge_id=judge_id,
                blind_labels=dict(labels),
            )
            return
        state["done"] = state.get("done", 0) + 1
        _reset_item(state)
    except LeaseLost as exc:
        state["message"] = ("warning", f"{exc} The item went back to the queue; here is the next one.")
        _reset_item(state)
    except WorkflowError as exc:
        state["message"] = ("error", str(exc))


def _skip(user: Any, state: dict[str, Any]) -> None:
    from safereview.workflow import queue
    from safereview.workflow.errors import WorkflowError

    if state.get("stage") == "reveal":
        state["message"] = ("info", "Already submitted: confirm or change your labels, then commit.")
        return
    try:
        with ui.session() as s:
            queue.skip(s, user, state["assignment_id"])
    except WorkflowError as exc:
        state["message"] = ("error", str(exc))
    _reset_item(state)


def _undo(user: Any, state: dict[str, Any]) -> None:
    from safereview.workflow import annotations
    from safereview.workflow.errors import WorkflowError

    try:
        with ui.session() as s:
            ann = annotations.undo_last(s, user)
            item_id = ann.item_id if ann is not None else None
    except WorkflowError as exc:
        state["message"] = ("error", str(exc))
        return
    if item_id is None:
        state["message"] = ("info", "Nothing to undo.")
    else:
        if state.get("stage") == "reveal" and state.get("item") and state["item"].id == item_id:
            _reset_item(state)  # the reveal step belonged to the change just undone
        state["message"] = ("success", f"Undid your last change (item {item_id}). Reopen it from My history.")


# ---------------------------------------------------------------------------------------
# UI
# ---------------------------------------------------------------------------------------


def _label_key(dim_index: int, label_index: int) -> str | None:
    if dim_index >= len(LABEL_KEYS) or label_index >= len(LABEL_KEYS[dim_index]):
        return None
    return LABEL_KEYS[dim_index][label_index]


def _header(item: item_view.ItemView, info: CollectionInfo, progress: Any) -> None:
    cat = item.category + (f" / {item.subcategory}" if item.subcategory else "")
    bits = [f"**{ui.md_literal(item.task_type or 'item')}**"]
    if cat:
        bits.append(ui.md_literal(cat))
    if item.model:
        bits.append("model " + ui.md_literal(item.model))
    bits.append(
        ui.md_literal(item.input_modalities)
        + (f" → {ui.md_literal(item.output_modalities)}" if item.output_modalities else "")
    )
    left, right = st.columns([3, 2], vertical_alignment="center")
    left.markdown(" · ".join(bits))
    if progress is not None:
        total = max(progress.slots_total, 1)
        right.progress(
            min(progress.everyone_done / total, 1.0),
            text=f"You: {progress.mine_done} done · everyone: {progress.everyone_done:,}/"
            f"{progress.slots_total:,} labels ({progress.everyone_done / total:.0%})",
        )
    st.caption(
        f"{ui.md_literal(info.name)} · item {ui.md_literal(item.external_id, max_chars=80)}"
        + (" · blind review" if info.blind else "")
    )


def _label_controls(user: Any, info: CollectionInfo, state: dict[str, Any]) -> None:
    labels = state.get("labels") or {}
    reveal = state.get("stage") == "reveal"
    judge = item_view.judge_labels(state.get("verdicts") or [], state.get("judge_id")) if reveal else {}
    for di, dim in enumerate(info.dims):
        name = dim["name"]
        st.markdown(
            f"**{ui.md_literal(name)}**"
            + (f" · {ui.md_literal(dim.get('help', ''), max_chars=120)}" if dim.get("help") else "")
        )
        cols = st.columns(len(dim["labels"]))
        for li, label in enumerate(dim["labels"]):
            chosen = labels.get(name) == label
            mark = " ◆" if reveal and judge.get(name) == label else ""
            cols[li].button(
                ui.md_literal(label) + mark,
                key=f"rv_lab_{di}_{li}",
                type="primary" if chosen else "secondary",
                shortcut=_label_key(di, li),
                on_click=_set_label,
                args=(state, name, label),
                width="stretch",
            )
    aid = state["assignment_id"]
    if not reveal:  # categories and rationale were saved with the submit; keep the reveal step compact
        if info.category_options:
            st.multiselect(
                "Harm categories (if any)",
                info.category_options,
                key=f"rv_cats_{aid}",
                format_func=ui.plain,
                placeholder="none",
            )
        st.text_area(
            "Rationale (optional)",
            key=f"rv_rationale_{aid}",
            height=68,
            max_chars=4000,
            placeholder="Why? Plain text; kept with your labels.",
        )
    st.button(
        "Commit final labels" if reveal else "Submit",
        key="rv_submit",
        type="primary",
        icon=":material/check:",
        shortcut=KEY_SUBMIT,
        on_click=_submit,
        args=(user, info, state),
        width="stretch",
    )
    c2, c3, c4 = st.columns(3)
    c2.button(
        "Flagged" if state.get("flagged") else "Flag",
        key="rv_flag",
        shortcut=KEY_FLAG,
        icon=":material/flag:",
        on_click=_toggle_flag,
        args=(state,),
        width="stretch",
        type="primary" if state.get("flagged") else "secondary",
        disabled=reveal,
    )
    c3.button(
        "Skip",
        key="rv_skip",
        shortcut=KEY_SKIP,
        icon=":material/skip_next:",
        on_click=_skip,
        args=(user, state),
        width="stretch",
        disabled=reveal,
    )
    c4.button(
        "Undo",
        key="rv_undo",
        shortcut=KEY_UNDO,
        icon=":material/undo:",
        on_click=_undo,
        args=(user, state),
        width="stretch",
    )
    if reveal:
        st.button(
            "Take the judge's labels",
            key="rv_take_judge",
            shortcut=KEY_JUDGE,
            icon=":material/gavel:",
            on_click=_take_judge,
            args=(state,),
            type="tertiary",
        )
    _shortcut_legend(info, reveal)


def _shortcut_legend(info: CollectionInfo, reveal: bool) -> None:
    rows = []
    for di, dim in enumerate(info.dims[: len(LABEL_KEYS)]):
        keys = " ".join(ui.kbd(k) for k in LABEL_KEYS[di][: len(dim["labels"])])
        rows.append(f"{ui.attr(dim['name'])}: {keys}")
    rows.append(f"{'commit' if reveal else 'submit'} {ui.kbd('Ctrl+Enter')}")
    rows.append(
        f"flag {ui.kbd('F')} · skip {ui.kbd('K')} · undo {ui.kbd('U')}"
        + (f" · judge's labels {ui.kbd('J')}" if reveal else "")
    )
    st.html('<div class="sr-muted">Keys — ' + " · ".join(rows) + "</div>")


def _judge_panel(info: CollectionInfo, state: dict[str, Any]) -> None:
    dims = [d["name"] for d in info.dims]
    with st.container(border=True):
        st.markdown("**Judge**")
        if info.blind and state.get("stage") != "reveal":
            st.caption("Hidden until you submit your own labels (blind review).")
            return
        mine = state.get("blind_labels") if state.get("stage") == "reveal" else None
        if mine:
            st.caption(
                "Your blind labels: " + ", ".join(f"{ui.md_literal(k)}={ui.md_literal(v)}" for k, v in mine.items())
            )
        item_view.render_verdicts(state.get("verdicts") or [], dims, mine=mine)
        if state.get("stage") == "reveal":
            st.caption("Keep your labels or change them (◆ marks the judge's), then commit.")


@st.fragment
def review_panel(user: Any, info: CollectionInfo, flt: Any) -> None:
    from safereview.workflow import progress

    state = _state()
    msg = state.pop("message", None)
    if msg:
        kind, text = msg
        getattr(st, kind)(ui.md_literal(text, max_chars=400))
    if state.get("assignment_id") is None:
        _claim(user, flt, state)
    if state.get("assignment_id") is None:
        st.success("Nothing left to review with these filters. Thank you!", icon=":material/task_alt:")
        if st.button("Check again", key="rv_again", icon=":material/refresh:"):
            st.rerun(scope="fragment")
        return
    item: item_view.ItemView = state["item"]
    if state.get("progress_for") != state["assignment_id"]:  # once per item: a label press changes no count
        try:
            with ui.read_session() as s:
                state["progress"] = progress.progress(s, user, info.id)
        except Exception:
            state["progress"] = None
        state["progress_for"] = state["assignment_id"]
    prog = state.get("progress")
    _header(item, info, prog)
    left, right = st.columns([5, 4], gap="medium")
    with left:
        item_view.render_item(item)
    with right:
        _judge_panel(info, state)
        with st.container(border=True):
            _label_controls(user, info, state)
    started = state.pop("t_submit", None)
    if started is not None:
        timing.record("submit_to_next_rendered", (time.perf_counter() - started) * 1000)


def page() -> None:
    from safereview.workflow import queue

    user = ui.require("review")
    infos = ui.collections()
    if not infos:
        st.info("No collections yet. An administrator can import data on the Import page or with `safereview import`.")
        return
    state = _state()
    with st.sidebar:
        st.subheader("Queue")
        by_id = {c.id: c for c in infos}
        cid = st.selectbox(
            "Collection", list(by_id), format_func=lambda i: ui.plain(by_id[i].name), key="rv_collection"
        )
        facets = ui.facets(cid)
        tts = st.multiselect(
            "Task type", facets["task_types"], key=f"rv_f_tt_{cid}", format_func=ui.plain, placeholder="all"
        )
        cats = st.multiselect(
            "Category", facets["categories"], key=f"rv_f_cat_{cid}", format_func=ui.plain, placeholder="all"
        )
        models = st.multiselect(
            "Model", facets["models"], key=f"rv_f_model_{cid}", format_func=ui.plain, placeholder="all"
        )
    info = by_id[cid]
    flt = queue.QueueFilter(collection_id=cid, task_types=tuple(tts), categories=tuple(cats), models=tuple(models))
    if state.get("filter") != flt:
        if state.get("assignment_id") is not None and state.get("stage") != "reveal":
            try:
                with ui.session() as s:
                    queue.release(s, user, state["assignment_id"])
            except Exception:  # an expired lease needs no release
                pass
            _reset_item(state)
        state["filter"] = flt
    with st.sidebar:
        if info.guidelines:
            with st.expander("Guidelines", expanded=False, icon=":material/menu_book:"):
                ui.safe_text(info.guidelines)
    review_panel(user, info, flt)


page()
