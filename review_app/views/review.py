"""Review: the next item from the queue, the judge's verdict, and labels from the keyboard.

Flow per item: claim (``queue.next_item``) → label every dimension → submit
(``annotations.submit``). In a blind collection the judge's verdict is hidden until then;
after submit it is revealed and the annotator confirms or changes their labels (with a
reason when they change one), categories, rationale and flag, which ``annotations.finalize``
records (keeping the blind labels). A submission left at the reveal step (a closed tab) is
shown again before any new item, and Undo brings the item it undid back on screen. Then the
next item renders in the same fragment rerun, so only the item panel updates.

Reviewer wellbeing: images and video start blurred and greyscale (the collection's default,
or the reviewer's own preference) until the reviewer shows them (``M`` or the button); the
category's content warning comes first; a break reminder follows time and unsafe items seen.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from safereview.review_app import item_view, timing, ui
from safereview.review_app.data import CollectionInfo

LABEL_KEYS = ("123456789", "qwet", "asdg", "zxvb")  # one row of keys per dimension (no C/R)
KEY_SUBMIT, KEY_SKIP, KEY_FLAG, KEY_UNDO, KEY_JUDGE, KEY_SHOW = "ctrl+enter", "k", "f", "u", "j", "m"
SNOOZE_S, SNOOZE_ITEMS = 15 * 60, 10  # "remind me later" on a break reminder
PROGRESS_REREAD_S = 30.0  # submits are added to the progress bar's counts locally between reads


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
        "media_shown",
    ):
        state[key] = None


def _exposure(state: dict[str, Any]) -> dict[str, Any]:
    """Time and items since the last break, for the break reminder (this browser session)."""
    return state.setdefault("exposure", {"since": time.monotonic(), "items": 0, "unsafe": 0, "snooze": None})


# ---------------------------------------------------------------------------------------
# Actions (button callbacks: they run before the fragment reruns)
# ---------------------------------------------------------------------------------------


def _show_for_reveal(user: Any, state: dict[str, Any], ann: Any) -> bool:
    """Put a submitted blind annotation on screen at the reveal step, as it was left; False when
    the judge has no verdict to reveal."""
    from safereview.workflow import annotations

    with ui.read_session() as s:
        item = item_view.load_item(s, ann.item_id)
        revealed = item_view.verdict_dicts(annotations.verdicts_for(s, user, ann.item_id, revealed=True))
    judge_id = item_view.primary_judge(revealed)
    if judge_id is None:
        return False
    _reset_item(state)
    aid = f"a{ann.id}"
    st.session_state[f"rv_cats_{aid}"] = list(ann.categories or [])
    st.session_state[f"rv_rationale_{aid}"] = ann.rationale or ""
    state.update(
        assignment_id=aid,
        item=item,
        verdicts=revealed,
        labels=dict(ann.labels or {}),
        stage="reveal",
        annotation_id=ann.id,
        version=ann.version,
        judge_id=judge_id,
        blind_labels=dict(ann.blind_labels or {}),
        flagged=bool(ann.flagged),
        started=time.monotonic(),
    )
    return True


def _claim(user: Any, flt: Any, state: dict[str, Any], blind: bool) -> None:
    from safereview.workflow import annotations, queue

    pending = None
    checked = state.setdefault("pending_checked", set())
    if blind and flt.collection_id not in checked:  # once per collection and browser session: a submit
        checked.add(flt.collection_id)  # here always ends at the reveal step of this session
        with ui.read_session() as s:
            pending = annotations.awaiting_reveal(s, user, flt.collection_id)
    if pending is not None and _show_for_reveal(user, state, pending):
        state["message"] = (
            "info",
            f"You submitted {pending_label(state)} but had not confirmed it against the judge: finish it first.",
        )
        return
    _show(user, state, queue.next_item(ui.get_engine(), user, flt))


def _show(user: Any, state: dict[str, Any], assignment: Any, *, after_submit: bool = False) -> None:
    """Put a claimed item on screen (None: nothing is left; the panel says so). After a
    submit that claimed nothing, the panel's next run does not ask the queue again."""
    from safereview.workflow import annotations

    _reset_item(state)
    if assignment is None:
        state["asked_queue"] = after_submit
        return
    with ui.read_session() as s:
        state["item"] = item_view.load_item(s, assignment.item_id)
        state["verdicts"] = item_view.verdict_dicts(
            annotations.verdicts_for(s, user, assignment.item_id, revealed=False)
        )
    state.update(assignment_id=assignment.id, labels={}, stage="label", started=time.monotonic(), flagged=False)


