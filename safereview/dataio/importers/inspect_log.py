"""Inspect AI evaluation logs (``.eval`` or ``.json``): one item per sample and epoch.

UK AISI's Inspect runs most open safety evaluations, and its model-graded scorers are the
automated judges people need to audit. A log is read with ``inspect_ai.log`` itself (an
optional dependency, ``pip install 'safereview[inspect]'``), sample by sample, so a large
log is never held whole:

- the sample's input messages become prompt parts (text; images, audio and video embedded
  in the log are written to a scratch folder and imported as media like any other file);
- the output completion becomes the response;
- every scorer's score becomes a verdict of judge ``<scorer name>``: its value mapped to a
  taxonomy label (see :class:`ScoreMap`), its explanation as the rationale, and the value,
  answer and the scorer's metadata kept in ``raw_output``;
- task, model, run, sample id, epoch, target and the sample's metadata go to the item's
  ``meta`` (``category``, ``subcategory`` and ``task_type`` metadata fill those fields).

Ids are ``<sample id>#<epoch>`` so every epoch is its own item and a re-import finds the
same ones. A sample that failed in Inspect, or that the log's header lists but the log does
not hold (a cancelled run), is a problem of that sample (``--skip-invalid`` imports the
others and names it). Remote media (``http…``) are never fetched.

A log is hostile input like any other file: the compressed samples of an ``.eval`` log are
checked against :data:`MAX_SAMPLE_BYTES` before any is read (a few KB of zstd can hold
gigabytes), embedded media against :data:`MAX_MEDIA_BYTES` before decoding, and a sample's
metadata against :data:`MAX_META_CHARS`. (Inspect's own reader loads a ``.json`` log whole;
``.eval`` logs are read a sample at a time.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safereview.dataio.importers.records import Record
from safereview.wording import noun

INSTALL_HINT = "reading Inspect logs needs inspect-ai: pip install 'safereview[inspect]'"
_JSON_LOG_HEAD = re.compile(rb'^\s*\{\s*"version"\s*:\s*\d+\s*,\s*"status"\s*:')
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)
_EXT = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "video/mp4": "mp4",
    "video/webm": "webm",
}
MAX_SCORER_NAME = 80
MAX_SAMPLE_BYTES = 256 * 1024 * 1024  # one sample, uncompressed, in an .eval log
MAX_MEDIA_BYTES = 200 * 1024 * 1024  # one embedded image, audio or video
MAX_META_CHARS = 1_000_000  # a sample's metadata, as JSON


def looks_like_inspect(path: Path) -> bool:
    """``.eval`` logs, and ``.json`` files that open the way Inspect's JSON logs do."""
    suffix = path.suffix.lower()
    if suffix == ".eval":
        return True
    if suffix != ".json":
        return False
    with path.open("rb") as fh:
        return bool(_JSON_LOG_HEAD.match(fh.read(256)))


class ScoreMapError(ValueError):
    """The ``--score-map`` file is malformed (the message names the file and the key)."""


@dataclass
class ScorerRule:
    dimension: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    key: str | None = None  # for scores whose value is a dict: the entry to read


