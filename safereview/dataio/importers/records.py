"""Reading source files into rows with line numbers, and the normalised import record.

Every format parser turns a source row into a :class:`Record`: an item (or a reference to
an existing item) with prompt/response parts whose media are still file references, plus
verdicts and annotations in one common shape. Problems are collected on the record as
``(field, message)`` pairs instead of raised, so one run reports every bad row.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODALITIES = ("text", "image", "audio", "video")
MEDIA_MODALITIES = ("image", "audio", "video")


@dataclass(slots=True)
class SourceRow:
    """One row of a source file: ``line`` is 1-based (JSONL/CSV) or a 0-based Parquet row index."""

    line: int
    data: dict[str, Any] | None
    raw: Any
    error: tuple[str, str] | None = None


@dataclass(slots=True)
class Record:
    """A parsed row, before validation against the taxonomy and the media folder."""

    line: int
    raw: Any
    kind: str = "item"  # item | ref (verdicts/annotations for an item imported earlier)
    external_id: str = ""
    task_type: str | None = None
    category: str | None = None
    subcategory: str | None = None
    model: str | None = None
    refused: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    prompt: list[dict[str, Any]] = field(default_factory=list)
    response: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    # filled by validation
    item: dict[str, Any] | None = None
    media: list[Any] = field(default_factory=list)

    def error(self, field_name: str, message: str) -> None:
        self.errors.append((field_name, message))


# ---------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> Iterator[SourceRow]:
    """Rows of a JSON Lines file; blank lines are skipped, broken ones reported."""
    loads = json.loads
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                data = loads(raw)  # bytes: UTF-8 (with or without BOM) decoded by json itself
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield _jsonl_problem(lineno, raw)
                continue
            if type(data) is not dict:
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                yield SourceRow(lineno, None, text, ("(json)", f"expected a JSON object, got {type(data).__name__}"))
                continue
            yield SourceRow(lineno, data, data)


def _jsonl_problem(lineno: int, raw: bytes) -> SourceRow:
    """Say precisely why one JSONL line does not parse (slow path, bad lines only)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return SourceRow(
            lineno, None, raw.decode("utf-8", "replace"), ("(line)", f"not valid UTF-8 at byte {exc.start}")
        )
    text = text.lstrip("\ufeff").rstrip("\r\n")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return SourceRow(lineno, None, text, ("(json)", f"invalid JSON: {exc.msg} at column {exc.colno}"))
    return SourceRow(lineno, None, text, ("(json)", "invalid JSON"))


_BAD_BYTE = re.compile("[\udc80-\udcff]")


def read_csv(path: Path) -> tuple[list[str], Iterator[SourceRow]]:
    """Header and rows of a CSV file; a row's line is where its record starts (header = 1)."""
    # long model outputs exceed the csv module's default 128 KiB field limit
    csv.field_size_limit(max(csv.field_size_limit(), 64 << 20))
    # surrogateescape: a bad byte is reported on its own record's line, not as a failed read of
    # whatever 8 KiB decode chunk it happens to sit in (that blamed the header line)
    fh = path.open("r", encoding="utf-8-sig", newline="", errors="surrogateescape")
    reader = csv.reader(fh)
    try:
        header = next(reader)
    except StopIteration:
        fh.close()
        return [], iter(())
    except (csv.Error, UnicodeDecodeError) as exc:
        fh.close()
        raise ValueError(f"1: (header): unreadable CSV header: {exc}") from None
    if any(_BAD_BYTE.search(h) for h in header):
        fh.close()
        raise ValueError("1: (header): not valid UTF-8")
    header = [h.strip() for h in header]

    def rows() -> Iterator[SourceRow]:
        prev = reader.line_num
        try:
            while True:
                start = prev + 1
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except (csv.Error, UnicodeDecodeError) as exc:
                    prev = reader.line_num
                    yield SourceRow(start, None, "", ("(csv)", f"unreadable CSV record: {exc}"))
                    continue
                prev = reader.line_num
                if not values or all(not v.strip() for v in values):
                    continue
                raw = dict(zip(header, values, strict=False))
                if any(_BAD_BYTE.search(v) for v in values):
                    text = ",".join(values).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    yield SourceRow(start, None, text, ("(line)", "not valid UTF-8"))
                    continue
                if len(values) != len(header):
                    yield SourceRow(
                        start, None, raw, ("(csv)", f"{len(values)} fields but the header has {len(header)}")
                    )
                    continue
                data = {k: (v if v.strip() != "" else None) for k, v in raw.items()}
                yield SourceRow(start, data, raw)
        finally:
            fh.close()

    return header, rows()


