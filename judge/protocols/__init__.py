"""Judging protocols by name (``safereview judge --protocol``)."""

from __future__ import annotations

from safereview.judge.protocols.base import Draft, ItemView, JudgeContext
from safereview.judge.protocols.uni_judger import UniJudger
from safereview.judge.protocols.vlsu import VLSUJudge

PROTOCOLS = {"uni-judger": UniJudger, "vlsu": VLSUJudge}


def get_protocol(name: str) -> UniJudger | VLSUJudge:
    try:
        return PROTOCOLS[name]()
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None


__all__ = ["PROTOCOLS", "Draft", "ItemView", "JudgeContext", "get_protocol"]