@dataclass
class ScoreMap:
    """How each scorer's values become taxonomy labels.

    Without a rule a scorer maps to the dimension of its own name (or the taxonomy's only
    dimension) and its value must be a label of that dimension. A ``--score-map`` file
    (TOML or JSON) names the rest::

        [scorer.model_graded_qa]
        dimension = "harm"
        labels = { C = "unsafe", I = "safe" }   # score value -> label
    """

    rules: dict[str, ScorerRule] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None) -> ScoreMap:
        if path is None:
            return cls()
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except OSError as exc:
            raise ScoreMapError(f"{path}: cannot read: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ScoreMapError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
        if not isinstance(data, dict) or set(data) - {"scorer"} or not isinstance(data.get("scorer"), dict):
            raise ScoreMapError(f"{path}: expected a [scorer.<name>] table per scorer and nothing else")
        rules: dict[str, ScorerRule] = {}
        for name, spec in data["scorer"].items():
            where = f"{path}: scorer.{name}"
            if not isinstance(spec, dict):
                raise ScoreMapError(f"{where}: expected a table")
            unknown = set(spec) - {"dimension", "labels", "key"}
            if unknown:
                raise ScoreMapError(f"{where}: unknown {noun(len(unknown), 'key')} {', '.join(sorted(unknown))}")
            labels = spec.get("labels", {})
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                raise ScoreMapError(f"{where}.labels: expected a table of score value = label")
            for k in ("dimension", "key"):
                if k in spec and not isinstance(spec[k], str):
                    raise ScoreMapError(f"{where}.{k}: expected text")
            rules[name] = ScorerRule(spec.get("dimension"), {str(k): v for k, v in labels.items()}, spec.get("key"))
        return cls(rules)

    def verdict(self, scorer: str, score: Any, dims: dict[str, list[str]]) -> tuple[dict[str, Any] | None, str]:
        """(the verdict dict for one score, or None with the problem)."""
        rule = self.rules.get(scorer, ScorerRule())
        dim = rule.dimension or (scorer if scorer in dims else (next(iter(dims)) if len(dims) == 1 else None))
        if dim is None:
            return None, f"scorer {scorer!r} matches no dimension ({', '.join(dims)}); name one in --score-map"
        value = score.value
        if isinstance(value, dict):
            if rule.key is None:
                return None, f"scorer {scorer!r} gives several values ({', '.join(map(str, value))}); set its key"
            value = value.get(rule.key)
        text = _value_text(value)
        label = rule.labels.get(text) if rule.labels else None
        if label is None and not rule.labels:
            wanted = {lab.lower(): lab for lab in dims.get(dim, [])}
            label = wanted.get(text.lower())
        if label is None:
            known = ", ".join(rule.labels) if rule.labels else ", ".join(dims.get(dim, []))
            return None, f"scorer {scorer!r}: value {text!r} is not mapped to a {dim!r} label (expected {known})"
        kept = {"value": score.value, "answer": score.answer, "metadata": score.metadata}
        numeric = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        return {
            "dimension": dim,
            "label": label,
            "judge_id": scorer,
            "judge_version": "inspect",
            "judge_model": "",
            "probability": None,
            "probs": None,
            "score": float(numeric) if numeric is not None else None,
            "rationale": score.explanation or "",
            "raw_output": json.dumps(kept, ensure_ascii=False, default=str),
            "intent": "",
            "status": "ok",
        }, ""


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


class MediaSink:
    """Writes media embedded in the log (``data:`` URIs) to a scratch folder, once per content."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, uri: str, kind: str, fmt: str | None) -> tuple[str | None, str]:
        """(relative path in the scratch folder, or None with the problem)."""
        m = _DATA_URI.match(uri)
        if m is None:
            if re.match(r"^[a-z][a-z0-9+.-]*://", uri, re.I):
                return None, f"{kind} at {uri[:80]!r} is remote; it is not fetched (embed it in the log)"
            return None, f"{kind} {uri[:80]!r} is neither embedded in the log nor a data URI"
        if (len(uri) - m.end()) * 3 // 4 > MAX_MEDIA_BYTES:
            return None, f"{kind}: embedded data larger than {MAX_MEDIA_BYTES // 2**20} MB"
        try:
            data = base64.b64decode(uri[m.end() :], validate=False)
        except (binascii.Error, ValueError):
            return None, f"{kind}: the embedded base64 is damaged"
        mime = (m.group("mime") or "").lower()
        ext = _EXT.get(mime) or (fmt or "").lower() or {"image": "png", "audio": "wav", "video": "mp4"}[kind]
        name = f"{hashlib.sha256(data).hexdigest()[:24]}.{ext}"
        target = self.folder / name
        if not target.exists():
            target.write_bytes(data)
        return name, ""


def _parts(
    content: Any, role: str, sink: MediaSink, rec: Record, where: str, *, labelled: bool = True
) -> list[dict[str, Any]]:
    """Prompt or response parts of one message's content (text and media).

    In a conversation every turn but the user's says who spoke (``[assistant] …``), so a
    reviewer never reads the model's earlier turn as the user's words; ``labelled=False``
    for the response itself."""
    prefix = "" if role == "user" or not labelled else f"[{role}] "
    if isinstance(content, str):
        return [{"modality": "text", "text": prefix + content, "_field": where}] if content.strip() else []
    out: list[dict[str, Any]] = []
    for i, c in enumerate(content or []):
        kind = getattr(c, "type", "")
        here = f"{where}[{i}]"
        if kind == "text":
            if c.text.strip():
                out.append({"modality": "text", "text": prefix + c.text, "_field": here})
        elif kind in ("image", "audio", "video"):
            uri = getattr(c, kind)
            rel, problem = sink.save(str(uri), kind, getattr(c, "format", None))
            if rel is None:
                rec.error(here, problem)
            else:
                out.append({"modality": kind, "path": rel, "_field": here})
        elif kind == "reasoning":
            continue  # a model's hidden reasoning is not what it answered
        else:  # documents, data, tool use: shown as a marker, never silently dropped
            out.append(
                {"modality": "text", "text": f"{prefix}[{kind or 'unknown'} content not imported]", "_field": here}
            )
    return out


def _tool_calls(msg: Any, where: str) -> list[dict[str, Any]]:
    """An assistant turn's tool calls, as text (``[assistant tool call] name({...})``)."""
    out = []
    for i, call in enumerate(getattr(msg, "tool_calls", None) or []):
        args = json.dumps(getattr(call, "arguments", {}), ensure_ascii=False, default=str)[:2000]
        text = f"[{msg.role} tool call] {getattr(call, 'function', '?')}({args})"
        out.append({"modality": "text", "text": text, "_field": f"{where}.tool_calls[{i}]"})
    return out


def read_records(path: Path, sink: MediaSink, score_map: ScoreMap, dims: dict[str, list[str]]) -> Iterator[Record]:
    """One record per sample and epoch, ``line`` = the sample's position in the log (1-based)."""
    try:
        from inspect_ai.log import read_eval_log, read_eval_log_samples
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    _check_sizes(path)
    header = read_eval_log(str(path), header_only=True)
    spec = header.eval
    run = {"task": spec.task, "task_id": spec.task_id, "run_id": spec.run_id, "model": spec.model}
    samples = read_eval_log_samples(str(path), all_samples_required=False, resolve_attachments=True)
    seen: set[tuple[str, int]] = set()
    n = 0
    for n, sample in enumerate(samples, start=1):
        seen.add((str(sample.id), int(sample.epoch)))
        try:
            yield _record(n, sample, run, sink, score_map, dims)
        except (AttributeError, IndexError, TypeError, ValueError) as exc:  # a sample shaped unlike any seen
            rec = Record(line=n, raw={"id": sample.id, "epoch": sample.epoch, **run})
            rec.external_id = f"{sample.id}#{sample.epoch}"
            rec.error("sample", f"cannot read this sample: {type(exc).__name__}: {str(exc)[:200]}")
            yield rec
    # samples the header lists but the log does not hold: a cancelled or crashed run
    epochs = int(getattr(spec.config, "epochs", None) or 1)
    for sid in spec.dataset.sample_ids or []:
        for epoch in range(1, epochs + 1):
            if (str(sid), epoch) not in seen:
                n += 1
                rec = Record(line=n, raw={"id": sid, "epoch": epoch, **run})
                rec.external_id = f"{sid}#{epoch}"
                rec.error(
                    "sample", f"sample {sid}#{epoch} is listed but not in the log (the run's status: {header.status})"
                )
                yield rec


def _check_sizes(path: Path) -> None:
    """Refuse an .eval log whose samples would decompress to more than the cap."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.file_size > MAX_SAMPLE_BYTES:
                raise ValueError(
                    f"{info.filename} decompresses to {info.file_size:,} bytes (limit {MAX_SAMPLE_BYTES:,}); not read"
                )


def _record(
    n: int, sample: Any, run: dict[str, Any], sink: MediaSink, score_map: ScoreMap, dims: dict[str, list[str]]
) -> Record:
    sid = f"{sample.id}#{sample.epoch}"
    rec = Record(line=n, raw={"id": sample.id, "epoch": sample.epoch, **run})
    rec.external_id = sid
    if sample.error is not None:
        rec.error("error", f"sample {sid} failed in Inspect: {str(sample.error.message)[:300]}")
        return rec
    if isinstance(sample.input, str):
        rec.prompt = [{"modality": "text", "text": sample.input, "_field": "input"}]
    else:
        for i, msg in enumerate(sample.input):
            rec.prompt.extend(_parts(msg.content, msg.role, sink, rec, f"input[{i}]"))
            rec.prompt.extend(_tool_calls(msg, f"input[{i}]"))
    output = sample.output
    message = output.choices[0].message if output is not None and output.choices else None
    if message is not None:
        rec.response = _parts(message.content, "assistant", sink, rec, "output", labelled=False)
        rec.response.extend(_tool_calls(message, "output"))
    meta = dict(sample.metadata or {})
    if len(json.dumps(meta, ensure_ascii=False, default=str)) > MAX_META_CHARS:
        rec.error("metadata", f"the sample's metadata is longer than {MAX_META_CHARS:,} characters as JSON")
        meta = {}
    if "inspect" in meta:  # the run's own record keeps the name
        meta["inspect_metadata"] = meta.pop("inspect")
    rec.task_type = _meta_text(meta.pop("task_type", None))
    rec.category = _meta_text(meta.pop("category", None))
    rec.subcategory = _meta_text(meta.pop("subcategory", None))
    rec.model = (run["model"] or getattr(output, "model", "") or "")[:200]  # as Inspect names it: provider/model
    rec.meta = {
        "inspect": {**run, "sample_id": sample.id, "epoch": sample.epoch, "target": sample.target},
        **meta,
    }
    for scorer, score in (sample.scores or {}).items():
        where = f"scores.{scorer}"
        if len(scorer) > MAX_SCORER_NAME:
            rec.error(where, f"scorer name longer than {MAX_SCORER_NAME} characters (it is the judge id)")
            continue
        verdict, problem = score_map.verdict(scorer, score, dims)
        if verdict is None:
            rec.error(where, problem)
        else:
            rec.verdicts.append({"_field": where, **verdict})
    return rec


def _meta_text(value: Any) -> str | None:
    return None if value is None else str(value)
