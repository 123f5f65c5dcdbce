"""Import verdicts produced elsewhere: Uni-Judger's own output or a generic JSONL/CSV.

Formats (details and examples in ``docs/judge.md``):

- ``uni-judger`` (also ``unijudger``): the files Uni-SafeBench's ``safety_checker.py``
  writes, JSONL with ``id`` and ``context_safety`` / ``init_safety`` holding either the
  numbers (0 unsafe / 1 safe / 2 refusal; ``"NA"``) or the judge's raw answer text (parsed as
  ``safereview judge`` parses it). Several records of one id merge by the benchmark's rule;
  NA records are set aside and an all-NA dimension is stored as *unparseable*.
- ``generic``: JSONL or CSV (by extension) with ``item_id`` (external id), ``dimension``,
  ``label`` and optional ``probability``, ``rationale``, ``judge_id``.

Same discipline as the item importers: the whole file is checked first, every problem is
reported as ``FILE:LINE: field: message``, and nothing is written unless there is none.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from safereview.db.collections import taxonomy_of
from safereview.db.models import ImportBatch, Item
from safereview.judge.config import ensure_judge_config
from safereview.judge.parsing import (
    CONTEXTUAL_IMAGE,
    CONTEXTUAL_TEXT,
    INTRINSIC,
    MAX_RATIONALE_CHARS,
    MAX_RAW_CHARS,
    combine,
    parse_answer,
)
from safereview.judge.protocols.base import Draft
from safereview.judge.store import stored_verdicts, verdict_key, write_verdicts
from safereview.workflow.collections import get_collection

FORMATS = ("uni-judger", "unijudger", "generic")
UNI_JUDGER = ("uni-judger", "unijudger")  # one format; the older name keeps its judge ids
IMPORTED_VERSION = "imported"  # judge_version of every imported verdict
MAX_PROBLEMS = 200


class VerdictImportError(ValueError):
    """The file has problems; ``problems`` lists them all as ``FILE:LINE: field: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems[:MAX_PROBLEMS]))


@dataclass
class ImportResult:
    batch_id: int
    verdicts: int
    collection_id: int
    judge_ids: list[str] = field(default_factory=list)
    item_ids: list[int] = field(default_factory=list)  # items whose verdicts were written (re-ranked)
    unchanged: int = 0  # identical to the stored verdict: left as it was
    replaced: int = 0  # differed from the stored verdict and replaced it (update=True)


def default_judge_id(fmt: str, path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem) or "file"
    return f"imported:{fmt}:{stem}"[:80]


def _rows(path: Path, text: str) -> list[tuple[int, dict[str, Any] | None, str]]:
    """(line number, row or None, problem) for JSONL or CSV."""
    out: list[tuple[int, dict[str, Any] | None, str]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        try:
            for row in reader:
                out.append((reader.line_num, {k: v for k, v in row.items() if k is not None}, ""))
        except csv.Error as exc:
            out.append((reader.line_num, None, f"(csv): {exc}"))
        return out
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            out.append((n, None, f"(json): not valid JSON: {exc.msg}"))
            continue
        if not isinstance(obj, dict):
            out.append((n, None, "(json): expected an object"))
            continue
        out.append((n, obj, ""))
    return out


def _digit(value: Any, valid: dict[int, str]) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value in valid else None
    if isinstance(value, float) and value.is_integer() and int(value) in valid:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value.strip()) in valid:
        return int(value.strip())
    return None


def _text(row: dict[str, Any], *keys: str) -> str:
    for k in keys:
        v = row.get(k)
        if v not in (None, ""):
            return str(v)
    return ""


NA = "NA"
_UNI_FIELDS = (
    ("context_safety", "contextual", CONTEXTUAL_TEXT, ("context_reason", "context_safety_reason", "contextual_reason")),
    ("init_safety", "intrinsic", INTRINSIC, ("init_reason", "init_safety_reason", "intrinsic_reason")),
)


@dataclass
class Observation:
    """One record's answer on one dimension: a label, or none (``label`` None) with why.

    ``na`` marks the file's own ``"NA"``; a raw answer that does not parse has no label and
    is not NA."""

    line: int
    label: str | None
    reason: str
    raw: Any
    intent: str = ""
    na: bool = False