def pending_label(state: dict[str, Any]) -> str:
    item = state.get("item")
    return f"item {item.external_id}" if item is not None else "an item"


def _set_label(state: dict[str, Any], dim: str, label: str) -> None:
    state["labels"] = {**(state.get("labels") or {}), dim: label}


def _toggle_flag(state: dict[str, Any]) -> None:
    state["flagged"] = not state.get("flagged")


def _judge_labels_on_screen(state: dict[str, Any]) -> dict[str, str]:
    """The labels of the judge whose verdict is shown (the revealed one, else the primary judge)."""
    verdicts = state.get("verdicts") or []
    return item_view.judge_labels(verdicts, state.get("judge_id") or item_view.primary_judge(verdicts))


def _take_judge(state: dict[str, Any]) -> None:
    state["labels"] = {**(state.get("labels") or {}), **_judge_labels_on_screen(state)}


def _show_media(state: dict[str, Any]) -> None:
    state["media_shown"] = True


def _break_taken(state: dict[str, Any]) -> None:
    state["exposure"] = {"since": time.monotonic(), "items": 0, "unsafe": 0, "snooze": None}


def _snooze(state: dict[str, Any]) -> None:
    exp = _exposure(state)
    exp["snooze"] = (time.monotonic() + SNOOZE_S, exp["items"] + SNOOZE_ITEMS)


def _submit(user: Any, info: CollectionInfo, flt: Any, state: dict[str, Any]) -> None:
    """Submit (or, at the reveal step, commit) the labels. When the item is finished, the
    write and the claim of the next item are one transaction and the next item is loaded
    here, so the rerun that follows only draws it."""
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
            reason = str(st.session_state.get(f"rv_reason_{aid}") or "")
            _ann, nxt = annotations.finalize_and_next(  # confirm or override: the service compares
                ui.get_engine(),
                user,
                state["annotation_id"],
                dict(labels),
                flt,
                expected_version=state["version"],
                judge_id=state.get("judge_id"),
                categories=cats,
                rationale=rationale,
                flagged=bool(state.get("flagged")),
                reveal_reason=reason,
            )
            _next_after_done(user, state, nxt)
            return
        spent = round(time.monotonic() - (state.get("started") or time.monotonic()), 2)
        common: dict[str, Any] = dict(
            categories=cats, rationale=rationale, flagged=bool(state.get("flagged")), time_spent_s=spent
        )
        if not info.blind:  # the verdict was on screen: the service records confirm/override with the submit
            judge_id = item_view.primary_judge(state.get("verdicts") or [])
            _ann, nxt = annotations.submit_and_next(
                ui.get_engine(), user, aid, dict(labels), flt, verdict_judge_id=judge_id, **common
            )
            _count_exposure(info, state, labels)
            _next_after_done(user, state, nxt)
            return
        with ui.session() as s:
            ann = annotations.submit(s, user, aid, dict(labels), **common)
            ann_id, version = ann.id, ann.version
            revealed = item_view.verdict_dicts(annotations.verdicts_for(s, user, state["item"].id, revealed=True))
        _count_exposure(info, state, labels)
        judge_id = item_view.primary_judge(revealed)
        if judge_id is not None:
            state.update(
                stage="reveal",
                annotation_id=ann_id,
                version=version,
                verdicts=revealed,
                judge_id=judge_id,
                blind_labels=dict(labels),
            )
            return
        state["done"] = state.get("done", 0) + 1  # blind, but no verdict to reveal: the next claim follows
        _reset_item(state)
    except LeaseLost as exc:
        state["message"] = ("warning", f"{exc} The item went back to the queue; here is the next one.")
        _reset_item(state)
    except WorkflowError as exc:
        text = str(exc)
        if text.startswith("reveal_reason: "):
            state["message"] = ("warning", text.removeprefix("reveal_reason: ").capitalize() + " in the box below.")
        else:
            state["message"] = ("error", text)


def _next_after_done(user: Any, state: dict[str, Any], nxt: Any) -> None:
    """The item is finished and ``nxt`` was claimed with it: count it, put ``nxt`` on screen."""
    state["done"] = state.get("done", 0) + 1
    state["finished_since_read"] = state.get("finished_since_read", 0) + 1
    _show(user, state, nxt, after_submit=True)


