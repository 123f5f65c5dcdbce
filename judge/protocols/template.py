"""Bring your own judge prompt: the ``template`` protocol, read from a TOML file.

A judge template gives, per taxonomy dimension, the prompt (a ``system`` and a ``user``
template with placeholders such as ``{prompt}`` and ``{response}``), a regular expression
that finds the answer word (its named group ``label``) and a map from answer words to the
taxonomy's labels. One chat call per dimension and item, at temperature 0 like every
protocol; parsing is as strict as the built-in protocols' (an answer that does not match,
or matches a word the map does not know, is ``unparseable``, never guessed). The schema is
documented in ``docs/judge.md`` ("Your own prompt"); ``data/judge_templates/`` holds a
Llama Guard–style and a ShieldGemma-style example.

Everything is checked when the file is loaded (unknown keys, placeholders, the regex), and
the dimension names and labels against the collection's taxonomy when a run starts; every
error names the file and the field. The prompt version, part of the judge id, is a hash of
the file's parsed content, so editing a template makes a new judge.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safereview.judge.parsing import MAX_RAW_CHARS, parse_pattern, token_label_probs
from safereview.judge.protocols.base import Answer, Draft, ItemView, JudgeContext, is_empty, media_parts, text_of

#: Placeholders a template may use; the media markers only in ``user``.
TEXT_FIELDS = ("prompt", "response", "category", "subcategory", "task_type", "external_id")
MEDIA_FIELDS = ("prompt_media", "response_media")
PARTS = ("prompt", "response")
DEFAULT_MAX_TOKENS = 400
MAX_NAME = 31  # "template:" + name fits judgeconfig.protocol (40 characters)
MAX_VERSION = 20

_TOP_KEYS = ("name", "version", "dimensions")
_DIM_KEYS = (
    "name",
    "system",
    "user",
    "answer",
    "labels",
    "attach",
    "no_response_label",
    "max_tokens",
    "probability_tokens",
)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class TemplateError(ValueError):
    """A judge template is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class Segment:
    """A piece of a parsed prompt template: literal text, then an optional placeholder."""

    text: str
    field: str | None


@dataclass(frozen=True)
class TemplateDimension:
    """One dimension's prompt, answer pattern and label maps (validated)."""

    index: int
    name: str
    system: tuple[Segment, ...] | None
    user: tuple[Segment, ...]
    answer: re.Pattern[str]
    labels: dict[str, str]  # answer word as written → taxonomy label
    attach: tuple[str, ...]
    no_response_label: str | None
    max_tokens: int
    probability_tokens: dict[str, str]

    @property
    def where(self) -> str:
        return f"dimensions[{self.index}] ({self.name})"


def _unknown_keys(data: dict[str, Any], known: tuple[str, ...], where: str, fail: Any) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            raise fail(f"{where}.{key}" if where else str(key), f"unknown key{hint}")


