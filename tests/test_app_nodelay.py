"""Every connection the app accepts has Nagle's algorithm off (review_app/nodelay.py).

Without it each rerun's later websocket frames waited for the client's delayed ACK
(~40 ms per label press). Two checks, so that a Streamlit upgrade that moves the seam
fails here instead of silently bringing the stall back:

- in process: Streamlit's own socket-binding function, once wrapped, gives uvicorn a
  socket from which asyncio's accept path sets TCP_NODELAY (and the unwrapped one does not:
  the check can fail);
- on the real server: the websocket connection a client opened is read back from the
  server process (``pidfd_getfd``, Linux 5.6+, needs ptrace rights: root in CI) and its
  TCP_NODELAY must be on.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import sys
from pathlib import Path

import app_support as A
import pytest

SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (added after the syscall table unification)


async def _accepted_nodelay(sock: socket.socket) -> int:
    """Serve ``sock`` with asyncio, connect once, and read TCP_NODELAY of the accepted connection."""
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = writer.get_extra_info("socket")
        seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(handle, sock=sock)
    port = sock.getsockname()[1]
    _r, w = await asyncio.open_connection("127.0.0.1", port)
    value = await asyncio.wait_for(seen, 10)
    w.close()
    server.close()
    await server.wait_closed()
    return value


def test_streamlits_bound_socket_gives_nodelay_connections_once_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.web.server.starlette import starlette_server as ss

    from safereview.review_app import nodelay
    from safereview.review_app.seams import is_wrapped

    original = ss._bind_socket
    plain, _ = ss._bind_server_socket("127.0.0.1", "127.0.0.1", 0, 16)
    assert plain.proto != socket.IPPROTO_TCP, "Streamlit now binds with proto=TCP itself: nodelay.py can go"
    assert asyncio.run(_accepted_nodelay(plain)) == 0  # the stall this module removes
    monkeypatch.setattr(ss, "_bind_socket", original)  # restored after the test
    nodelay.install()
    once = ss._bind_socket
    assert once is not original and is_wrapped(once)
    nodelay.install()  # idempotent: not wrapped twice
    assert ss._bind_socket is once
    wrapped, _ = ss._bind_server_socket("127.0.0.1", "127.0.0.1", 0, 16)  # the function the runner calls
    assert wrapped.proto == socket.IPPROTO_TCP and not wrapped.getblocking()
    assert asyncio.run(_accepted_nodelay(wrapped)) == 1


def _peer_socket_options(pid: int, port: int) -> list[int]:
    """TCP_NODELAY of every established connection on ``port`` in process ``pid``."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    values = []
    try:
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if not os.readlink(entry).startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(entry.name), 0)
            if fd < 0:
                err = ctypes.get_errno()
                pytest.skip(f"pidfd_getfd not permitted here (errno {err}): needs ptrace rights, as root in CI")
            s = socket.socket(fileno=fd)
            try:
                if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM:
                    try:
                        s.getpeername()
                    except OSError:
                        continue  # the listening socket
                    if s.getsockname()[1] == port:
                        values.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            finally:
                s.close()
    finally:
        os.close(pidfd)
    return values


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's sockets through /proc and pidfd")
def test_the_running_app_accepts_websockets_with_nodelay(sqlite_url: str, tmp_path: Path) -> None:
    sys.path.insert(0, str(A.REPO / "bench"))
    from st_client import StreamlitClient

    fx = A.build_fixture(sqlite_url, tmp_path / "media", n_plain=1)
    with A.Server(fx) as server:

        async def go() -> list[int]:
            c = StreamlitClient(server.base)
            await c.connect()
            try:
                await c.rerun()
                return _peer_socket_options(server.proc.pid, server.port)
            finally:
                await c.close()

        values = asyncio.run(go())
    assert values, "no connection found in the server process"
    assert all(v == 1 for v in values), values
