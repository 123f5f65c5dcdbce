"""Judging protocols by name (``safereview judge --protocol``)."""

from __future__ import annotations

from pathlib import Path

from safereview.judge.protocols.base import Draft, ItemView, JudgeContext
from safereview.judge.protocols.template import TemplateError, TemplateProtocol, load_template
from safereview.judge.protocols.uni_judger import UniJudger
from safereview.judge.protocols.vlsu import VLSUJudge

PROTOCOLS = {"uni-judger": UniJudger, "vlsu": VLSUJudge}
TEMPLATE = "template"  # prompts from a file: ``get_protocol("template", protocol_file=...)``


def get_protocol(name: str, protocol_file: str | Path | None = None) -> UniJudger | VLSUJudge | TemplateProtocol:
    """A protocol by name; ``template`` reads its prompts from ``protocol_file`` (a judge template).

    Raises ValueError (a :class:`TemplateError` for a bad template) naming what is wrong.
    """
    if name == TEMPLATE:
        if protocol_file is None:
            raise ValueError("protocol 'template' needs a judge template file (--protocol-file FILE)")
        return load_template(protocol_file)
    if protocol_file is not None:
        raise ValueError(f"a protocol file (--protocol-file) is only read by protocol 'template', not {name!r}")
    try:
        return PROTOCOLS[name]()
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join([*PROTOCOLS, TEMPLATE])}") from None


__all__ = [
    "PROTOCOLS",
    "TEMPLATE",
    "Draft",
    "ItemView",
    "JudgeContext",
    "TemplateError",
    "TemplateProtocol",
    "get_protocol",
    "load_template",
]
