"""Import, before the server starts, every module a page run would otherwise import lazily.

Used by ``asgi.py`` ahead of ``gc.freeze()`` so the frozen heap covers them, and so the
first visitor does not pay the import time.
"""

from __future__ import annotations

import importlib

MODULES: tuple[str, ...] = (
    "sqlalchemy",
    "sqlmodel",
    "safereview.db.models",
    "safereview.db.engine",
    "safereview.db.collections",
    "safereview.workflow.auth",
    "safereview.workflow.policies",
    "safereview.workflow.queue",
    "safereview.workflow.annotations",
    "safereview.review_app.nav",
    "safereview.review_app.data",
    "safereview.review_app.media_derive",
    "pandas",
    "pyarrow",
    "altair",
    "streamlit.runtime.scriptrunner",
    "streamlit.elements.arrow",
    "streamlit.elements.vega_charts",
)


def import_all() -> list[str]:
    """Import what is available; returns the modules that could not be imported."""
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing
