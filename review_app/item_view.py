"""Rendering one item (prompt, response, media, judge verdicts) safely; reused by every page.

Text parts go through inert widgets only (``st.text``); media go through the authenticated
``/media-files/`` route as ``<img>``/``<audio>``/``<video>`` tags that the app writes
itself (only a validated sha256 and escaped file names reach the HTML), with derived
views (zoomable image, waveform, mel spectrogram, key-frame strip) computed on first use
and cached on disk by :mod:`review_app.media_derive`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import streamlit as st
from sqlmodel import Session, select

from safereview.review_app import server, ui


@dataclass
class ItemView:
    """Everything the review page shows about one item, loaded once per item."""

    id: int
    external_id: str
    collection_id: int
    task_type: str
    category: str
    subcategory: str
    model: str
    input_modalities: str
    output_modalities: str
    prompt: list[dict[str, Any]]
    response: list[dict[str, Any]]
    refused: bool
    media: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_item(session: Session, item_id: int) -> ItemView:
    from safereview.db.models import Item, Media

    item = session.get(Item, item_id)
    if item is None:
        raise LookupError(f"item {item_id} not found")
    shas = [
        p.get("media") for p in [*(item.prompt or []), *(item.response or [])] if isinstance(p, dict) and p.get("media")
    ]
    media: dict[str, dict[str, Any]] = {}
    if shas:
        for m in session.exec(select(Media).where(Media.sha256.in_(shas))).all():  # type: ignore[attr-defined]
            media[m.sha256] = {
                "kind": m.kind,
                "mime": m.mime,
                "width": m.width,
                "height": m.height,
                "duration_s": m.duration_s,
                "size_bytes": m.size_bytes,
            }
    return ItemView(
        id=item.id,
        external_id=item.external_id,
        collection_id=item.collection_id,  # type: ignore[arg-type]
        task_type=item.task_type,
        category=item.category,
        subcategory=item.subcategory,
        model=item.model,
        input_modalities=item.input_modalities,
        output_modalities=item.output_modalities,
        prompt=list(item.prompt or []),
        response=list(item.response or []),
        refused=item.refused,
        media=media,
    )


# ---------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------


def render_parts(parts: list[dict[str, Any]], item: ItemView, *, where: str, shielded: bool = False) -> None:
    """Render prompt or response parts in order; unknown or broken parts say so plainly.

    ``shielded``: images and video are drawn blurred and greyscale (reviewer wellbeing) until
    the reviewer reveals them; the page decides when.
    """
    for i, part in enumerate(parts):
        if not isinstance(part, dict):
            st.caption("(unreadable part)")
            continue
        modality = part.get("modality")
        if modality == "text":
            ui.safe_text(part.get("text", ""))
        elif modality in ("image", "audio", "video"):
            render_media(part, item, key=f"{where}_{item.id}_{i}", shielded=shielded)
        else:
            st.caption(f"(part of unknown modality {ui.md_literal(modality, max_chars=30)})")


def _media_caption(part: dict[str, Any], info: dict[str, Any] | None) -> str:
    bits = [ui.md_literal(part.get("name") or "unnamed", max_chars=80)]
    if info:
        if info.get("width") and info.get("height"):
            bits.append(f"{info['width']}×{info['height']}")
        if info.get("duration_s"):
            bits.append(f"{info['duration_s']:.1f} s")
        size = info.get("size_bytes") or 0
        bits.append(f"{size / 1024:,.0f} KB" if size >= 1024 else f"{size} bytes")
    return " · ".join(bits)


def render_media(part: dict[str, Any], item: ItemView, *, key: str, shielded: bool = False) -> None:
    sha = str(part.get("media", ""))
    info = item.media.get(sha)
    kind = part.get("modality")
    if not server.SHA_RE.match(sha) or info is None:
        st.warning(f"Missing {kind} file ({ui.md_literal(part.get('name') or sha[:12], max_chars=60)}).")
        return
    if not ui.media_ready():
        st.info(f"Loading {kind}…", icon=":material/hourglass_top:")
        return
    alt = ui.attr(part.get("name") or kind)
    box = "sr-media sr-shield" if shielded else "sr-media"
    if kind == "image":
        width = info.get("width") or 0
        # small: 2x, no more, and never wider than its column (side by side with the prompt)
        size = f' style="width:{min(max(width * 2, 240), 520)}px; max-width:100%"' if 0 < width < 260 else ""
        st.html(
            f'<div class="{box}"><img src="{server.media_url(sha, "view.webp")}" alt="{alt}"{size} '
            'loading="eager"></div>'
        )
        cap, zoom = st.columns([3, 2], vertical_alignment="center")
        cap.caption(_media_caption(part, info) + (" · blurred until you show it" if shielded else ""))
        if not shielded and zoom.button("Enlarge", key=f"zoom_{key}", icon=":material/zoom_in:", type="tertiary"):
            _zoom_dialog(sha, str(part.get("name") or ""))
    elif kind == "audio":
        st.html(
            f'<div class="sr-media"><audio controls preload="metadata" '
            f'src="{server.media_url(sha)}"></audio></div>'
            f'<div class="sr-strip"><img src="{server.media_url(sha, "waveform.png")}" alt="waveform"></div>'
            f'<div class="sr-strip"><img src="{server.media_url(sha, "spectrogram.png")}" '
            'alt="mel spectrogram"></div>'
        )
        st.caption(_media_caption(part, info) + " · waveform and mel spectrogram")
    elif kind == "video":
        strip = "sr-strip sr-shield" if shielded else "sr-strip"
        st.html(
            f'<div class="{box}"><video controls preload="metadata" '
            f'src="{server.media_url(sha)}"></video></div>'
            f'<div class="{strip}"><img src="{server.media_url(sha, "keyframes.jpg")}" alt="key frames"></div>'
        )
        st.caption(_media_caption(part, info) + " · key frames" + (" · blurred until you show it" if shielded else ""))


@st.dialog("Image", width="large")
def _zoom_dialog(sha: str, name: str) -> None:
    st.html(f'<div class="sr-full"><img src="{server.media_url(sha)}" alt="{ui.attr(name)}"></div>')
    st.html(
        f'<a href="{server.media_url(sha)}" target="_blank" rel="noopener noreferrer">'
        "Open the original in a new tab</a>"
    )


def has_visual_media(item: ItemView) -> bool:
    return any(isinstance(p, dict) and p.get("modality") in ("image", "video") for p in [*item.prompt, *item.response])


def render_item(item: ItemView, *, shielded: bool = False) -> None:
    """Prompt and response in two clearly separated bordered blocks (media blurred when ``shielded``).

    When the model's output is an image or video (generation and editing tasks) the two
    blocks sit side by side, so the output is on screen without scrolling.
    """
    visual_output = any(isinstance(p, dict) and p.get("modality") in ("image", "video") for p in item.response)
    if visual_output:
        left, right = st.columns(2, gap="small")
        with left:
            _prompt_block(item, shielded)
        with right:
            _response_block(item, shielded)
        return
    _prompt_block(item, shielded)
    _response_block(item, shielded)


def _prompt_block(item: ItemView, shielded: bool) -> None:
    with st.container(border=True):
        st.markdown("**Prompt** · " + ui.md_literal(item.input_modalities or "text"))
        if item.prompt:
            render_parts(item.prompt, item, where="prompt", shielded=shielded)
        else:
            st.caption("(empty prompt)")


def _response_block(item: ItemView, shielded: bool) -> None:
    with st.container(border=True):
        st.markdown("**Response**" + (f" · {ui.md_literal(item.output_modalities)}" if item.output_modalities else ""))
        if item.refused:
            st.info("The model refused to generate an output.", icon=":material/do_not_disturb_on:")
        if item.response:
            render_parts(item.response, item, where="response", shielded=shielded)
        elif not item.output_modalities:
            st.caption("(no model response: the prompt itself is judged)")
        elif not item.refused:
            st.caption("(the model produced nothing)")


# ---------------------------------------------------------------------------------------
# Judge verdicts
# ---------------------------------------------------------------------------------------


def verdict_dicts(verdicts: list[Any]) -> list[dict[str, Any]]:
    """Plain, session-independent copies of Verdict rows (kept in session state)."""
    return [
        {
            "dimension": v.dimension,
            "label": v.label,
            "status": v.status,
            "probability": v.probability,
            "probs": v.probs,
            "rationale": v.rationale,
            "judge_id": v.judge_id,
            "intent": v.intent,
        }
        for v in verdicts
    ]


def primary_judge(verdicts: list[dict[str, Any]]) -> str | None:
    """The judge with verdicts on the most dimensions (ties: first seen): the one to confirm."""
    counts: dict[str, int] = {}
    for v in verdicts:
        if v["label"] is not None:
            counts[v["judge_id"]] = counts.get(v["judge_id"], 0) + 1
    return max(counts, key=lambda j: counts[j]) if counts else None


def judge_labels(verdicts: list[dict[str, Any]], judge_id: str | None) -> dict[str, str]:
    return {v["dimension"]: v["label"] for v in verdicts if v["judge_id"] == judge_id and v["label"] is not None}


def render_verdicts(verdicts: list[dict[str, Any]], dims: list[str], *, mine: dict[str, str] | None = None) -> None:
    """Per dimension: label, probability when known, judge id and rationale (inert text)."""
    if not verdicts:
        st.caption("No judge verdict for this item.")
        return
    order = {d: i for i, d in enumerate(dims)}
    judges = sorted({v["judge_id"] for v in verdicts})
    has_p = any(v.get("probability") is not None for v in verdicts)
    note = " · P(label): the judge's own probability of the label it gave" if has_p else ""
    if len(judges) == 1:
        st.caption("judge " + ui.md_literal(judges[0], max_chars=80) + note)
    elif note:
        st.caption(note.removeprefix(" · "))
    for v in sorted(verdicts, key=lambda v: (order.get(v["dimension"], 99), v["judge_id"])):
        label = v["label"] if v["label"] is not None else f"({v['status']})"
        line = f"**{ui.md_literal(v['dimension'])}**: {ui.md_literal(label)}"
        if v.get("probability") is not None and v["label"] is not None:
            # the judge's own probability of the label it gave (from its log-probabilities)
            line += f" · P({ui.md_literal(label)})={v['probability']:.2f}"
        if mine is not None and v["dimension"] in mine and v["label"] is not None:
            same = mine[v["dimension"]] == v["label"]
            line += " · " + (":green[agrees with you]" if same else ":orange[differs from you]")
        if len(judges) > 1:
            line += " · judge " + ui.md_literal(v["judge_id"], max_chars=80)
        st.markdown(line)
        if v.get("rationale"):
            with st.container(key=f"why_{v['dimension']}_{abs(hash(v['judge_id'])) % 10**8}"):
                ui.safe_text(v["rationale"], max_chars=4000)
