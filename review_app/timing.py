"""Opt-in timing records for the benchmark (``bench/bench_app.py``).

When ``SAFEREVIEW_BENCH_TIMINGS`` names a file, the review page appends one line per
submit: the server-side time from the submit callback to the end of the fragment run that
rendered the next item. Unset (always, outside the benchmark), this costs one dict lookup.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()


def enabled() -> bool:
    return bool(os.environ.get("SAFEREVIEW_BENCH_TIMINGS"))


_fds: dict[str, int] = {}  # one append-only descriptor per file, kept open: no open/close per record


def record(name: str, ms: float) -> None:
    path = os.environ.get("SAFEREVIEW_BENCH_TIMINGS")
    if not path:
        return
    with _lock:
        fd = _fds.get(path)
        if fd is not None and not _still_names(path, fd):  # the benchmark removed it after its warm-up
            os.close(fd)
            fd = None
        if fd is None:
            fd = _fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, f"{name}\t{ms:.3f}\n".encode())  # one write per line: whole lines, in order


def _still_names(path: str, fd: int) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False
