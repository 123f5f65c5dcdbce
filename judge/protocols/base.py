"""What every judging protocol shares: the item view, the call function and verdict drafts.

A protocol turns one item into one or more chat requests and their answers into verdict
drafts, one per dimension. It never touches the network, files or the database itself:
``JudgeContext`` gives it the encoded media and an ``ask`` coroutine, so the same protocol
code serves real runs, dry runs (``ask`` only records the request) and tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from safereview.judge.parsing import (
    MAX_RATIONALE_CHARS,
    MAX_RAW_CHARS,
    NO_RESULT,
    Parsed,
    answer_start,
    digit_probs,
    label_probs,
    parse_answer,
)


@dataclass
class ItemView:
    """The parts of an ``Item`` a protocol needs (detached from any database session)."""

    id: int
    external_id: str
    task_type: str
    category: str
    subcategory: str
    prompt: list[dict[str, Any]]
    response: list[dict[str, Any]]
    refused: bool
    output_modalities: str = "text"


@dataclass
class Answer:
    """One chat completion: its text, or why there is none."""

    text: str | None
    logprobs: Any = None
    error: str | None = None


@dataclass
class Draft:
    """A verdict before it is written (see :func:`judge.store.write_verdicts`)."""

    item_id: int
    dimension: str
    label: str | None
    status: str  # ok | unparseable | error | rule
    rationale: str = ""
    raw_output: str = ""
    intent: str = ""
    probability: float | None = None
    probs: dict[str, float] | None = None
    score: float | None = None


AskFn = Callable[..., Awaitable[Answer]]  # (question, messages, max_tokens, *, digits=None) -> Answer


@dataclass
class JudgeContext:
    """What a protocol may use: ``content(parts)`` builds OpenAI content parts (media inline),
    ``ask(question, messages, max_tokens, digits=…)`` sends one chat request (``digits``: the
    valid results of a verdict question, which ``--structured`` constrains the answer to)."""

    content: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    ask: AskFn
    extra: dict[str, Any] = field(default_factory=dict)


class JudgeProtocol(Protocol):
    name: str
    prompt_version: str
    dimensions: tuple[str, ...]

    async def judge(
        self, item: ItemView, ctx: JudgeContext, dimensions: tuple[str, ...] | None = None
    ) -> list[Draft]: ...


@dataclass
class Judgment:
    """One parsed answer to one question, before several are combined into a verdict."""

    label: str | None
    status: str
    reason: str
    raw: str
    probs: dict[str, float] | None = None


def judgment_from_answer(answer: Answer, mapping: dict[int, str]) -> Judgment:
    """Parse an answer strictly against the digits valid for its question.

    An answer that is a JSON object (``--structured``, or a model that answers in JSON
    unasked) is read as ``{"reason", "result"}``; any other as ``Reason: …; Result: d``."""
    from safereview.judge.structured import parse_json_answer

    if answer.text is None:
        return Judgment(None, "error", "", (answer.error or "no answer")[:MAX_RAW_CHARS])
    body = answer.text[answer_start(answer.text) :].lstrip().lstrip("`").removeprefix("json").lstrip()
    parsed: Parsed | None = parse_json_answer(answer.text, mapping) if body.startswith("{") else None
    if parsed is None:
        parsed = parse_answer(answer.text, mapping)
        if not parsed.ok and parsed.problem == NO_RESULT:  # "Here is my verdict: {...}"
            parsed = parse_json_answer(answer.text, mapping) or parsed
    raw = answer.text[:MAX_RAW_CHARS]
    if not parsed.ok or parsed.digit is None:
        return Judgment(None, "unparseable", parsed.reason, raw)
    probs = None
    if answer.logprobs is not None and parsed.offset is not None:
        probs = label_probs(digit_probs(answer.logprobs, parsed.offset, mapping), mapping)
    return Judgment(mapping[parsed.digit], "ok", parsed.reason[:MAX_RATIONALE_CHARS], raw, probs)


def text_of(parts: list[dict[str, Any]]) -> str:
    """All text parts joined (media parts are attached separately)."""
    return "\n".join(str(p.get("text", "")) for p in parts if p.get("modality") == "text").strip()


def media_parts(parts: list[dict[str, Any]], modality: str | None = None) -> list[dict[str, Any]]:
    return [p for p in parts if p.get("media") and (modality is None or p.get("modality") == modality)]


def is_empty(parts: list[dict[str, Any]]) -> bool:
    """True when a response holds nothing: no media and no non-blank text."""
    return not any(p.get("media") or str(p.get("text", "")).strip() for p in parts)
