"""Shared helpers for every page of the review app (the only place pages get state from).

Page pattern (``review_app/views/<name>.py``; see ``docs/review_app.md``)::

    from safereview.review_app import ui

    user = ui.require("view_agreement")      # server-side policy check first, stops otherwise
    with ui.session() as s:                  # one transaction; commit on success
        rows = agreement.some_function(s, ...)
    ui.safe_text(untrusted)                  # model/annotator text: inert widgets only

Rules: untrusted text (prompts, responses, rationales, file names, metadata from imports)
goes through :func:`safe_text` / :func:`safe_code` or, inside markdown-rendering places
(labels, options, captions), through :func:`md_literal`; never straight into st.markdown,
st.write, labels, help or captions.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import streamlit as st
from sqlalchemy.engine import Engine
from sqlmodel import Session

from safereview import settings
from safereview.review_app import runtime
from safereview.workflow import policies
from safereview.workflow.errors import WorkflowError

T = TypeVar("T")
USER_RECHECK_S = 5.0
COOKIE_WAIT_S = 5.0
TEXT_PREVIEW_CHARS = 20_000

WORD_JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?i)www\.|:(?=\S)|\S@")  # a joiner goes before the last character of each match
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|:~$=^&\"'])")


# ---------------------------------------------------------------------------------------
# Settings and database
# ---------------------------------------------------------------------------------------


def config() -> settings.Config:
    return runtime.config()


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> Engine:
    return runtime.engine_for_url(url)


def get_engine() -> Engine:
    """The process-wide engine (``st.cache_resource``) for the configured database."""
    return _engine(config().db_url)


@contextmanager
def session() -> Iterator[Session]:
    """One transaction on the app's engine: commit on success, roll back on error."""
    from safereview.db.engine import session_scope

    with session_scope(get_engine()) as s:
        yield s


@contextmanager
def read_session() -> Iterator[Session]:
    """A transaction that only reads (on SQLite it neither waits for nor blocks writers)."""
    from safereview.db.engine import read_only

    with Session(read_only(get_engine())) as s:
        yield s


def run(action: Callable[[], T], *, error_prefix: str = "") -> T | None:
    """Run a service call; show a :class:`WorkflowError`'s (user-safe) message instead of a trace."""
    try:
        return action()
    except WorkflowError as exc:
        st.error(f"{error_prefix}{md_literal(str(exc))}", icon=":material/error:")
        return None


@st.cache_data(ttl=15, show_spinner=False)
def _collections(db_url: str, include_archived: bool) -> list[Any]:
    from safereview.review_app import data

    with Session(get_engine()) as s:
        return data.collections(s, include_archived=include_archived)


def collections(*, include_archived: bool = False) -> list[Any]:
    """:class:`review_app.data.CollectionInfo` of every collection (cached 15 s)."""
    return _collections(config().db_url, include_archived)


def pick_collections(key: str) -> tuple[list[Any], list[str]] | None:
    """Multiselect of collections (the first preselected) and the union of their dimensions.

    Shared by the lead pages; returns None after telling the user when there is nothing to pick.
    """
    infos = collections()
    if not infos:
        st.info("No collections yet.")
        return None
    by_id = {c.id: c for c in infos}
    chosen = st.multiselect(
        "Collections", list(by_id), default=[infos[0].id], format_func=lambda i: plain(by_id[i].name), key=key
    )
    if not chosen:
        st.info("Choose at least one collection.")
        return None
    picked = [by_id[c] for c in chosen]
    dims: list[str] = []
    for info in picked:
        for d in info.dims:
            if d["name"] not in dims:
                dims.append(d["name"])
    return picked, dims


@st.cache_data(ttl=60, show_spinner=False)
def _facets(db_url: str, collection_id: int) -> dict[str, list[str]]:
    from safereview.review_app import data

    with Session(get_engine()) as s:
        return data.facets(s, collection_id)


def facets(collection_id: int) -> dict[str, list[str]]:
    return _facets(config().db_url, collection_id)