def read_parquet(path: Path) -> tuple[list[str], Iterator[SourceRow]]:
    """Header and rows of a Parquet file; ``line`` is the 0-based row index."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    header = list(pf.schema_arrow.names)

    def rows() -> Iterator[SourceRow]:  # batch by batch: memory bounded whatever the file's size
        base = 0
        for batch in pf.iter_batches(batch_size=20_000):
            for i, row in enumerate(batch.to_pylist()):
                data = {k: _clean_parquet(v) for k, v in row.items()}
                yield SourceRow(base + i, data, row)
            base += batch.num_rows

    return header, rows()


def _clean_parquet(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, str) and v.strip() == "":
        return None
    return v


# ---------------------------------------------------------------------------------------
# Value helpers shared by the format parsers
# ---------------------------------------------------------------------------------------


def as_str(v: Any) -> str | None:
    if v is None or type(v) is str:
        return v
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


def as_bool(v: Any, rec: Record, name: str) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float) and v in (0, 1):
        return bool(v)
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    rec.error(name, f"expected true/false, got {str(v)[:40]!r}")
    return False


def as_float(v: Any, rec: Record, name: str) -> float | None:
    if v is None:
        return None
    if type(v) is float and v - v == 0.0:  # fast path: a finite float
        return v
    if isinstance(v, bool):
        rec.error(name, "expected a number, got a boolean")
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        rec.error(name, f"expected a number, got {str(v)[:40]!r}")
        return None
    if math.isnan(f) or math.isinf(f):
        rec.error(name, "expected a finite number")
        return None
    return f


def as_json(v: Any, rec: Record, name: str, kind: type) -> Any:
    """A nested value that CSV/Parquet carry as a JSON string."""
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as exc:
            rec.error(name, f"invalid JSON: {exc.msg}")
            return None
    if not isinstance(v, kind):
        rec.error(name, f"expected a JSON {'object' if kind is dict else 'list'}, got {type(v).__name__}")
        return None
    return v


def as_list_of_str(v: Any, rec: Record, name: str) -> list[str]:
    """A list given as JSON list or as ``;``-separated text."""
    if v is None:
        return []
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            parsed = as_json(s, rec, name, list)
            v = parsed or []
        else:
            return [p.strip() for p in s.split(";") if p.strip()]
    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return [x.strip() for x in v if x.strip()]
    rec.error(name, "expected a list of strings")
    return []


def parse_parts(value: Any, rec: Record, name: str) -> list[dict[str, Any]]:
    """Prompt/response parts from a string (one text part) or a list of part objects.

    A part is ``{"modality": "text", "text": ...}`` or ``{"modality": "image"|"audio"|"video",
    "path": <file>}``; ``file`` is accepted for ``path``.
    """
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("[") and s.endswith("]"):
            try:
                value = json.loads(s)
            except json.JSONDecodeError:
                return [{"modality": "text", "text": value, "_field": name}]
        else:
            return [{"modality": "text", "text": value, "_field": name}]
    if not isinstance(value, list):
        rec.error(name, f"expected text or a list of parts, got {type(value).__name__}")
        return []
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(value):
        where = f"{name}[{i}]"
        if isinstance(part, str):
            parts.append({"modality": "text", "text": part, "_field": where})
            continue
        if not isinstance(part, dict):
            rec.error(where, "expected a part object {modality, text|path}")
            continue
        modality = part.get("modality")
        if modality not in MODALITIES:
            rec.error(f"{where}.modality", f"expected one of {', '.join(MODALITIES)}, got {modality!r}")
            continue
        unknown = set(part) - {"modality", "text", "path", "file"}
        if unknown:
            rec.error(where, f"unknown key{'s' if len(unknown) != 1 else ''} {', '.join(sorted(unknown))}")
            continue
        if modality == "text":
            text = part.get("text")
            if not isinstance(text, str):
                rec.error(f"{where}.text", "a text part needs a string 'text'")
                continue
            parts.append({"modality": "text", "text": text, "_field": f"{where}.text"})
        else:
            ref = part.get("path", part.get("file"))
            if not isinstance(ref, str) or not ref.strip():
                rec.error(f"{where}.path", f"a {modality} part needs a file 'path'")
                continue
            parts.append({"modality": modality, "path": ref, "_field": f"{where}.path"})
    return parts


# per side: (modality, column) of the media columns, then the text column
_FLAT_COLUMNS = {
    side: (tuple((m, f"{side}_{m}") for m in MEDIA_MODALITIES), f"{side}_text") for side in ("prompt", "response")
}


def flat_parts(data: dict[str, Any], prefix: str, rec: Record) -> list[dict[str, Any]]:
    """Parts from flat columns ``<prefix>_image|audio|video|text`` (media first, then text)."""
    parts: list[dict[str, Any]] = []
    media_cols, text_col = _FLAT_COLUMNS[prefix]
    get = data.get
    for modality, col in media_cols:
        v = get(col)
        if v is None:
            continue
        refs = (
            as_list_of_str(v, rec, col)
            if isinstance(v, list) or str(v).lstrip().startswith("[")
            else [p.strip() for p in str(v).split("|") if p.strip()]
        )
        for ref in refs:
            parts.append({"modality": modality, "path": ref, "_field": col})
    text = get(text_col)
    if text is not None:
        if not isinstance(text, str):
            rec.error(text_col, "expected text")
        else:
            parts.append({"modality": "text", "text": text, "_field": text_col})
    return parts


VERDICT_KEYS = {
    "dimension",
    "label",
    "judge_id",
    "judge_version",
    "judge_model",
    "probability",
    "probs",
    "score",
    "rationale",
    "raw_output",
    "intent",
    "status",
}
ANNOTATION_KEYS = {
    "annotator",
    "labels",
    "blind_labels",
    "categories",
    "rationale",
    "time_spent_s",
    "verdict_action",
    "verdict_judge_id",
    "flagged",
    "at",
    "display_name",
}


def parse_verdict_list(value: Any, rec: Record, name: str = "verdicts") -> None:
    value = value if type(value) is list else as_json(value, rec, name, list)
    for i, v in enumerate(value or []):
        where = f"{name}[{i}]"
        if not isinstance(v, dict):
            rec.error(where, "expected a verdict object")
            continue
        if not VERDICT_KEYS.issuperset(v):
            extra = sorted(set(v) - VERDICT_KEYS)
            rec.error(where, f"unknown key{'s' if len(extra) != 1 else ''} {', '.join(extra)}")
            continue
        get = v.get
        p, probs, score = get("probability"), get("probs"), get("score")
        rec.verdicts.append(
            {
                "_field": where,
                "dimension": as_str(get("dimension")),
                "label": as_str(get("label")),
                "judge_id": as_str(get("judge_id")),
                "judge_version": as_str(get("judge_version")) or "",
                "judge_model": as_str(get("judge_model")) or "",
                # names of fields are built only for a value that may be wrong
                "probability": p if _finite_float(p) else as_float(p, rec, f"{where}.probability"),
                "probs": None if probs is None else as_json(probs, rec, f"{where}.probs", dict),
                "score": score if _finite_float(score) else as_float(score, rec, f"{where}.score"),
                "rationale": as_str(get("rationale")) or "",
                "raw_output": as_str(get("raw_output")) or "",
                "intent": as_str(get("intent")) or "",
                "status": as_str(get("status")),
            }
        )


def _finite_float(v: Any) -> bool:
    """None or a finite float: what :func:`as_float` returns unchanged without a message."""
    return v is None or (type(v) is float and v - v == 0.0)


def parse_flat_verdicts(data: dict[str, Any], rec: Record) -> set[str]:
    """``verdict.<dim>`` (+ ``.prob``, ``.probs``, ``.rationale``, ``.status``, ``.score``) with ``judge_id``.

    Returns the column names consumed.
    """
    used: set[str] = set()
    dims: dict[str, dict[str, Any]] = {}
    for key in ("judge_id", "judge_version", "judge_model"):
        if key in data:
            used.add(key)
    vkeys = [k for k in data if k[:8] == "verdict."]
    if not vkeys:
        return used
    for key in vkeys:
        value = data[key]
        used.add(key)
        rest = key[len("verdict.") :]
        dim, _, attr = rest.partition(".")
        if not dim or attr not in ("", "prob", "probs", "rationale", "status", "score", "raw_output", "intent"):
            rec.error(
                key,
                "verdict columns are verdict.<dimension>[.prob|.probs|.rationale|.status|.score|.raw_output|.intent]",
            )
            continue
        dims.setdefault(dim, {})[attr or "label"] = value
    for dim, attrs in dims.items():
        if all(v is None for v in attrs.values()):
            continue
        where = f"verdict.{dim}"
        rec.verdicts.append(
            {
                "_field": where,
                "dimension": dim,
                "label": as_str(attrs.get("label")),
                "judge_id": as_str(data.get("judge_id")),
                "judge_version": as_str(data.get("judge_version")) or "",
                "judge_model": as_str(data.get("judge_model")) or "",
                "probability": as_float(attrs.get("prob"), rec, f"{where}.prob"),
                "probs": as_json(attrs.get("probs"), rec, f"{where}.probs", dict),
                "score": as_float(attrs.get("score"), rec, f"{where}.score"),
                "rationale": as_str(attrs.get("rationale")) or "",
                "raw_output": as_str(attrs.get("raw_output")) or "",
                "intent": as_str(attrs.get("intent")) or "",
                "status": as_str(attrs.get("status")),
            }
        )
    return used


def _annotation(v: dict[str, Any], rec: Record, where: str) -> dict[str, Any]:
    return {
        "_field": where,
        "annotator": as_str(v.get("annotator")),
        "display_name": as_str(v.get("display_name")) or "",
        "labels": v.get("labels"),
        "blind_labels": v.get("blind_labels"),
        "categories": as_list_of_str(v.get("categories"), rec, f"{where}.categories"),
        "rationale": as_str(v.get("rationale")) or "",
        "time_spent_s": as_float(v.get("time_spent_s"), rec, f"{where}.time_spent_s"),
        "verdict_action": as_str(v.get("verdict_action")),
        "verdict_judge_id": as_str(v.get("verdict_judge_id")),
        "flagged": as_bool(v.get("flagged"), rec, f"{where}.flagged"),
        "at": as_str(v.get("at")),
    }


def parse_annotation_list(value: Any, rec: Record, name: str = "annotations") -> None:
    value = as_json(value, rec, name, list)
    for i, v in enumerate(value or []):
        where = f"{name}[{i}]"
        if not isinstance(v, dict):
            rec.error(where, "expected an annotation object")
            continue
        unknown = set(v) - ANNOTATION_KEYS
        if unknown:
            rec.error(where, f"unknown key{'s' if len(unknown) != 1 else ''} {', '.join(sorted(unknown))}")
            continue
        ann = _annotation(v, rec, where)
        for key in ("labels", "blind_labels"):
            if ann[key] is not None and not isinstance(ann[key], dict):
                ann[key] = as_json(ann[key], rec, f"{where}.{key}", dict)
        rec.annotations.append(ann)


def parse_flat_annotation(data: dict[str, Any], rec: Record) -> set[str]:
    """One annotation from ``annotator`` + ``label.<dim>`` / ``blind.<dim>`` columns."""
    used = {k for k in data if k[:6] in ("label.", "blind.")}
    if not used and "annotator" not in data:
        return used
    flat_keys = {
        "annotator",
        "display_name",
        "categories",
        "rationale",
        "time_spent_s",
        "verdict_action",
        "verdict_judge_id",
        "flagged",
        "at",
    }
    used |= flat_keys & set(data)
    labels = {k[len("label.") :]: as_str(v) for k, v in data.items() if k.startswith("label.") and v is not None}
    blind = {k[len("blind.") :]: as_str(v) for k, v in data.items() if k.startswith("blind.") and v is not None}
    if data.get("annotator") is None:
        if labels or blind:
            rec.error("annotator", "label.<dimension> columns need an annotator")
        return used
    v = {k: data.get(k) for k in flat_keys}
    ann = _annotation(v, rec, "annotator")
    ann["labels"] = labels
    ann["blind_labels"] = blind or None
    ann["_label_field"] = "label."
    rec.annotations.append(ann)
    return used
