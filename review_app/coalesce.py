"""One event-loop wake-up per burst of a script run's messages, not one per element.

Streamlit 1.67 hands every message of a script run (each element's delta, each status
event) from the script thread to the server's event loop with its own
``loop.call_soon_threadsafe`` (``AppSession._call_soon_on_event_loop``). Each call writes
to the loop's wake-up socket, and each wake-up makes the two threads trade the GIL once: a
rerun of the review panel sends ~50 messages, and a profile of one annotator labelling
showed 17% of the server's busy time inside that write (``bench/bench_app.py``;
docs/review_app.md, "Speed").

:func:`install` wraps that method: callbacks of one session go into a FIFO queue, and only
the first of a burst schedules a drain on the loop; the drain runs everything queued by then
and whatever arrives while it runs, in order. Order within a session is what it was; a
callback that raises is reported through the loop's exception handler, as asyncio itself
would, and the rest still run. ``tests/test_app_coalesce.py`` checks the order, the
exception path, a closed loop and that a Streamlit upgrade that moves the seam fails.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from typing import Any

from safereview.review_app.seams import SeamMissing, wrap

__all__ = ["Coalescer", "SeamMissing", "install"]

_ATTR = "_safereview_coalescer"


class Coalescer:
    """Runs callbacks on ``loop`` in the order given, waking the loop once per burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self.wakeups = 0  # how many times the loop was woken (for tests and benchmarks)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Queue ``callback``; RuntimeError (as ``call_soon_threadsafe``) when the loop is closed."""
        with self._lock:
            self._queue.append(callback)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
            self.wakeups += 1
        except RuntimeError:
            with self._lock:
                self._scheduled = False
                self._queue.clear()
            raise

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._scheduled = False
                    return
                batch = list(self._queue)
                self._queue.clear()
            for callback in batch:
                try:
                    callback()
                except Exception as exc:  # as asyncio reports an exception in a callback
                    self.loop.call_exception_handler(
                        {"message": "Exception in a coalesced callback", "exception": exc, "callback": callback}
                    )


def install() -> None:
    """Wrap ``AppSession._call_soon_on_event_loop`` (idempotent); :class:`SeamMissing` when it is gone."""
    try:
        from streamlit.runtime.app_session import AppSession
    except ImportError as exc:  # pragma: no cover - a Streamlit without it
        raise SeamMissing(f"streamlit.runtime.app_session: {exc}") from None

    def make(_original: Callable[..., None]) -> Callable[..., None]:
        def call_soon_coalesced(self: Any, callback: Callable[[], None]) -> None:
            loop = getattr(self, "_event_loop", None)
            if loop is None:
                raise SeamMissing("streamlit's AppSession has no _event_loop")
            coalescer = self.__dict__.get(_ATTR)
            if coalescer is None:
                coalescer = self.__dict__.setdefault(_ATTR, Coalescer(loop))  # atomic under the GIL
            if coalescer.loop is not loop:
                raise SeamMissing("streamlit's AppSession changed its event loop")
            try:
                coalescer.call_soon(callback)
            except RuntimeError:
                if not loop.is_closed():
                    raise  # what Streamlit's own method does: drop only when the loop is closed

        return call_soon_coalesced

    wrap(AppSession, "_call_soon_on_event_loop", make, where="AppSession._call_soon_on_event_loop")
