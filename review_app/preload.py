"""Import, before the server starts, every module a page run would otherwise import lazily.

Used by ``asgi.py`` ahead of ``gc.freeze()`` so the frozen heap covers them, and so the
first visitor does not pay the import time.
"""

from __future__ import annotations

import importlib

MODULES: tuple[str, ...] = (
    "sqlalchemy", "sqlmodel", "db.models", "db.engine", "db.collections",
    "workflow.auth", "workflow.policies", "workflow.queue", "workflow.annotations",
    "review_app.nav", "review_app.data", "review_app.media_derive",
    "pandas", "pyarrow", "altair",
    "streamlit.runtime.scriptrunner", "streamlit.elements.arrow", "streamlit.elements.vega_charts",
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