def _observe(value: Any, mapping: dict[int, str], answer_mapping: dict[int, str]) -> tuple[str | None, str, str]:
    """(label or None, reason, problem) for a numeric value, ``"NA"`` or the judge's raw text.

    The numeric file holds 0/1/2 or "NA"; the detail file holds the judge's own answer, which
    is parsed exactly as ``safereview judge`` parses one (``judge.parsing.parse_answer``), with
    the digits valid for that question (``answer_mapping``: 0/1 only for an image response)."""
    if isinstance(value, str) and value.strip().upper() == NA:
        return None, "NA in the file", ""
    digit = _digit(value, mapping)
    if digit is not None:
        return mapping[digit], "", ""
    if isinstance(value, str) and not value.strip().isdigit():
        parsed = parse_answer(value, answer_mapping)
        if parsed.ok and parsed.digit is not None:
            return mapping[parsed.digit], parsed.reason[:MAX_RATIONALE_CHARS], ""
        return None, f"judge answer unparseable: {parsed.problem}", ""
    meaning = ", ".join(f"{k} {v}" for k, v in mapping.items())
    return None, "", f'must be one of {sorted(mapping)} ({meaning}), "NA", or the judge\'s answer text; got {value!r}'


def _uni_judger_row(
    row: dict[str, Any],
    line: int,
    items: dict[str, int],
    dims: dict[str, list[str]],
    task_type: str | None,
    bad: Callable[[int, str, str], None],
    into: dict[tuple[int, str], list[Observation]],
    image_items: frozenset[int] = frozenset(),
) -> None:
    """Collect one record of Uni-Judger's detail or ``_numeric`` file (merged per item later)."""
    ext = _text(row, "id")
    if not ext:
        bad(line, "id", "required")
        return
    item_id = items.get(f"{task_type}/{ext}") if task_type else None
    if item_id is None:
        item_id = items.get(ext)
    if item_id is None:
        where = f" (looked up as {task_type + '/' + ext!r} and {ext!r})" if task_type else ""
        bad(line, "id", f"no item {ext!r} in the collection{where}")
        return
    if "context_safety" not in row and "init_safety" not in row:
        bad(line, "context_safety", "neither context_safety nor init_safety given")
        return
    intent = _text(row, "intention", "intent")[:MAX_RAW_CHARS]
    for fld, dim, mapping, reason_keys in _UNI_FIELDS:
        if fld not in row or row[fld] in (None, ""):
            continue
        if dim not in dims:
            bad(line, fld, f"the collection's taxonomy has no {dim!r} dimension")
            continue
        answer_mapping = CONTEXTUAL_IMAGE if dim == "contextual" and item_id in image_items else mapping
        label, reason, problem = _observe(row[fld], mapping, answer_mapping)
        if problem:
            bad(line, fld, problem)
            continue
        na = isinstance(row[fld], str) and row[fld].strip().upper() == NA
        reason = _text(row, *reason_keys)[:MAX_RATIONALE_CHARS] or reason
        into.setdefault((item_id, dim), []).append(Observation(line, label, reason, row[fld], intent, na))


def merge_observations(item_id: int, dimension: str, observed: list[Observation]) -> Draft:
    """One verdict from every record of an item, by the benchmark's rules.

    Records whose answer is NA are set aside (Uni-SafeBench's statistics drop them), the rest
    merge as its ``sum.py`` does: any unsafe (0) → unsafe, all refusal (2) → refusal, else
    safe. When every record is NA the verdict is *unparseable*: no label is guessed. So is it
    when any raw answer does not parse (as in ``safereview judge``): that answer could have
    been the unsafe one. The raw output keeps every record's value and line."""
    labelled = [o for o in observed if o.label is not None]
    unread = [o for o in observed if o.label is None and not o.na]
    raw = json.dumps([{"line": o.line, "value": o.raw} for o in observed], ensure_ascii=False)[:MAX_RAW_CHARS]
    intent = next((o.intent for o in observed if o.intent), "")
    if unread:
        why = "; ".join(dict.fromkeys(f"line {o.line}: {o.reason}" for o in unread))
        return Draft(item_id, dimension, None, "unparseable", why[:MAX_RATIONALE_CHARS], raw, intent)
    if not labelled:
        why = "; ".join(dict.fromkeys(o.reason for o in observed))
        return Draft(item_id, dimension, None, "unparseable", why[:MAX_RATIONALE_CHARS], raw, intent)
    label = combine([o.label for o in labelled if o.label])
    if len(observed) == 1:
        return Draft(item_id, dimension, label, "ok", labelled[0].reason, raw, intent)
    n_na = len(observed) - len(labelled)
    note = f"merged from {len(labelled)} record(s) (any unsafe → unsafe; all refusal → refusal; else safe)"
    if n_na:
        note += f"; {n_na} NA record(s) set aside"
    reasons = [f"line {o.line}: {o.reason}" for o in labelled if o.reason]
    rationale = "\n".join([note, *reasons])[:MAX_RATIONALE_CHARS]
    return Draft(item_id, dimension, label, "ok", rationale, raw, intent)


