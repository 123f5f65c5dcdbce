"""Wrapping a private Streamlit function once, loudly failing when an upgrade moves it.

The app changes two of Streamlit's internals (:mod:`.nodelay`, :mod:`.coalesce`). Both go
through :func:`wrap`: the attribute must exist and be callable (else :class:`SeamMissing`,
so the server refuses to start and the app tests fail rather than silently losing the fix),
and wrapping twice is a no-op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_MARK = "_safereview_wrapped"


class SeamMissing(RuntimeError):
    """Streamlit no longer has the function safereview wraps (its name says which)."""


def wrap(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]], *, where: str) -> None:
    """Replace ``owner.name`` by ``make(original)``, once. ``where`` names it in the error."""
    original = getattr(owner, name, None)
    if original is None or not callable(original):
        raise SeamMissing(f"streamlit's {where} is gone")
    if getattr(original, _MARK, False):
        return
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, _MARK, True)
    setattr(owner, name, wrapper)


def is_wrapped(fn: Any) -> bool:
    """True for a function :func:`wrap` put in place."""
    return bool(getattr(fn, _MARK, False))