def _progress_counted_locally(state: dict[str, Any], collection_id: int) -> bool:
    """After submits, the progress bar adds them to the last counts read instead of reading
    again, for up to ``PROGRESS_REREAD_S`` seconds (the collection-wide count is already up
    to 5 s old, ``workflow.progress``). Anything else (skip, undo, another collection, an
    older read) reads afresh. True when the counts were updated here."""
    import dataclasses

    finished = state.pop("finished_since_read", 0)
    prog = state.get("progress")
    read_at = state.get("progress_read")
    if not finished or prog is None or read_at is None or prog.collection_id != collection_id:
        return False
    if time.monotonic() - read_at > PROGRESS_REREAD_S:
        return False
    state["progress"] = dataclasses.replace(
        prog, mine_done=prog.mine_done + finished, everyone_done=prog.everyone_done + finished
    )
    return True


def _count_exposure(info: CollectionInfo, state: dict[str, Any], labels: dict[str, str]) -> None:
    exp = _exposure(state)
    exp["items"] += 1
    unsafe = {d["name"]: set(d.get("unsafe_labels") or ["unsafe"]) for d in info.dims}
    if any(v in unsafe.get(k, ()) for k, v in labels.items()):
        exp["unsafe"] += 1


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
    from safereview.workflow import annotations, queue
    from safereview.workflow.errors import WorkflowError

    try:
        with ui.session() as s:
            ann = annotations.undo_last(s, user)
            if ann is not None:
                s.expunge(ann)
    except WorkflowError as exc:
        state["message"] = ("error", str(exc))
        return
    if ann is None:
        state["message"] = ("info", "Nothing to undo.")
        return
    with ui.read_session() as s:
        external_id = item_view.load_item(s, ann.item_id).external_id
    if ann.verdict_action is None and ann.blind_labels:
        # the undone change was a confirm/override: bring the item back at the reveal step
        current = state.get("assignment_id")
        if isinstance(current, int) and state.get("stage") != "reveal":
            try:
                with ui.session() as s:
                    queue.release(s, user, current)  # the item on screen goes back to the queue
            except WorkflowError:
                pass
        if _show_for_reveal(user, state, ann):
            state["message"] = ("success", f"Undid your last change to item {external_id}: here it is again.")
            return
    state["message"] = ("success", f"Undid your last change to item {external_id}. Reopen it from My history.")


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


def _judge_visible(info: CollectionInfo, state: dict[str, Any]) -> bool:
    return state.get("stage") == "reveal" or not info.blind


def _visible_judge_labels(info: CollectionInfo, state: dict[str, Any]) -> dict[str, str]:
    return _judge_labels_on_screen(state) if _judge_visible(info, state) else {}


@st.fragment
def _label_buttons(info: CollectionInfo) -> None:
    """The label buttons (and the reveal-reason field they can bring up): a fragment of its own
    inside the panel, so a label press redraws these ~15 elements, not the whole panel's ~50.
    Reads the session's state itself: a rerun of this fragment alone reuses the arguments of
    the panel's last run."""
    state = _state()
    if state.get("assignment_id") is None:
        return
    labels = state.get("labels") or {}
    reveal = state.get("stage") == "reveal"
    judge = _visible_judge_labels(info, state)
    for di, dim in enumerate(info.dims):
        name = dim["name"]
        st.markdown(
            f"**{ui.md_literal(name)}**"
            + (f" · {ui.md_literal(dim.get('help', ''), max_chars=120)}" if dim.get("help") else "")
        )
        cols = st.columns(len(dim["labels"]))
        for li, label in enumerate(dim["labels"]):
            chosen = labels.get(name) == label
            mark = " ◆" if judge.get(name) == label else ""
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
    blind = state.get("blind_labels") or {}
    changed = reveal and any(blind.get(k) != v for k, v in labels.items())
    if changed:  # a blind label changed after seeing the judge: say why (kept apart from the rationale)
        required = info.reveal_reason == "required"
        st.text_input(
            "Why did you change your label after seeing the judge?" + (" (required)" if required else " (optional)"),
            key=f"rv_reason_{aid}",
            max_chars=2000,
            placeholder="e.g. missed the caption's threat; the judge saw the weapon",
        )


