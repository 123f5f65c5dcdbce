"""Structured answers (``safereview judge --structured``): the verdict as constrained JSON.

Small or quantised judge models often drift from ``Reason: …; Result: <digit>``. Servers
that can constrain decoding to a JSON schema (vLLM, llama.cpp, Ollama) make every answer
well formed. Two request shapes exist: OpenAI's ``{"type": "json_schema", "json_schema":
{"name", "schema", "strict"}}`` (vLLM, OpenAI, Ollama) and llama-cpp-python's
``{"type": "json_object", "schema": …}`` (it answers the first with HTTP 500). The client
tries them in that order and keeps the first the server takes (see
``ChatClient.structured_mode``); a server that takes neither is asked without one and the
answer is parsed as usual.

The answer is parsed leniently where leniency cannot change the label: code fences and
text around the object are ignored (unless it carries a ``Result:`` that disagrees), and raw
newlines inside strings (llama.cpp emits them) are accepted. The result itself must be one
valid digit, given once, as in ``parsing.parse_answer``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from safereview.judge.parsing import _RESULT_RE, MAX_RATIONALE_CHARS, Parsed, answer_start, parse_answer

MODES = ("json_schema", "json_object", "off")  # tried in this order; "off": no response_format
INSTRUCTION = 'Answer with a JSON object only: {"reason": "<at most 100 words>", "result": <digit>}.'
_RESULT_VALUE = re.compile(r'"result"\s*:\s*"?\s*(\d)')


def schema(digits: Iterable[int]) -> dict[str, Any]:
    """The verdict's JSON schema: a short reason, then one of the valid digits."""
    return {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "maxLength": 1000},
            "result": {"type": "integer", "enum": sorted(set(digits))},
        },
        "required": ["reason", "result"],
        "additionalProperties": False,
    }


def response_format(mode: str, digits: Iterable[int]) -> dict[str, Any] | None:
    """The request's ``response_format`` in one of :data:`MODES` (None for ``off``)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema(digits), "strict": True}}
    if mode == "json_object":
        return {"type": "json_object", "schema": schema(digits)}
    return None


def with_instruction(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with the JSON answer instruction appended to the last user message."""
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            m["content"] = f"{content}\n\n{INSTRUCTION}"
        elif isinstance(content, list):
            m["content"] = [*content, {"type": "text", "text": INSTRUCTION}]
        break
    return out


def parse_json_answer(text: Any, valid: Iterable[int]) -> Parsed | None:
    """Parse ``{"reason": …, "result": <digit>}``; None when the answer is not such an object.

    The digit's offset points into ``text`` itself, so log-probabilities still line up."""
    if not isinstance(text, str):
        return None
    start = answer_start(text)
    first, last = text.find("{", start), text.rfind("}")
    if first < 0 or last <= first:
        return None
    try:  # strict=False: raw newlines in strings
        doc = json.loads(text[first : last + 1], strict=False, object_pairs_hook=_no_repeated_result)
    except _RepeatedResult:
        return Parsed(False, None, None, "", "the answer gives 'result' twice")
    except ValueError:
        return None
    if not isinstance(doc, dict) or "result" not in doc:
        return None
    reason = doc.get("reason")
    reason = reason.strip()[:MAX_RATIONALE_CHARS] if isinstance(reason, str) else ""
    value = doc["result"]
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        return Parsed(False, None, None, reason, f"result {value!r} is not a digit")
    valid_set = set(valid)
    if value not in valid_set:
        return Parsed(False, None, None, reason, f"result {value} is not one of {sorted(valid_set)}")
    outside = text[start:first] + "\n" + text[last + 1 :]
    if _RESULT_RE.search(outside):  # a "Result: d" beside the object must not say otherwise
        other = parse_answer(outside, valid_set)
        if not other.ok or other.digit != value:
            return Parsed(False, None, None, reason, f"the text around the JSON answer disagrees: {other.problem}")
    m = _RESULT_VALUE.search(text, first, last + 1)
    offset = m.start(1) if m is not None and int(m.group(1)) == value else None
    return Parsed(True, value, offset, reason)


class _RepeatedResult(ValueError):
    pass


def _no_repeated_result(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` keeps the last of repeated keys; two results are no answer."""
    keys = [k for k, _ in pairs]
    if keys.count("result") > 1:
        raise _RepeatedResult
    return dict(pairs)
