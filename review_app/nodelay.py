"""Accepted connections with Nagle's algorithm off (``TCP_NODELAY``), so no press waits ~40 ms.

Streamlit 1.67 binds its listening socket itself (``starlette_server._bind_socket``) as
``socket.socket(family=...)``, whose ``proto`` is 0; asyncio turns ``TCP_NODELAY`` on for
accepted connections only when the socket's ``proto`` is ``IPPROTO_TCP``. So every
connection kept Nagle on, and a rerun's later small websocket frames waited for the
browser's delayed ACK: 43.9 ms per label press where the server spent 11 ms
(docs/review_app.md). :func:`install` wraps that function to hand uvicorn the same bound
socket re-created with ``proto=IPPROTO_TCP`` (same file descriptor, options, bind and
listen state), from which asyncio's own accept path sets ``TCP_NODELAY`` on every
connection. ``tests/test_app_nodelay.py`` fails if a Streamlit upgrade moves the seam.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from safereview.review_app.seams import SeamMissing, wrap

__all__ = ["SeamMissing", "install", "with_tcp_proto"]


def with_tcp_proto(sock: socket.socket) -> socket.socket:
    """The same listening socket, as a socket object whose ``proto`` is ``IPPROTO_TCP``."""
    if sock.proto == socket.IPPROTO_TCP or sock.type != socket.SOCK_STREAM:
        return sock
    family, kind, timeout = sock.family, sock.type, sock.gettimeout()
    fresh = socket.socket(family, kind, socket.IPPROTO_TCP, fileno=sock.detach())
    fresh.settimeout(timeout)  # non-blocking stays non-blocking
    fresh.set_inheritable(True)
    return fresh


def install() -> None:
    """Wrap Streamlit's socket binding (idempotent); :class:`SeamMissing` when it is gone."""
    try:
        from streamlit.web.server.starlette import starlette_server as ss
    except ImportError as exc:  # pragma: no cover - Streamlit without the Starlette server
        raise SeamMissing(f"streamlit.web.server.starlette.starlette_server: {exc}") from None

    def make(bind: Callable[..., socket.socket]) -> Callable[..., socket.socket]:
        def bind_with_tcp_proto(*args: Any, **kwargs: Any) -> socket.socket:
            return with_tcp_proto(bind(*args, **kwargs))

        return bind_with_tcp_proto

    wrap(ss, "_bind_socket", make, where="starlette_server._bind_socket")