def _segments(template: str, allowed: tuple[str, ...], fail: Any, field: str) -> tuple[Segment, ...]:
    """Split a prompt template at its placeholders; every placeholder must be a known name."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise fail(field, f"{exc} (write {{{{ and }}}} for literal braces)") from None
    out: list[Segment] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            out.append(Segment(literal, None))
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name not in allowed:
            if name in MEDIA_FIELDS:
                raise fail(field, f"placeholder {shown} is only allowed in 'user'")
            known = ", ".join("{" + a + "}" for a in allowed)
            raise fail(field, f"unknown placeholder {shown}; known: {known} (write {{{{ and }}}} for literal braces)")
        if spec or conversion:
            raise fail(field, f"placeholder {shown}: conversions and format specs are not allowed")
        out.append(Segment(literal, name))
    return tuple(out)


def _label_map(value: Any, fail: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise fail(field, 'required: a table of answer word = taxonomy label, e.g. {"Yes" = "unsafe", "No" = "safe"}')
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for word, label in value.items():
        key = str(word).strip().casefold()
        if not key:
            raise fail(field, "an answer word may not be blank")
        if not isinstance(label, str) or not label:
            raise fail(f"{field}.{word}", "expected a taxonomy label (a non-empty string)")
        if key in seen:
            raise fail(field, f"{word!r} and {seen[key]!r} are the same answer word (compared case-insensitively)")
        seen[key] = str(word)
        out[str(word)] = label
    return out


def _dimension(i: int, raw: Any, fail: Any) -> TemplateDimension:
    where = f"dimensions[{i}]"
    if not isinstance(raw, dict):
        raise fail(where, "expected a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise fail(f"{where}.name", "required: the taxonomy dimension this prompt judges")
    where = f"{where} ({name})"
    _unknown_keys(raw, _DIM_KEYS, where, fail)
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise fail(f"{where}.system", "expected a string")
    user = raw.get("user")
    if not isinstance(user, str) or not user.strip():
        raise fail(f"{where}.user", "required: the user message template")
    sys_segs = _segments(system, TEXT_FIELDS, fail, f"{where}.system") if system is not None else None
    user_segs = _segments(user, TEXT_FIELDS + MEDIA_FIELDS, fail, f"{where}.user")

    pattern = raw.get("answer")
    if not isinstance(pattern, str) or not pattern:
        raise fail(f"{where}.answer", "required: a regular expression with a named group 'label'")
    try:
        answer = re.compile(pattern)
    except re.error as exc:
        raise fail(f"{where}.answer", f"not a valid regular expression: {exc}") from None
    if "label" not in answer.groupindex:
        raise fail(f"{where}.answer", "no named group 'label' (write (?P<label>...) around the answer word)")

    labels = _label_map(raw.get("labels"), fail, f"{where}.labels")
    tokens = labels
    if "probability_tokens" in raw:
        tokens = _label_map(raw["probability_tokens"], fail, f"{where}.probability_tokens")

    used = {s.field for s in user_segs if s.field} | {s.field for s in sys_segs or () if s.field}
    if "attach" in raw:
        attach = raw["attach"]
        if not isinstance(attach, list) or any(not isinstance(a, str) or a not in PARTS for a in attach):
            raise fail(f"{where}.attach", 'expected a list of "prompt" and/or "response"')
        if len(set(attach)) != len(attach):
            raise fail(f"{where}.attach", "a part is listed twice")
        for part in PARTS:
            if f"{part}_media" in used and part not in attach:
                raise fail(f"{where}.attach", f"{{{part}_media}} is in 'user' but {part!r} is not attached")
        attach_t = tuple(a for a in PARTS if a in attach)
    else:  # the media go with the text the prompt shows
        attach_t = tuple(p for p in PARTS if p in used or f"{p}_media" in used)

    no_response = raw.get("no_response_label")
    if no_response is not None and (not isinstance(no_response, str) or not no_response):
        raise fail(f"{where}.no_response_label", "expected a taxonomy label (a non-empty string)")
    max_tokens = raw.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 32768:
        raise fail(f"{where}.max_tokens", "expected a whole number from 1 to 32768")
    return TemplateDimension(
        i, name, sys_segs, user_segs, answer, labels, attach_t, no_response, max_tokens, dict(tokens)
    )


def parse_template(data: Any, *, source: str = "template") -> TemplateProtocol:
    """Validate parsed TOML (a dict) as a judge template; raise :class:`TemplateError` naming the field."""

    def fail(field: str, msg: str) -> TemplateError:
        return TemplateError(f"{source}: {field}: {msg}")

    if not isinstance(data, dict):
        raise fail("(top level)", "expected a table")
    _unknown_keys(data, _TOP_KEYS, "", fail)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
        raise fail("name", f"required: 1 to {MAX_NAME} letters, digits, '.', '_' or '-' (used in the judge id)")
    version = data.get("version", "")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or len(version) > MAX_VERSION or not _NAME_RE.fullmatch(version or "x"):
        raise fail("version", f"expected up to {MAX_VERSION} letters, digits, '.', '_' or '-'")
    dims_raw = data.get("dimensions")
    if not isinstance(dims_raw, list) or not dims_raw:
        raise fail("dimensions", "required: one [[dimensions]] table per judged dimension")
    dims = [_dimension(i, d, fail) for i, d in enumerate(dims_raw)]
    seen: set[str] = set()
    for d in dims:
        if d.name in seen:
            raise fail(f"{d.where}.name", f"dimension {d.name!r} appears twice")
        seen.add(d.name)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    prompt_version = f"{version}-{digest[:8]}" if version else f"tpl-{digest[:12]}"
    return TemplateProtocol(f"template:{name}", prompt_version, dims, source)


def load_template(path: str | Path) -> TemplateProtocol:
    """Read and validate a judge template (TOML); errors name the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TemplateError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"{path}: not valid TOML: {exc}") from None
    return parse_template(data, source=str(path))