def clear_data_caches() -> None:
    """After an admin changes collections or imports data."""
    _collections.clear()
    _facets.clear()


# ---------------------------------------------------------------------------------------
# Who is signed in
# ---------------------------------------------------------------------------------------


def _lookup_token(token: str) -> Any | None:
    from safereview.workflow import auth

    with Session(get_engine(), expire_on_commit=False) as s:
        user = auth.user_for_token(s, token)
        if user is not None:
            s.expunge(user)
        return user


def current_user() -> Any | None:
    """The signed-in user, re-validated against the database every few seconds.

    Revoked sessions and disabled accounts therefore end within ``USER_RECHECK_S`` even in
    an open browser tab. A valid session cookie (set by ``/auth/session``) signs a fresh
    browser session in without a password, so a page reload keeps you signed in. A sign-in
    belongs to the browser that made it: a connection that resumes this Streamlit session
    from another browser (its session id is no secret: it is in every upload URL) is not
    signed in.
    """
    ss = st.session_state
    token = ss.get("auth_token")
    if token and not _same_browser(ss.get("auth_browser")):
        return None  # another browser holding this session id: not signed in here (state kept for the owner)
    if not token:
        cookie = _cookie_token()
        if cookie and cookie not in ss.get("auth_dead_tokens", ()) and _lookup_token(cookie) is not None:
            ss["auth_token"] = token = cookie
            ss["auth_cookie_ok"] = True
            ss["auth_browser"] = browser_id()
        else:
            return None
    now = time.monotonic()
    if ss.get("auth_user") is None or now - ss.get("auth_checked", 0.0) > USER_RECHECK_S:
        user = _lookup_token(token)
        if user is None:
            _forget_sign_in()
            return None
        ss["auth_user"], ss["auth_checked"] = user, now
    return ss["auth_user"]


def _cookie_token() -> str | None:
    return _cookie(runtime.SESSION_COOKIE)


def browser_id() -> str | None:
    """This browser's random id (the cookie set on its first page load), if it has one."""
    return _cookie(runtime.BROWSER_COOKIE)


def _cookie(name: str) -> str | None:
    try:
        value = st.context.cookies.get(name)
    except Exception:  # no browser context (e.g. AppTest without cookies)
        return None
    return value if isinstance(value, str) and value else None


def _same_browser(bound: str | None) -> bool:
    import hmac

    return hmac.compare_digest(bound or "", browser_id() or "")


def _forget_sign_in() -> None:
    ss = st.session_state
    dead = set(ss.get("auth_dead_tokens", ()))
    if ss.get("auth_token"):
        dead.add(ss["auth_token"])
    keep = {"auth_dead_tokens": dead}
    for key in list(ss.keys()):
        del ss[key]
    for k, v in keep.items():
        ss[k] = v


def client_address() -> str:
    """The address the sign-in limits count this browser under (see ``server.client_address``)."""
    from safereview.review_app import server

    try:
        remote, forwarded = st.context.ip_address, st.context.headers.get("X-Forwarded-For", "")
    except Exception:  # no browser context (AppTest)
        remote, forwarded = None, ""
    remote = remote if isinstance(remote, str) else None  # AppTest's context is a stand-in
    forwarded = forwarded if isinstance(forwarded, str) else ""
    return server.client_address(remote, forwarded, config().trusted_proxies)


def sign_in(user: Any, token: str) -> None:
    """Remember a fresh sign-in and issue the one-time ticket that sets the media cookie."""
    ss = st.session_state
    ss["auth_token"], ss["auth_user"], ss["auth_checked"] = token, user, time.monotonic()
    ss["auth_browser"] = browser = browser_id()
    ss["auth_ticket"] = runtime.tickets.issue(token, browser)
    ss["auth_cookie_ok"] = False


def sign_out() -> None:
    from safereview.review_app import server
    from safereview.workflow import auth

    token = st.session_state.get("auth_token")
    if token:
        with session() as s:
            auth.end_session(s, token)
        server.forget_token(token)
    _forget_sign_in()
    st.session_state["auth_signed_out"] = True


