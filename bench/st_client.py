"""A small Streamlit websocket client for the end-to-end benchmark (``bench/bench_app.py``).

It speaks the protocol the Streamlit frontend speaks: ``BackMsg`` protobufs up the
``/_stcore/stream`` websocket, ``ForwardMsg`` protobufs down. A script run is requested with
``rerun_script`` (the widget states, the page, and the fragment to rerun, if any) and is over
when the server sends ``script_finished``. Widgets are found by their user key, which
Streamlit appends to every widget id (``$$ID-<hash>-<key>``).

Why not a browser? Twenty chromium pages on this two-core machine spend more CPU rendering
than the server spends answering, so a browser-driven figure measures chromium. The issue
allows the websocket; this client adds only protobuf parsing to the measurement. It also
fetches what the browser would fetch because of a script run: the sign-in ticket image that
sets the media cookie (the app waits for it).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

TICKET_RE = re.compile(r'src="(/[^"]*auth/session\?ticket=[^"]+)"')
ITEM_RE = re.compile(r"· item (\S+)")
TEXT_FIELDS = ("body", "code_text", "label", "text")  # where an element keeps what it shows


@dataclass
class Widget:
    """What the client knows of one widget from the last run that drew it."""

    id: str
    kind: str
    fragment_id: str  # the fragment to rerun when the widget is pressed ("" for the whole script)


@dataclass
class RunResult:
    """What one script run sent back."""

    seconds: float
    status: str
    exceptions: list[str] = field(default_factory=list)
    elements: list[tuple[str, str]] = field(default_factory=list)  # (element kind, its text) in order

    @property
    def texts(self) -> list[str]:
        return [text for _kind, text in self.elements if text]


def _widget_key(widget_id: str) -> str | None:
    parts = widget_id.split("-", 2)
    return parts[2] if len(parts) == 3 and parts[2] != "None" else None


class StreamlitClient:
    """One browser tab's worth of session: connect, run the script, press widgets."""

    def __init__(
        self, base: str, *, quickack: bool = False, local_address: str = "", headers: dict[str, str] | None = None
    ) -> None:
        self.base = base.rstrip("/")  # may carry a path (server.baseUrlPath)
        # Connect from this address (e.g. 127.0.0.7): annotators behind a proxy, each from a machine of
        # their own as the proxy's X-Forwarded-For tells the app.
        self.local_address = local_address
        self.headers = dict(headers or {})  # extra headers of the websocket handshake (tests)
        # Re-arm TCP_QUICKACK after every frame received, so this client never delays its ACKs:
        # the reference for "no stall" (a server whose small frames wait for the client's delayed
        # ACK is as fast as this only with Nagle off). Linux only.
        self.quickack = quickack
        self.ticket_origin = ""  # fetch the sign-in ticket image from another replica (tests)
        parts = urlsplit(self.base)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        transport = httpx.AsyncHTTPTransport(local_address=local_address) if local_address else None
        self.http = httpx.AsyncClient(timeout=30, transport=transport)
        self.ws: Any = None
        self.widgets: dict[str, Widget] = {}
        self.page_script_hash = ""
        self.item: str | None = None
        self.session_id = ""  # Streamlit's id of this connection's session (in every upload URL)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def connect(self, resume_session: str = "") -> None:
        """Load the index page, then open the websocket with the cookies it set, as a browser
        does (``resume_session``: the session id a reconnecting browser sends)."""
        await self.http.get(self.base + "/")
        parts = urlsplit(self.base)
        cookies = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        self.ws = await websockets.connect(
            f"ws://{parts.netloc}{parts.path}/_stcore/stream",
            subprotocols=["streamlit", "no-xsrf", resume_session] if resume_session else ["streamlit"],  # type: ignore[list-item]
            origin=self.origin,  # as a browser sends it: scheme and host, no path
            additional_headers={**self.headers, **({"Cookie": cookies} if cookies else {})} or None,
            max_size=2**26,
            compression=None,
            ping_interval=None,
            **({"local_addr": (self.local_address, 0)} if self.local_address else {}),
        )

    def _quickack(self) -> None:
        import socket

        sock = self.ws.transport.get_extra_info("socket") if self.ws is not None else None
        if sock is not None and hasattr(socket, "TCP_QUICKACK"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        for task in list(self._tasks):
            await task
        await self.http.aclose()

    # -----------------------------------------------------------------------------------
    # Runs
    # -----------------------------------------------------------------------------------

    async def rerun(self, states: list[Any] | None = None, fragment_id: str = "", timeout: float = 120.0) -> RunResult:
        """Request a script run and read the stream until the run (and any rerun it asked for) ends."""
        msg = BackMsg()
        cs = msg.rerun_script
        cs.page_script_hash = self.page_script_hash
        if fragment_id:
            cs.fragment_id = fragment_id
        for s in states or []:
            cs.widget_states.widgets.append(s)
        started = time.perf_counter()
        await self.ws.send(msg.SerializeToString())
        result = RunResult(seconds=0.0, status="")
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout=timeout)
            if self.quickack:
                self._quickack()
            fm = ForwardMsg()
            fm.ParseFromString(raw)
            kind = fm.WhichOneof("type")
            if kind == "delta":
                self._on_delta(fm, result)
            elif kind == "new_session":
                self.page_script_hash = fm.new_session.page_script_hash or self.page_script_hash
                self.session_id = fm.new_session.initialize.session_id or self.session_id
            elif kind == "navigation":
                self.page_script_hash = fm.navigation.page_script_hash or self.page_script_hash
            elif kind == "page_info_changed" or kind == "session_event":
                continue
            elif kind == "script_finished":
                status = ForwardMsg.ScriptFinishedStatus.Name(fm.script_finished)
                if status == "FINISHED_EARLY_FOR_RERUN":  # st.rerun(): the next run follows at once
                    continue
                result.seconds = time.perf_counter() - started
                result.status = status
                return result

    def _on_delta(self, fm: Any, result: RunResult) -> None:
        delta = fm.delta
        if delta.WhichOneof("type") != "new_element":
            return
        el = delta.new_element
        kind = el.WhichOneof("type")
        if kind is None:
            return
        body = getattr(el, kind)
        text = next((getattr(body, f) for f in TEXT_FIELDS if hasattr(body, f)), "")
        result.elements.append((kind, text if isinstance(text, str) else ""))
        if kind == "markdown" and (m := ITEM_RE.search(body.body)):
            self.item = m.group(1).replace("\\", "")  # md_literal escapes punctuation
        elif kind == "html" and (m := TICKET_RE.search(body.body)):
            # the browser loads this image in parallel with the run (the app waits for it); so do we
            origin = self.ticket_origin or self.origin
            task = asyncio.create_task(self.http.get(origin + m.group(1).replace("&amp;", "&")))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "exception":
            result.exceptions.append(f"{body.type}: {body.message}")
        widget_id = getattr(body, "id", "")
        key = _widget_key(widget_id) if isinstance(widget_id, str) and widget_id.startswith("$$ID") else None
        if kind == "button" and body.is_form_submitter:
            key = f"submit:{body.form_id}"  # a form's submit button needs no user key
        if key is not None:
            self.widgets[key] = Widget(id=widget_id, kind=kind, fragment_id=delta.fragment_id)

    # -----------------------------------------------------------------------------------
    # Widgets
    # -----------------------------------------------------------------------------------

    def state(self, key: str, **value: Any) -> Any:
        """A widget state for the widget with user key ``key``, e.g. ``state("x", string_value="a")``."""
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        ws = WidgetState(id=self.widgets[key].id)
        for name, v in value.items():
            setattr(ws, name, v)
        return ws

    async def click(self, key: str, extra: list[Any] | None = None) -> RunResult:
        """Press a button (in its fragment, as the frontend does when the button is inside one)."""
        w = self.widgets[key]
        return await self.rerun([*(extra or []), self.state(key, trigger_value=True)], fragment_id=w.fragment_id)

    def has(self, key: str) -> bool:
        return key in self.widgets
