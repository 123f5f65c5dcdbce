"""The review app's script messages reach the event loop in order, with one wake-up per burst."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from safereview.review_app import coalesce
from safereview.review_app.seams import is_wrapped


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    t = threading.Thread(target=lp.run_forever, daemon=True)
    t.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    t.join(5)
    lp.close()


def _settle(loop: asyncio.AbstractEventLoop) -> None:
    """Wait until everything queued on ``loop`` so far has run."""
    done = threading.Event()
    loop.call_soon_threadsafe(done.set)
    assert done.wait(5)


def test_callbacks_run_in_order_with_fewer_wakeups(loop: asyncio.AbstractEventLoop) -> None:
    c = coalesce.Coalescer(loop)
    seen: list[int] = []
    n = 20_000

    def produce() -> None:  # as a script thread sends a run's messages
        for i in range(n):
            c.call_soon(lambda i=i: seen.append(i))

    producers = [threading.Thread(target=produce)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    for _ in range(50):  # a drain may still be running
        _settle(loop)
        if len(seen) == n:
            break
    assert seen == list(range(n))
    assert 1 <= c.wakeups < n


def test_a_failing_callback_is_reported_and_the_rest_still_run(loop: asyncio.AbstractEventLoop) -> None:
    reported: list[dict] = []
    loop.set_exception_handler(lambda _lp, ctx: reported.append(ctx))
    c = coalesce.Coalescer(loop)
    seen: list[str] = []
    gate = threading.Event()
    loop.call_soon_threadsafe(gate.wait, 5)  # hold the loop so the three land in one drain
    c.call_soon(lambda: seen.append("a"))
    c.call_soon(lambda: 1 / 0)
    c.call_soon(lambda: seen.append("c"))
    gate.set()
    _settle(loop)
    _settle(loop)
    assert seen == ["a", "c"]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ZeroDivisionError)
    assert c.wakeups == 1


def test_a_closed_loop_raises_like_call_soon_threadsafe() -> None:
    lp = asyncio.new_event_loop()
    lp.close()
    c = coalesce.Coalescer(lp)
    with pytest.raises(RuntimeError):
        c.call_soon(lambda: None)
    with pytest.raises(RuntimeError):  # and again: the failed attempt left nothing scheduled
        c.call_soon(lambda: None)


def test_install_wraps_streamlits_seam_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.runtime.app_session import AppSession

    original = AppSession.__dict__["_call_soon_on_event_loop"]
    monkeypatch.setattr(AppSession, "_call_soon_on_event_loop", original)
    coalesce.install()
    wrapped = AppSession.__dict__["_call_soon_on_event_loop"]
    assert wrapped is not original and is_wrapped(wrapped)
    coalesce.install()  # idempotent
    assert AppSession.__dict__["_call_soon_on_event_loop"] is wrapped

    # the wrapped method on a stand-in session: same loop, one coalescer, a closed loop dropped
    class FakeSession:
        pass

    lp = asyncio.new_event_loop()
    try:
        sess = FakeSession()
        sess._event_loop = lp  # type: ignore[attr-defined]
        seen: list[int] = []
        wrapped(sess, lambda: seen.append(1))
        wrapped(sess, lambda: seen.append(2))
        lp.call_soon(lp.stop)
        lp.run_forever()
        assert seen == [1, 2]
    finally:
        lp.close()
    wrapped(sess, lambda: seen.append(3))  # the loop is closed: dropped, as Streamlit does
    assert seen == [1, 2]


def test_a_streamlit_without_the_seam_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.runtime.app_session import AppSession

    monkeypatch.delattr(AppSession, "_call_soon_on_event_loop")
    with pytest.raises(coalesce.SeamMissing):
        coalesce.install()
