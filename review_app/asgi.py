"""ASGI entry point: ``streamlit run review_app/asgi.py`` (what ``safereview serve`` runs).

Streamlit discovers the ``app = st.App(...)`` assignment below and serves it with its own
uvicorn runner, adding our routes (authenticated media, sign-in cookie, health) and the
security-header middleware in front of its own. When the database holds audio, a background
thread draws one synthetic spectrogram meanwhile, so librosa's JIT compilation happens
before the first reviewer (elsewhere it would cost about 200 MB for nothing).

With ``SAFEREVIEW_APP_GC_FREEZE=1`` (``safereview serve --gc freeze``) the modules every
page needs are imported here and the heap is frozen (``gc.freeze()``): Streamlit's full
collection after each script run then skips those long-lived objects. The default
(``--gc off``) turns that post-run collection off instead; docs/review_app.md has the
measurements behind the choice.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import signal
import threading
from pathlib import Path

import streamlit as st

from safereview.review_app import media_derive, server

faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>` prints every thread's stack

if os.environ.get("SAFEREVIEW_APP_GC_FREEZE") == "1":
    from safereview.review_app import preload

    preload.import_all()
    gc.collect()
    gc.freeze()


def _warm_media() -> None:
    """Only where reviewers will hear audio: librosa and its JIT cost about 200 MB of memory."""
    with contextlib.suppress(Exception):  # an optimisation: the first real spectrogram reports any problem
        if server.has_audio():
            media_derive.warm_up()


# compile the audio analysis in the background while the server starts (no reviewer waits on it)
threading.Thread(target=_warm_media, name="warm-media", daemon=True).start()

app = st.App(
    str(Path(__file__).resolve().parent / "main.py"),
    routes=server.routes(),
    middleware=server.middleware(),
)