def require(action: str) -> Any:
    """The current user if the policy allows ``action``; otherwise explain and stop the page."""
    user = current_user()
    if user is None:
        st.warning("Please sign in.")
        st.stop()
    if not policies.can(user, action):
        st.error("Your role does not allow this page.", icon=":material/block:")
        st.stop()
    return user


def media_ready() -> bool:
    """True once the browser holds the media cookie (media URLs would 401 before that)."""
    ss = st.session_state
    if ss.get("auth_cookie_ok"):
        return True
    ticket = ss.get("auth_ticket")
    if ticket and runtime.tickets.redeemed(ticket):
        ss["auth_cookie_ok"] = True
        return True
    return False


def cookie_bridge() -> None:
    """Render the invisible image that swaps the sign-in ticket for the HttpOnly cookie."""
    from safereview.review_app import server

    ss = st.session_state
    if ss.pop("auth_signed_out", False):
        st.html(
            f'<img src="{server.auth_url("signout")}" alt="" width="1" height="1" style="position:absolute;opacity:0">'
        )
    ticket = ss.get("auth_ticket")
    if ticket and not media_ready():
        st.html(
            f'<img src="{server.auth_url("session", ticket=ticket)}" alt="" width="1" height="1" '
            'style="position:absolute;opacity:0">'
        )


def wait_for_cookie(timeout_s: float = COOKIE_WAIT_S) -> bool:
    """Right after sign-in, hold this script run until the browser has fetched the ticket image.

    :func:`cookie_bridge` has already sent the ``<img>`` (Streamlit streams elements while
    the script runs), so the browser requests ``/auth/session`` in parallel; polling here for
    a few milliseconds means no media request of this run can race the cookie, without an
    extra rerun. Returns whether the cookie is in place (False after ``timeout_s``; media
    then show as broken images until the next run, nothing worse).
    """
    if media_ready():
        return True
    if not st.session_state.get("auth_ticket"):
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.01)
        if media_ready():
            return True
    st.session_state["auth_cookie_ok"] = True  # stop waiting on later runs
    return False


# ---------------------------------------------------------------------------------------
# Safe rendering of untrusted text
# ---------------------------------------------------------------------------------------


def sentence(text: str) -> str:
    """A service's message as a sentence on a page: first letter capitalised (the services
    write them lower-case, for the CLI's ``note: …`` lines)."""
    return text[:1].upper() + text[1:]


