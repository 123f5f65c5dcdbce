"""ASGI entry point: ``streamlit run review_app/asgi.py`` (what ``safereview serve`` runs).

Streamlit discovers the ``app = st.App(...)`` assignment below and serves it with its own
uvicorn runner, adding our routes (authenticated media, sign-in cookie, health) and the
security-header middleware in front of its own.

With ``SAFEREVIEW_APP_GC_FREEZE=1`` (``safereview serve --gc freeze``) the modules every
page needs are imported here and the heap is frozen (``gc.freeze()``): Streamlit's full
collection after each script run then skips those long-lived objects. The default
(``--gc off``) turns that post-run collection off instead; docs/review_app.md has the
measurements behind the choice.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import signal
from pathlib import Path

import streamlit as st

from safereview.review_app import server

faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>` prints every thread's stack

if os.environ.get("SAFEREVIEW_APP_GC_FREEZE") == "1":
    from safereview.review_app import preload

    preload.import_all()
    gc.collect()
    gc.freeze()

app = st.App(
    str(Path(__file__).resolve().parent / "main.py"),
    routes=server.routes(),
    middleware=server.middleware(),
)
