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


def record(name: str, ms: float) -> None:
    path = os.environ.get("SAFEREVIEW_BENCH_TIMINGS")
    if not path:
        return
    with _lock, open(path, "a", encoding="utf-8") as f:
        f.write(f"{name}\t{ms:.3f}\n")
