"""Uni-SafeBench release JSONL: ``id, prompt, image, category`` plus the judge-input fields
``generated_text, output_image, intention, reject_image``.

The task type is not in the rows: it comes from ``--task-type``, a ``task_type`` field, or
the file/folder name (``Composite_Unsafe.jsonl``, ``dual-unsafe/outputs.jsonl``...).
Extension: a row may also carry ``model``, ``subcategory`` and generic-format ``verdicts`` /
``annotations`` lists; any other field is kept in the item's ``meta``.
"""

from __future__ import annotations

from safereview.dataio.importers.records import (
    Record,
    SourceRow,
    as_bool,
    as_str,
    parse_annotation_list,
    parse_flat_annotation,
    parse_flat_verdicts,
    parse_verdict_list,
)

FIELDS = {
    "id",
    "prompt",
    "image",
    "category",
    "subcategory",
    "generated_text",
    "output_image",
    "intention",
    "reject_image",
    "model",
    "task_type",
    "task",
    "verdicts",
    "annotations",
}
SIGNATURE = {"generated_text", "output_image", "reject_image", "intention", "image"}


def parse_row(src: SourceRow) -> Record:
    data = src.data or {}
    rec = Record(line=src.line, raw=src.raw)
    rec.external_id = as_str(data.get("id")) or ""
    if not rec.external_id:
        rec.error("id", "required")
    prompt = data.get("prompt")
    if prompt is None:
        rec.error("prompt", "required")
    elif not isinstance(prompt, str):
        rec.error("prompt", "expected text")
    image = data.get("image")
    if image is not None and not isinstance(image, str):
        rec.error("image", "expected a path relative to the image root")
    elif image and image.strip():
        rec.prompt.append({"modality": "image", "path": image, "_field": "image"})
    if isinstance(prompt, str):
        rec.prompt.append({"modality": "text", "text": prompt, "_field": "prompt"})
    out_image = data.get("output_image")
    if out_image is not None and not isinstance(out_image, str):
        rec.error("output_image", "expected a path relative to the image root")
    elif out_image and out_image.strip():
        rec.response.append({"modality": "image", "path": out_image, "_field": "output_image"})
    text = data.get("generated_text")
    if text is not None:
        if not isinstance(text, str):
            rec.error("generated_text", "expected text")
        elif text.strip():  # an empty generated_text means the model produced no text
            rec.response.append({"modality": "text", "text": text, "_field": "generated_text"})
    rec.refused = as_bool(data.get("reject_image"), rec, "reject_image")
    rec.category = as_str(data.get("category"))
    rec.subcategory = as_str(data.get("subcategory"))
    rec.model = as_str(data.get("model"))
    rec.task_type = as_str(data.get("task_type", data.get("task")))
    if data.get("intention") is not None:
        rec.meta["intention"] = as_str(data.get("intention"))
    used = parse_flat_verdicts(data, rec) | parse_flat_annotation(data, rec)
    if data.get("verdicts") is not None:
        parse_verdict_list(data["verdicts"], rec)
    if data.get("annotations") is not None:
        parse_annotation_list(data["annotations"], rec)
    for key, value in data.items():
        if key not in FIELDS and key not in used:
            rec.meta[key] = value
    return rec