class TemplateProtocol:
    """A judging protocol whose prompts, answer pattern and labels come from a template file."""

    def __init__(self, name: str, prompt_version: str, dims: list[TemplateDimension], source: str) -> None:
        self.name = name
        self.prompt_version = prompt_version
        self.source = source
        self.by_name = {d.name: d for d in dims}
        self.dimensions: tuple[str, ...] = tuple(d.name for d in dims)

    def check_taxonomy(self, spec: dict[str, Any]) -> None:
        """Every dimension and label the template names must be the taxonomy's (run start)."""
        have = {d["name"]: list(d["labels"]) for d in spec["dimensions"]}
        for d in self.by_name.values():
            where = f"{self.source}: {d.where}"
            if d.name not in have:
                raise TemplateError(
                    f"{where}.name: {d.name!r} is not a dimension of taxonomy "
                    f"{spec.get('name', '?')!r} (its dimensions: {', '.join(have)})"
                )
            valid = have[d.name]
            checks = [("labels", w, label) for w, label in d.labels.items()]
            checks += [("probability_tokens", w, label) for w, label in d.probability_tokens.items()]
            for key, word, label in checks:
                if label not in valid:
                    raise TemplateError(
                        f"{where}.{key}.{word}: {label!r} is not a label of dimension {d.name!r} "
                        f"(its labels: {', '.join(valid)})"
                    )
            if d.no_response_label is not None and d.no_response_label not in valid:
                raise TemplateError(
                    f"{where}.no_response_label: {d.no_response_label!r} is not a label of dimension "
                    f"{d.name!r} (its labels: {', '.join(valid)})"
                )

    def messages(self, dimension: str, item: ItemView, ctx: JudgeContext) -> list[dict[str, Any]]:
        """The chat messages for one dimension: the system text, then the user content parts."""
        d = self.by_name[dimension]
        values = {
            "prompt": text_of(item.prompt),
            "response": text_of(item.response),
            "category": item.category,
            "subcategory": item.subcategory,
            "task_type": item.task_type,
            "external_id": item.external_id,
        }
        media = {p: media_parts(getattr(item, p)) if p in d.attach else [] for p in PARTS}
        content: list[dict[str, Any]] = []
        text = ""
        placed: set[str] = set()
        for seg in d.user:
            text += seg.text
            if seg.field in MEDIA_FIELDS:
                part = seg.field.removesuffix("_media")
                if media[part]:
                    if text:
                        content.append({"type": "text", "text": text})
                        text = ""
                    content.extend(ctx.content(media[part]))
                placed.add(part)
            elif seg.field is not None:
                text += values[seg.field]
        if text:
            content.append({"type": "text", "text": text})
        for part in PARTS:  # attached media without a marker go last, each labelled
            if part in placed:
                continue
            for n, p in enumerate(media[part], 1):
                content.append({"type": "text", "text": f"{part.capitalize()} {p.get('modality', 'media')} {n}:"})
                content.extend(ctx.content([p]))
        msgs: list[dict[str, Any]] = []
        if d.system is not None:
            system = "".join(s.text + (values[s.field] if s.field else "") for s in d.system)
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": content})
        return msgs

    def read(self, dimension: str, answer: Answer, item_id: int = 0) -> Draft:
        """One answer → one verdict draft, strictly (see :func:`judge.parsing.parse_pattern`)."""
        d = self.by_name[dimension]
        if answer.text is None:
            return Draft(item_id, dimension, None, "error", "", (answer.error or "no answer")[:MAX_RAW_CHARS])
        raw = answer.text[:MAX_RAW_CHARS]
        parsed = parse_pattern(answer.text, d.answer, d.labels)
        if parsed.label is None or parsed.offset is None:
            return Draft(item_id, dimension, None, "unparseable", parsed.problem, raw)
        probs = None
        if answer.logprobs is not None:
            probs = token_label_probs(answer.logprobs, parsed.offset, d.probability_tokens)
        probability = probs.get(parsed.label) if probs else None
        return Draft(item_id, dimension, parsed.label, "ok", parsed.rationale, raw, "", probability, probs)

    async def judge(self, item: ItemView, ctx: JudgeContext, dimensions: tuple[str, ...] | None = None) -> list[Draft]:
        wanted = dimensions or self.dimensions

        async def one(dim: TemplateDimension) -> Draft:
            if dim.no_response_label is not None and (item.refused or is_empty(item.response)):
                why = "model refused to generate" if item.refused else "model produced no output"
                return Draft(item.id, dim.name, dim.no_response_label, "rule", why)
            answer = await ctx.ask(dim.name, self.messages(dim.name, item, ctx), dim.max_tokens)
            return self.read(dim.name, answer, item.id)

        return list(await asyncio.gather(*(one(d) for d in self.by_name.values() if d.name in wanted)))