def _label_controls(user: Any, info: CollectionInfo, flt: Any, state: dict[str, Any]) -> None:
    reveal = state.get("stage") == "reveal"
    judge = _visible_judge_labels(info, state)
    aid = state["assignment_id"]
    _label_buttons(info)
    # categories and rationale stay editable at the reveal step, prefilled with what was typed
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
        placeholder="Why? Plain text; kept with your labels. N to write here, Esc to go back to the keys.",
    )
    st.button(
        "Commit final labels" if reveal else "Submit",
        key="rv_submit",
        type="primary",
        icon=":material/check:",
        shortcut=KEY_SUBMIT,
        on_click=_submit,
        args=(user, info, flt, state),
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
    if judge:
        st.button(
            "Take the judge's labels",
            key="rv_take_judge",
            shortcut=KEY_JUDGE,
            icon=":material/gavel:",
            on_click=_take_judge,
            args=(state,),
            type="tertiary",
        )
    _shortcut_legend(info, reveal, bool(judge))


def _shortcut_legend(info: CollectionInfo, reveal: bool, judge: bool) -> None:
    rows = []
    for di, dim in enumerate(info.dims[: len(LABEL_KEYS)]):
        keys = " ".join(ui.kbd(k) for k in LABEL_KEYS[di][: len(dim["labels"])])
        rows.append(f"{ui.attr(dim['name'])}: {keys}")
    rows.append(f"{'commit' if reveal else 'submit'} {ui.kbd('Ctrl+Enter')}")
    rows.append(
        f"flag {ui.kbd('F')} · skip {ui.kbd('K')} · undo {ui.kbd('U')}"
        + (f" · judge's labels {ui.kbd('J')}" if judge else "")
        + f" · rationale {ui.kbd('N')} · back to keys {ui.kbd('Esc')}"
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


def _shield_bar(info: CollectionInfo, item: item_view.ItemView, state: dict[str, Any]) -> None:
    """The content warning and the one control that shows this item's images and video."""
    warnings = dict(info.warnings)
    topic = warnings.get(item.category, item.category)
    with st.container(border=True, key="rv_shield"):
        text, button = st.columns([5, 2], vertical_alignment="center")
        text.markdown(
            (f"**Content warning:** {ui.md_literal(topic, max_chars=200)}. " if topic else "")
            + "Images and video are blurred until you show them."
        )
        button.button(
            "Show media",
            key="rv_show_media",
            shortcut=KEY_SHOW,
            icon=":material/visibility:",
            on_click=_show_media,
            args=(state,),
            width="stretch",
        )


def _break_reminder(info: CollectionInfo, state: dict[str, Any]) -> None:
    """Suggest a break after the collection's minutes or number of unsafe items since the last one."""
    exp = _exposure(state)
    minutes = (time.monotonic() - exp["since"]) / 60.0
    due_time = info.break_minutes > 0 and minutes >= info.break_minutes
    due_unsafe = info.break_unsafe_items > 0 and exp["unsafe"] >= info.break_unsafe_items
    snooze = exp.get("snooze")
    if snooze is not None and time.monotonic() < snooze[0] and exp["items"] < snooze[1]:
        return
    if not (due_time or due_unsafe):
        return
    with st.container(border=True, key="rv_break"):
        st.markdown(
            f"**Time for a short break.** You have reviewed for {minutes:.0f} minutes "
            f"({exp['items']} items, {exp['unsafe']} labelled unsafe) since your last break. "
            "A few minutes away from the screen helps."
        )
        a, b, _ = st.columns([1, 1, 2])
        a.button("I took a break", key="rv_break_done", on_click=_break_taken, args=(state,), width="stretch")
        b.button("Remind me later", key="rv_break_later", on_click=_snooze, args=(state,), width="stretch")


@st.fragment
def review_panel(user: Any, info: CollectionInfo, flt: Any, protect: bool) -> None:
    from safereview.workflow import progress

    state = _state()
    msg = state.pop("message", None)
    if msg:
        kind, text = msg
        getattr(st, kind)(ui.md_literal(text, max_chars=400))
    # a submit that found the queue empty already asked it (in its own transaction): not twice
    if state.get("assignment_id") is None and not state.pop("asked_queue", False):
        _claim(user, flt, state, info.blind)
    if state.get("assignment_id") is None:
        st.success("Nothing left to review with these filters. Thank you!", icon=":material/task_alt:")
        st.button("Check again", key="rv_again", icon=":material/refresh:")  # its press reruns the panel: one pull
        return
    item: item_view.ItemView = state["item"]
    if state.get("progress_for") != state["assignment_id"]:  # once per item: a label press changes no count
        if not _progress_counted_locally(state, info.id):
            try:
                with ui.read_session() as s:
                    state["progress"] = progress.progress(s, user, info.id)
                state["progress_read"] = time.monotonic()
            except Exception:
                state["progress"] = None
        state["progress_for"] = state["assignment_id"]
    prog = state.get("progress")
    _break_reminder(info, state)
    _header(item, info, prog)
    shielded = protect and not state.get("media_shown") and item_view.has_visual_media(item)
    left, right = st.columns([5, 4], gap="medium")
    with left:
        if shielded:
            _shield_bar(info, item, state)
        item_view.render_item(item, shielded=shielded)
    with right:
        _judge_panel(info, state)
        with st.container(border=True):
            _label_controls(user, info, flt, state)
    started = state.pop("t_submit", None)
    if started is not None:
        timing.record("submit_to_next_rendered", (time.perf_counter() - started) * 1000)


def _remember_collection(user: Any) -> None:
    cid = st.session_state.get("rv_collection")
    if isinstance(cid, int):
        ui.run(lambda: _save_pref(user, "last_collection", cid))


def _remember_protection(user: Any) -> None:
    ui.run(lambda: _save_pref(user, "protect_media", bool(st.session_state.get("rv_protect"))))


def _save_pref(user: Any, key: str, value: Any) -> bool:
    from safereview.workflow import preferences

    with ui.session() as s:
        preferences.set_preference(s, user, key, value)
    return True


def _pick_collection(user: Any, infos: list[CollectionInfo], prefs: dict[str, Any]) -> int:
    """The collection picker: the last one used comes back after a reload, and the picker says
    which collections still have work for this reviewer."""
    from safereview.workflow import progress

    by_id = {c.id: c for c in infos}
    with ui.read_session() as s:
        work = progress.has_work_for(s, user, list(by_id))
    if "rv_collection" not in st.session_state or st.session_state["rv_collection"] not in by_id:
        last = prefs.get("last_collection")
        with_work = [i for i in by_id if work.get(i)]
        st.session_state["rv_collection"] = (
            last if last in by_id and work.get(last) else (with_work[0] if with_work else next(iter(by_id)))
        )
    cid = st.selectbox(
        "Collection",
        list(by_id),
        format_func=lambda i: ui.plain(by_id[i].name) + ("" if work.get(i) else " · done for you"),
        key="rv_collection",
        on_change=_remember_collection,
        args=(user,),
    )
    others = [by_id[i].name for i in by_id if i != cid and work.get(i)]
    if not work.get(cid) and others:
        st.caption("Still to review: " + ", ".join(ui.md_literal(n, max_chars=60) for n in others[:5]))
    return int(cid)


def page() -> None:
    from safereview.workflow import preferences, queue

    user = ui.require("review")
    infos = ui.collections()
    if not infos:
        st.info("No collections yet. An administrator can import data on the Import page or with `safereview import`.")
        return
    state = _state()
    with ui.read_session() as s:
        prefs = preferences.get(s, user)
    with st.sidebar:
        st.subheader("Queue")
        by_id = {c.id: c for c in infos}
        cid = _pick_collection(user, infos, prefs)
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
        if state.get("assignment_id") is not None:
            if state.get("stage") == "reveal" and state.get("filter") is not None:  # comes back on return
                state.setdefault("pending_checked", set()).discard(state["filter"].collection_id)
            if state.get("stage") != "reveal":
                try:
                    with ui.session() as s:
                        queue.release(s, user, state["assignment_id"])
                except Exception:  # an expired lease needs no release
                    pass
            _reset_item(state)  # a submission at the reveal step comes back when its collection is picked again
        state["filter"] = flt
    with st.sidebar:
        protect = st.toggle(
            "Blur images and video until I show them",
            value=bool(prefs.get("protect_media", info.protect_media)),
            key="rv_protect",
            on_change=_remember_protection,
            args=(user,),
            help="Your own setting; the collection's default is "
            + ("on." if info.protect_media else "off.")
            + " Show one item's media with M.",
        )
        if info.guidelines:
            with st.expander("Guidelines", expanded=False, icon=":material/menu_book:"):
                ui.safe_text(info.guidelines)
    review_panel(user, info, flt, protect)


page()