def parse_verdict_file(
    path: Path,
    fmt: str,
    items: dict[str, int],
    dims: dict[str, list[str]],
    judge_id: str | None,
    task_type: str | None = None,
    image_items: frozenset[int] = frozenset(),
) -> tuple[dict[str, list[Draft]], dict[tuple[str, int, str], int], list[str]]:
    """Drafts grouped by judge id, the line of each (judge id, item id, dimension), and every
    problem found (empty when the file is clean). ``task_type`` (a taxonomy id) qualifies
    Uni-Judger ids the way the Uni-SafeBench importer stored them (``<task type>/<id>``)."""
    if fmt not in FORMATS:
        return {}, {}, [f"{path}: format: must be one of {', '.join(FORMATS)}"]
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        return {}, {}, [f"{path}: (file): cannot read: {exc.strerror}"]
    except UnicodeDecodeError:
        return {}, {}, [f"{path}: (file): not UTF-8 text"]
    problems: list[str] = []
    out: dict[str, list[Draft]] = {}
    seen: dict[tuple[str, int, str], int] = {}
    default_id = judge_id or default_judge_id(fmt, path)

    def bad(line: int, fld: str, msg: str) -> None:
        problems.append(f"{path}:{line}: {fld}: {msg}")

    def add(line: int, jid: str, draft: Draft) -> None:
        key = (jid, draft.item_id, draft.dimension)
        if key in seen:
            bad(line, "dimension", f"duplicate verdict for this item and dimension (first on line {seen[key]})")
            return
        seen[key] = line
        out.setdefault(jid, []).append(draft)

    uni: dict[tuple[int, str], list[Observation]] = {}
    rows = _rows(path, text)
    if not rows:
        problems.append(f"{path}: (file): no rows")
    for line, row, problem in rows:
        if row is None:
            field_name, _, msg = problem.partition(": ")
            bad(line, field_name, msg)
            continue
        if fmt in UNI_JUDGER:
            _uni_judger_row(row, line, items, dims, task_type, bad, uni, image_items)
        else:
            ext = _text(row, "item_id")
            dim = _text(row, "dimension")
            label = _text(row, "label")
            ok = True
            if not ext:
                bad(line, "item_id", "required")
                ok = False
            elif ext not in items:
                bad(line, "item_id", f"no item {ext!r} in the collection")
                ok = False
            if not dim:
                bad(line, "dimension", "required")
                ok = False
            elif dim not in dims:
                bad(line, "dimension", f"must be one of {', '.join(dims)}, got {dim!r}")
                ok = False
            elif label not in dims[dim]:
                bad(line, "label", f"must be one of {', '.join(dims[dim])} for {dim}, got {label!r}")
                ok = False
            prob: float | None = None
            raw_prob = row.get("probability")
            if raw_prob not in (None, ""):
                try:
                    prob = float(raw_prob)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    prob = math.nan
                if isinstance(raw_prob, bool) or not (0.0 <= prob <= 1.0):
                    bad(line, "probability", f"must be a number from 0 to 1, got {raw_prob!r}")
                    ok = False
            jid = _text(row, "judge_id") or default_id
            if len(jid) > 80:
                bad(line, "judge_id", "longer than 80 characters")
                ok = False
            if ok:
                add(
                    line,
                    jid,
                    Draft(items[ext], dim, label, "ok", _text(row, "rationale")[:MAX_RATIONALE_CHARS], "", "", prob),
                )
        if len(problems) >= MAX_PROBLEMS:
            problems.append(f"{path}: (file): stopped after {MAX_PROBLEMS} problems")
            break
    for (item_id, dim), observed in uni.items():
        add(observed[0].line, default_id, merge_observations(item_id, dim, observed))
    return out, seen, problems


def _task_type_for(path: Path, spec: dict[str, Any], given: str | None) -> tuple[str | None, str]:
    """The taxonomy id of ``--task-type`` (or of the file's or folder's name), or a problem.

    Uni-SafeBench numbers ids per task file, so its importer stores ``<task type>/<id>``;
    the judge's files carry the bare id and are matched through their task type."""
    from safereview.dataio.importers.taxonomy_index import TaxonomyIndex

    tax = TaxonomyIndex(spec)
    if given:
        hit = tax.task_type(given)
        if hit is None:
            known = ", ".join(t["id"] for t in spec["task_types"]) or "none"
            return None, f"{path}: --task-type: unknown task type {given!r}; known: {known}"
        return hit, ""
    return (tax.task_type_from_path(path) if spec["task_types"] else None), ""


