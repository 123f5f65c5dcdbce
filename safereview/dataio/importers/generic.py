"""safereview's own generic format (JSONL, CSV, Parquet); documented in docs/import.md.

Two kinds of rows:

* **item rows** carry ``id`` and the item's content (``prompt``/``response`` part lists or
  flat ``prompt_text``/``prompt_image``/... columns), optionally with verdicts and
  annotations;
* **reference rows** carry ``item_id`` instead of ``id`` and add verdicts and/or
  annotations to an item imported earlier (a separate annotations or verdicts file).

Unknown columns are errors (a typo must not silently drop data); free-form extras go in
``meta`` or ``meta.<key>`` columns.
"""

from __future__ import annotations

from typing import Any

from safereview.dataio.importers.records import (
    Record,
    SourceRow,
    as_bool,
    as_json,
    as_str,
    flat_parts,
    parse_annotation_list,
    parse_flat_annotation,
    parse_flat_verdicts,
    parse_parts,
    parse_verdict_list,
)
from safereview.wording import noun

ITEM_KEYS = {
    "id",
    "external_id",
    "task_type",
    "category",
    "subcategory",
    "model",
    "refused",
    "meta",
    "prompt",
    "response",
    "verdicts",
    "annotations",
}
FLAT_PART_KEYS = {f"{p}_{m}" for p in ("prompt", "response") for m in ("text", "image", "audio", "video")}
REF_KEYS = {"item_id", "verdicts", "annotations"}


_PLAIN_KEYS = ITEM_KEYS | FLAT_PART_KEYS | {"item_id"}


def parse_row(src: SourceRow) -> Record:
    data = src.data or {}
    rec = Record(line=src.line, raw=src.raw)
    used: set[str] = set()
    # fast path: rows with only the plain item columns need no scan for verdict./label./meta. columns
    odd = [k for k in data if k not in _PLAIN_KEYS]
    if odd:
        used |= parse_flat_verdicts(data, rec)
        used |= parse_flat_annotation(data, rec)
    if "verdicts" in data and data["verdicts"] is not None:
        parse_verdict_list(data["verdicts"], rec)
    if "annotations" in data and data["annotations"] is not None:
        parse_annotation_list(data["annotations"], rec)

    if data.get("item_id") is not None and data.get("id") is None and data.get("external_id") is None:
        rec.kind = "ref"
        rec.external_id = as_str(data["item_id"]) or ""
        unknown = set(data) - REF_KEYS - used - {"id", "external_id"}
        present = [k for k in sorted(unknown) if data.get(k) is not None]
        if present:
            rec.error(
                present[0],
                "a reference row (item_id) holds only verdicts and annotations; "
                f"unexpected {noun(len(present), 'column')} {', '.join(present)}",
            )
        if not rec.verdicts and not rec.annotations:
            rec.error("item_id", "a reference row needs verdicts or an annotation")
        return rec

    ext = data.get("id", data.get("external_id"))
    rec.external_id = as_str(ext) or ""
    if not rec.external_id:
        rec.error("id", "required (or item_id for a row that only adds verdicts/annotations)")
    rec.task_type = as_str(data.get("task_type"))
    rec.category = as_str(data.get("category"))
    rec.subcategory = as_str(data.get("subcategory"))
    rec.model = as_str(data.get("model"))
    rec.refused = as_bool(data.get("refused"), rec, "refused")
    meta = as_json(data.get("meta"), rec, "meta", dict) or {}
    for key in [k for k in odd if k[:5] == "meta."]:
        used.add(key)
        if data[key] is not None:
            meta[key[len("meta.") :]] = data[key]
    rec.meta = meta
    for side in ("prompt", "response"):
        parts = parse_parts(data.get(side), rec, side) if data.get(side) is not None else []
        parts += flat_parts(data, side, rec)
        setattr(rec, side, parts)
    for key in sorted(k for k in odd if k not in used and data.get(k) is not None):
        rec.error(key, "unknown field (see docs/import.md; put extras in meta or meta.<key>)")
    return rec


def looks_generic_ref(data: dict[str, Any]) -> bool:
    return "item_id" in data and "id" not in data
