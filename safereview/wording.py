"""Counts in messages: "1 verdict", "3 verdicts", never "3 verdict(s)"."""

from __future__ import annotations


def noun(n: int, word: str, plural: str | None = None) -> str:
    """``word`` in the number ``n`` needs (``plural`` for irregular ones)."""
    return word if n == 1 else plural or word + "s"


def count(n: int, word: str, plural: str | None = None) -> str:
    """``n`` and the noun in the number it needs: ``count(3, "verdict")`` is "3 verdicts"."""
    return f"{n:,} {noun(n, word, plural)}"