def import_verdicts(
    session: Session,
    path: str | Path,
    fmt: str,
    collection: str,
    *,
    actor: Any,
    judge_id: str | None = None,
    update: bool = False,
    task_type: str | None = None,
) -> ImportResult:
    """Check the whole file, then write its new and changed verdicts in the caller's transaction.

    The same rule as verdict rows in ``safereview import``: a verdict identical to the stored
    one (same item, dimension and judge) is left as it is; one that differs is refused
    unless ``update`` (``--update``), so a second file can never silently replace a judge's
    answers. The queue's priorities of the touched items are refreshed in the same
    transaction. ``task_type`` (Uni-Judger files) names the task whose ids the file holds;
    without it the file's or folder's name is tried, then the bare id. ``actor`` must be
    allowed to ``import``. Raises :class:`VerdictImportError` listing every problem; nothing
    is written then.
    """
    from safereview.workflow.ordering import refresh_priorities
    from safereview.workflow.policies import require

    require(actor, "import")
    path = Path(path)
    col = get_collection(session, collection)
    spec = taxonomy_of(session, col)
    dims = {d["name"]: d["labels"] for d in spec["dimensions"]}
    items = {
        ext: iid
        for ext, iid in session.exec(select(Item.external_id, Item.id).where(Item.collection_id == col.id)).all()
    }
    tt_id = None
    if fmt in UNI_JUDGER:
        tt_id, problem = _task_type_for(path, spec, task_type)
        if problem:
            raise VerdictImportError([problem])
    image_items: frozenset[int] = frozenset()
    if fmt in UNI_JUDGER:  # an image response's contextual answer is 0 or 1 (``safereview judge``'s rule)
        image_items = frozenset(
            session.exec(select(Item.id).where(Item.collection_id == col.id, Item.output_modalities == "image")).all()
        )
    drafts, lines, problems = parse_verdict_file(path, fmt, items, dims, judge_id, tt_id, image_items)
    if problems:
        raise VerdictImportError(problems)
    external = {iid: ext for ext, iid in items.items()}
    stored = stored_verdicts(session, [d.item_id for ds in drafts.values() for d in ds], list(drafts))
    to_write: dict[str, list[Draft]] = {}
    unchanged = replaced = 0
    for jid, ds in drafts.items():
        for d in ds:
            key = (d.item_id, d.dimension, jid)
            old = stored.get(key)  # (row id, verdict_key) of the stored verdict
            if old is not None and old[1] == verdict_key({**vars(d), "judge_version": IMPORTED_VERSION}):
                unchanged += 1
                continue
            if old is not None and not update:
                problems.append(
                    f"{path}:{lines[(jid, d.item_id, d.dimension)]}: label: verdict of judge {jid!r} for item "
                    f"{external[d.item_id]!r} ({d.dimension}) differs from the stored one; not replaced "
                    "(use --update)"
                )
                continue
            replaced += old is not None
            to_write.setdefault(jid, []).append(d)
    if problems:
        raise VerdictImportError(problems)
    if not to_write:  # nothing changed: like ``safereview import``, no new batch either
        return ImportResult(0, 0, col.id or 0, judge_ids=sorted(drafts), unchanged=unchanged)
    batch = ImportBatch(
        source=path.name,
        source_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        format=f"verdicts-{fmt}",
        collection_id=col.id,
        created_by=actor.username,
    )
    session.add(batch)
    session.flush()
    total = 0
    for jid, ds in to_write.items():
        ensure_judge_config(session, "imported", "", "", {"format": fmt, "source": path.name}, jid=jid)
        total += write_verdicts(session, ds, judge_id=jid, judge_version=IMPORTED_VERSION, import_batch_id=batch.id)
    batch.n_verdicts = total
    session.add(batch)
    session.flush()
    touched = sorted({d.item_id for ds in to_write.values() for d in ds})
    refresh_priorities(session, col.id or 0, touched)
    return ImportResult(
        batch_id=batch.id or 0,
        verdicts=total,
        collection_id=col.id or 0,
        judge_ids=sorted(drafts),
        item_ids=touched,
        unchanged=unchanged,
        replaced=replaced,
    )
