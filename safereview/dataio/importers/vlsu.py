"""VLSU release CSV: ``uuid, web_path, prompt, image_grade, consensus_text_grade,
consensus_combined_grade, image_category, text_category, combined_category``.

Images are only URLs in the release; the importer never downloads. Each image is looked up
in the local media folder by the row's uuid (any image extension, any sub-folder) or by
the file name at the end of ``web_path``. The human consensus grades become one imported
annotation by the pseudo-annotator ``vlsu-consensus``: ``image_grade`` → ``image``,
``consensus_text_grade`` → ``text``, ``consensus_combined_grade`` → ``joint``. A
``not_sure`` grade is not a label: it is kept in the item's ``meta["vlsu"]["not_sure"]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from safereview.dataio.importers.records import Record, SourceRow, as_str

REQUIRED = [
    "uuid",
    "web_path",
    "prompt",
    "image_grade",
    "consensus_text_grade",
    "consensus_combined_grade",
    "image_category",
    "text_category",
    "combined_category",
]
GRADE_COLUMNS = {"image_grade": "image", "consensus_text_grade": "text", "consensus_combined_grade": "joint"}
CONSENSUS_USER = "vlsu-consensus"
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".gif"}


class ImageIndex:
    """File names under the media folder, indexed once per import (stem and full name)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_stem: dict[str, str] = {}
        self.by_name: dict[str, str] = {}
        if not root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fn in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, fn), root)
                self.by_name.setdefault(fn.lower(), rel)
                stem, ext = os.path.splitext(fn)
                if ext.lower() in IMAGE_EXTS:
                    self.by_stem.setdefault(stem.lower(), rel)

    def find(self, uuid: str, web_path: str | None) -> str | None:
        hit = self.by_stem.get(uuid.strip().lower())
        if hit:
            return hit
        if web_path:
            name = unquote(os.path.basename(urlparse(web_path.strip()).path))
            if name:
                return self.by_name.get(name.lower()) or self.by_stem.get(os.path.splitext(name)[0].lower())
        return None


def parse_row(src: SourceRow, index: ImageIndex) -> Record:
    data = src.data or {}
    rec = Record(line=src.line, raw=src.raw)
    rec.external_id = as_str(data.get("uuid")) or ""
    if not rec.external_id:
        rec.error("uuid", "required")
    web_path = as_str(data.get("web_path"))
    if rec.external_id:
        rel = index.find(rec.external_id, web_path)
        if rel is None:
            wanted = f"{rec.external_id}.<png|jpg|jpeg|webp|gif>"
            if web_path:
                wanted += f" or {unquote(os.path.basename(urlparse(web_path).path)) or '?'}"
            rec.error("web_path", f"image missing: no {wanted} in {index.root} (the importer never downloads)")
        else:
            rec.prompt.append({"modality": "image", "path": rel, "_field": "web_path"})
    prompt = data.get("prompt")
    if prompt is None:
        rec.error("prompt", "required")
    else:
        rec.prompt.append({"modality": "text", "text": str(prompt), "_field": "prompt"})
    labels: dict[str, str] = {}
    not_sure: list[str] = []
    grades: dict[str, str | None] = {}
    for col, dim in GRADE_COLUMNS.items():
        g = as_str(data.get(col))
        grades[dim] = g
        if g is None:
            continue
        g = g.strip().lower().replace(" ", "_").replace("-", "_")
        if g == "not_sure":
            not_sure.append(dim)
        else:
            labels[dim] = g
    combined = as_str(data.get("combined_category"))
    rec.category = combined
    vlsu_meta: dict[str, object] = {
        "grades": grades,
        "not_sure": not_sure,
        "image_category": as_str(data.get("image_category")),
        "text_category": as_str(data.get("text_category")),
        "combined_category": combined,
    }
    if web_path:
        vlsu_meta["web_path"] = web_path
    rec.meta["vlsu"] = vlsu_meta
    for key, value in data.items():
        if key not in REQUIRED and value is not None:
            rec.meta[key] = value
    if labels:
        rec.annotations.append(
            {
                "_field": "consensus_combined_grade",
                "_label_fields": {v: k for k, v in GRADE_COLUMNS.items()},
                "annotator": CONSENSUS_USER,
                "display_name": "VLSU consensus grades (imported)",
                "labels": labels,
                "blind_labels": None,
                "categories": [combined] if combined else [],
                "rationale": "",
                "time_spent_s": None,
                "verdict_action": None,
                "verdict_judge_id": None,
                "flagged": False,
                "at": None,
            }
        )
    return rec