def md_literal(text: Any, *, max_chars: int = 300) -> str:
    """Text made literal for places that parse markdown (labels, options, captions).

    Every ASCII punctuation character is backslash-escaped (CommonMark escapes), so links,
    images, emphasis, HTML, Streamlit's ``:color[...]``/``:icon:`` directives and LaTeX all
    show as typed; newlines become spaces and the result is capped.
    """
    s = str(text if text is not None else "")
    s = " ".join(s.split())
    if len(s) > max_chars:
        s = s[: max_chars - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", no_autolink(s))


def no_autolink(s: str) -> str:
    """Break the patterns GitHub-flavoured markdown turns into links even when every
    punctuation character is escaped (``www.``, ``scheme:``, ``name@host``), with an
    invisible word joiner (U+2060), so a model name or an id can never be a link off-site."""
    return _AUTOLINK.sub(lambda m: m.group(0)[:-1] + WORD_JOINER + m.group(0)[-1], s)


def plain(text: Any, *, max_chars: int = 120) -> str:
    """Display text for selectbox/multiselect options, which Streamlit shows as plain text.

    (Escaping with :func:`md_literal` there would show the backslashes.) Whitespace is
    collapsed and the length capped so a hostile value cannot flood the widget.
    """
    s = " ".join(str(text if text is not None else "").split())
    return s if len(s) <= max_chars else s[: max_chars - 1] + "…"


def safe_text(text: Any, *, max_chars: int = TEXT_PREVIEW_CHARS, key: str | None = None) -> None:
    """Untrusted prose, shown as-is with ``st.text`` (inert: no markdown, no HTML)."""
    s = str(text if text is not None else "")
    if len(s) > max_chars:
        st.text(s[:max_chars])
        st.caption(f"… {len(s) - max_chars:,} more characters not shown")
    else:
        st.text(s)


def safe_code(text: Any, *, max_chars: int = TEXT_PREVIEW_CHARS) -> None:
    """Untrusted text in a bordered, wrapping box (``st.code`` without a language: inert)."""
    s = str(text if text is not None else "")
    if len(s) > max_chars:
        st.code(s[:max_chars], language=None, wrap_lines=True)
        st.caption(f"… {len(s) - max_chars:,} more characters not shown")
    else:
        st.code(s, language=None, wrap_lines=True)


def attr(text: Any) -> str:
    """Escape for an HTML attribute in the app's own st.html snippets."""
    return html.escape(str(text), quote=True)


# ---------------------------------------------------------------------------------------
# Look and feel
# ---------------------------------------------------------------------------------------

_CSS = """
<style>
/* calm, compact review layout */
.block-container {padding-top: 2.2rem; padding-bottom: 2rem; max-width: 1400px;}
[data-testid="stText"] {font-size: 0.98rem; line-height: 1.5;}
.sr-kbd {display:inline-block; padding:0 .38em; margin:0 .1em; border:1px solid #c9cbd3;
  border-bottom-width:2px; border-radius:4px; font: 0.78rem ui-monospace, monospace; color:#31333f;
  background:#f7f7f9;}
.sr-media img {width:100%; max-width:520px; max-height:520px; object-fit:contain; object-position:left;
  border-radius:6px; border:1px solid #e3e4ea; background:#fafafa;}
.sr-media audio, .sr-media video {width:100%; max-height:420px;}
.sr-shield {overflow:hidden; border-radius:6px;}
.sr-shield img, .sr-shield video {filter: blur(28px) grayscale(1); pointer-events: none;}
.sr-strip img {width:100%; border-radius:4px; border:1px solid #e3e4ea;}
.sr-full img {display:block; width:100%; height:auto; max-height:78vh; object-fit:contain;}
/* label buttons: the judge's mark and the key hint must not cut the label ("borderlin…") */
[class*="st-key-rv_lab_"] button {padding-left:.35rem; padding-right:.35rem;}
[class*="st-key-rv_lab_"] button div, [class*="st-key-rv_lab_"] button p {overflow:visible; text-overflow:clip;}
.sr-muted {color:#6b6f7b; font-size:.85rem;}
.st-key-sr_keys {display:none;}
</style>
"""


@st.cache_resource(show_spinner=False)
def favicon() -> Any:
    """A locally drawn icon: emoji and material page icons would be fetched from a CDN."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([4, 4, 60, 60], radius=12, fill=(255, 75, 75))
    d.line([(18, 33), (28, 44), (47, 21)], fill=(255, 255, 255), width=7)
    return img


def page_style() -> None:
    st.html(_CSS)


def requested_path() -> str:
    """The path of the URL the browser asked for, without the app's base path ("" when unknown)."""
    from urllib.parse import urlparse

    try:
        path = urlparse(st.context.url or "").path
    except Exception:  # no browser context (bare runs, tests)
        return ""
    prefix = config().url_prefix
    return path[len(prefix) :] if prefix and path.startswith(prefix) else path


# Slice tables are wide: the slice and its value stay pinned and whole while the figures scroll.
SLICE_COLUMNS = {
    "slice": st.column_config.TextColumn("slice", pinned=True, width="small"),
    "value": st.column_config.TextColumn("value", pinned=True, width="medium"),
}


def keyboard_glue() -> None:
    """Load the workbench's keyboard script (review_app.keyboard) from our own route; the element is hidden."""
    from safereview.review_app import server

    with st.container(key="sr_keys"):
        st.html(f'<script src="{html.escape(server.keyboard_url())}"></script>', unsafe_allow_javascript=True)


def kbd(keys: str) -> str:
    """HTML for a keyboard hint (our own constant strings only)."""
    return "+".join(f'<span class="sr-kbd">{html.escape(k)}</span>' for k in keys.split("+"))
