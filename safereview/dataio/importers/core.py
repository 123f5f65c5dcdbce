"""The import pipeline shared by every format: validate everything, then write in one go.

1. **Validate** every parsed :class:`Record` against the collection's taxonomy (task type,
   category, dimension names and labels), the text limits and the media folder (each file
   decoded for real, once per path). Problems are collected, never raised one at a time.
2. **Classify** against the database in the write transaction (one query for the
   collection's external ids): new, unchanged (same content hash), changed (a conflict
   unless ``update``); verdicts by (item, dimension, judge id); annotations by (item, user).
3. **Write** with Core ``executemany`` in chunks (no per-row ORM objects), after copying the
   accepted media files under the media root. Any problem left → roll back, delete the
   media files this run created, report ``FILE:LINE: field: message`` for each.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from safereview.dataio.importers.records import MEDIA_MODALITIES, Record
from safereview.dataio.media import MediaError, MediaInfo, insert_media_rows, probe, resolve_path, store_file
from safereview.db.bulk import bulk_insert
from safereview.db.models import (
    Annotation,
    AnnotationEvent,
    Assignment,
    ImportBatch,
    Item,
    JudgeConfig,
    Media,
    User,
    Verdict,
    utcnow,
)

CHUNK = 5000
VERDICT_STATUSES = ("ok", "unparseable", "error", "rule")
VERDICT_ACTIONS = ("confirm", "override")


class ImportFailed(Exception):
    """Raised by :meth:`ImportReport.raise_for_errors`; carries the report."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report
        super().__init__("\n".join(report.errors[:50]) or "import failed")


@dataclass
class ImportReport:
    """What an import did (or, when ``ok`` is False, why it wrote nothing)."""

    source: str
    format: str = ""
    collection: str = ""
    ok: bool = False
    batch_id: int | None = None
    rows: int = 0
    items_new: int = 0
    items_updated: int = 0
    items_unchanged: int = 0
    verdicts_new: int = 0
    verdicts_updated: int = 0
    verdicts_unchanged: int = 0
    annotations_new: int = 0
    annotations_updated: int = 0
    annotations_unchanged: int = 0
    users_created: int = 0
    media_files_new: int = 0
    media_rows_new: int = 0
    rejected: int = 0
    rejects_path: str | None = None
    priorities_refreshed: bool | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(
            self.items_new
            or self.items_updated
            or self.verdicts_new
            or self.verdicts_updated
            or self.annotations_new
            or self.annotations_updated
        )

    def raise_for_errors(self) -> ImportReport:
        if not self.ok:
            raise ImportFailed(self)
        return self

    def counts(self) -> list[tuple[str, int]]:
        return [
            ("rows read", self.rows),
            ("items new", self.items_new),
            ("items updated", self.items_updated),
            ("items unchanged", self.items_unchanged),
            ("verdicts new", self.verdicts_new),
            ("verdicts updated", self.verdicts_updated),
            ("verdicts unchanged", self.verdicts_unchanged),
            ("annotations new", self.annotations_new),
            ("annotations updated", self.annotations_updated),
            ("annotations unchanged", self.annotations_unchanged),
            ("users created", self.users_created),
            ("media files stored", self.media_files_new),
            ("media rows new", self.media_rows_new),
            ("rows rejected", self.rejected),
        ]


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def norm(text: str) -> str:
    """Case-, space-, dash- and underscore-insensitive key."""
    return re.sub(r"[^0-9a-z]", "", unicodedata.normalize("NFKC", text).lower())


_CODE_PREFIX = re.compile(r"^\s*[A-Za-z]{0,3}\d+\s*[:.)\-]\s*")


class TaxonomyIndex:
    """Look-ups that forgive case, spaces, '-'/'_' and code prefixes ('C9: ...')."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self._tt_cache: dict[str, str | None] = {}
        self._cat_cache: dict[str, tuple[str, str] | None] = {}
        self.task_types: dict[str, str] = {}
        self.task_outputs: dict[str, list[str]] = {}
        for tt in spec["task_types"]:
            self.task_types.setdefault(norm(tt["id"]), tt["id"])
            self.task_types.setdefault(norm(tt["name"]), tt["id"])
            self.task_outputs[tt["id"]] = list(tt.get("outputs", []))
        self.categories: dict[str, tuple[str, str]] = {}
        self.subs_of: dict[str, set[str]] = {}
        for cat in spec["categories"]:
            for key in (cat["id"], cat["name"]):
                self.categories.setdefault(norm(key), (cat["name"], ""))
            self.subs_of[cat["name"]] = set()
            for sub in cat["subcategories"]:
                self.subs_of[cat["name"]].add(sub["name"])
                for key in (sub["id"], sub["name"]):
                    self.categories.setdefault(norm(key), (cat["name"], sub["name"]))
        self.dims: dict[str, set[str]] = {d["name"]: set(d["labels"]) for d in spec["dimensions"]}
        self.dim_labels: dict[str, list[str]] = {d["name"]: list(d["labels"]) for d in spec["dimensions"]}

    def task_type(self, text: str) -> str | None:
        try:
            return self._tt_cache[text]
        except KeyError:
            hit = self._tt_cache[text] = self.task_types.get(norm(text))
            return hit

    def task_type_from_path(self, path: Path) -> str | None:
        """The task type named by the file stem or one of its parent folders."""
        candidates = [path.stem, *[p.name for p in path.resolve().parents][:3]]
        for cand in candidates:
            hit = self.task_type(cand)
            if hit:
                return hit
        # names with extra words, e.g. "bagel_composite_unsafe_outputs": longest contained match wins
        for cand in candidates:
            key = norm(cand)
            found = [(len(k), v) for k, v in self.task_types.items() if k and k in key]
            if found:
                return max(found)[1]
        return None

    def category(self, text: str) -> tuple[str, str] | None:
        try:
            return self._cat_cache[text]
        except KeyError:
            hit = self._cat_cache[text] = self._category(text)
            return hit

    def _category(self, text: str) -> tuple[str, str] | None:
        for cand in (text, _CODE_PREFIX.sub("", text)):
            hit = self.categories.get(norm(cand))
            if hit:
                return hit
        for sep in ("/", ">", "|", "::"):
            if sep in text:
                parts = [p for p in text.split(sep) if p.strip()]
                if parts:
                    sub = self._category(parts[-1])
                    if sub:
                        return sub
        return None


@dataclass
class Options:
    file_label: str
    fmt: str
    media_dir: Path
    media_root: Path
    max_image_pixels: int
    max_text_chars: int
    update: bool
    skip_invalid: bool
    task_type: str | None
    model: str | None
    location_note: str = ""  # "(parquet row index, 0-based)"
    id_by_task_type: bool = False  # Uni-SafeBench: external id = "<task type>/<id>"
    max_rows: int = 2_000_000  # SAFEREVIEW_MAX_IMPORT_ROWS: one import is one transaction held in memory


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


class Validator:
    def __init__(self, tax: TaxonomyIndex, opts: Options) -> None:
        self.tax = tax
        self.opts = opts
        self.media_cache: dict[tuple[str, str], MediaInfo | str] = {}
        self.seen_ids: dict[str, int] = {}
        self.base = opts.media_dir.resolve()

    def media(self, modality: str, ref: str) -> MediaInfo | str:
        key = (modality, ref)
        hit = self.media_cache.get(key)
        if hit is not None:
            return hit
        try:
            real = resolve_path(ref, self.base)
            rkey = (modality, str(real))
            hit = self.media_cache.get(rkey)
            if hit is None:
                hit = probe(real, modality, max_image_pixels=self.opts.max_image_pixels, original_name=Path(ref).name)
                self.media_cache[rkey] = hit
        except MediaError as exc:
            hit = str(exc)
        self.media_cache[key] = hit
        return hit

    def _text(self, rec: Record, field_name: str, text: str) -> None:
        if len(text) > self.opts.max_text_chars:
            rec.error(field_name, f"text of {len(text)} characters exceeds the limit of {self.opts.max_text_chars}")
        if "\x00" in text:
            rec.error(field_name, "text contains a NUL character")

    def _parts(self, rec: Record, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for part in parts:
            fname = part.get("_field", "?")
            if part["modality"] == "text":
                self._text(rec, fname, part["text"])
                out.append({"modality": "text", "text": part["text"]})
                continue
            hit = self.media(part["modality"], part["path"])
            if isinstance(hit, str):
                rec.error(fname, hit)
                continue
            rec.media.append(hit)
            out.append({"modality": part["modality"], "media": hit.sha256, "name": Path(part["path"]).name})
        return out

    def record(self, rec: Record) -> None:
        """Validate and normalise one record in place (errors land on ``rec.errors``)."""
        if rec.kind == "item":
            self._item(rec)
        if rec.external_id:
            if len(rec.external_id) > 200:
                rec.error("id", "longer than 200 characters")
            if rec.kind == "item":
                first = self.seen_ids.get(rec.external_id)
                if first is not None:
                    rec.error("id", f"duplicate id {rec.external_id!r} (first at line {first})")
                else:
                    self.seen_ids[rec.external_id] = rec.line
        self._verdicts(rec)
        self._annotations(rec)

    def _item(self, rec: Record) -> None:
        tax = self.tax
        task_type = rec.task_type or self.opts.task_type
        tt_id = ""
        if task_type:
            hit = tax.task_type(task_type)
            if hit is None and tax.task_types:
                known = ", ".join(t["id"] for t in tax.spec["task_types"])
                rec.error("task_type", f"unknown task type {task_type!r}; known: {known}")
            tt_id = hit or (task_type if not tax.task_types else "")
        elif len(tax.spec["task_types"]) == 1:
            tt_id = tax.spec["task_types"][0]["id"]
        elif tax.task_types:
            rec.error("task_type", "required (give it in the row, or --task-type)")
        category = subcategory = ""
        if rec.category:
            hit_c = tax.category(rec.category)
            if hit_c is None and tax.categories:
                rec.error("category", f"unknown category {rec.category!r} for taxonomy {tax.spec['name']!r}")
            elif hit_c is None:
                category = rec.category
            else:
                category, subcategory = hit_c
        if rec.subcategory:
            hit_s = tax.category(rec.subcategory)
            if hit_s is None or not hit_s[1]:
                if tax.categories:
                    rec.error("subcategory", f"unknown subcategory {rec.subcategory!r}")
                else:
                    subcategory = rec.subcategory
            elif category and hit_s[0] != category:
                rec.error("subcategory", f"{hit_s[1]!r} is not a subcategory of {category!r}")
            else:
                category, subcategory = hit_s
        if self.opts.id_by_task_type and rec.external_id and tt_id:
            # Uni-SafeBench numbers rows per task file: "<task type>/<id>" keeps the 7 files apart.
            rec.external_id = f"{tt_id}/{rec.external_id}"
        model = rec.model or self.opts.model or ""
        if len(model) > 200:
            rec.error("model", "longer than 200 characters")
        if len(category) > 200 or len(subcategory) > 200:
            rec.error("category", "longer than 200 characters")
        prompt = self._parts(rec, rec.prompt)
        response = self._parts(rec, rec.response)
        if not prompt and not rec.errors:
            rec.error("prompt", "an item needs at least one prompt part")
        in_mods = "+".join(sorted({p["modality"] for p in prompt}))
        out_mods = "+".join(sorted({p["modality"] for p in response}))
        if not out_mods and tt_id:
            out_mods = "+".join(sorted(set(tax.task_outputs.get(tt_id, []))))
        try:
            pj = _dumps(prompt)
            rj = _dumps(response)
            mj = json.dumps(rec.meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")) if rec.meta else "{}"
        except (TypeError, ValueError) as exc:
            rec.error("meta", f"not JSON-serialisable: {exc}")
            return
        if "\\u0000" in mj:
            rec.error("meta", "contains a NUL character")
        refused = "1" if rec.refused else "0"
        key = "\x1f".join((tt_id, category, subcategory, model, in_mods, out_mods, refused, pj, rj, mj))
        content = {
            "task_type": tt_id,
            "category": category,
            "subcategory": subcategory,
            "model": model,
            "input_modalities": in_mods,
            "output_modalities": out_mods,
            "prompt": prompt,
            "response": response,
            "refused": rec.refused,
            "meta": rec.meta,
            "content_hash": hashlib.sha256(key.encode("utf-8")).hexdigest(),
            "external_id": rec.external_id,
            # the same values serialised once, reused by the bulk insert
            "_json": {"prompt": pj, "response": rj, "meta": mj},
        }
        rec.item = content

    def _verdicts(self, rec: Record) -> None:
        seen: set[tuple[str, str]] = set()
        for v in rec.verdicts:
            where = v["_field"]
            dim, label, judge = v["dimension"], v["label"], v["judge_id"]
            if not judge:
                rec.error(f"{where}.judge_id" if "[" in where else "judge_id", "required for every verdict")
            elif len(judge) > 80:
                rec.error("judge_id", "longer than 80 characters")
            if dim not in self.tax.dims:
                rec.error(
                    where if "[" not in where else f"{where}.dimension",
                    f"unknown dimension {dim!r}; taxonomy {self.tax.spec['name']!r} has {', '.join(self.tax.dims)}",
                )
                continue
            status = v["status"] or ("ok" if label is not None else "unparseable")
            if status not in VERDICT_STATUSES:
                rec.error(f"{where}.status", f"expected one of {', '.join(VERDICT_STATUSES)}, got {status!r}")
            v["status"] = status
            if label is not None:
                label = label.strip()
                if label not in self.tax.dims[dim]:
                    lowered = {x.lower(): x for x in self.tax.dims[dim]}
                    if label.lower() in lowered:
                        label = lowered[label.lower()]
                    else:
                        rec.error(
                            where if "[" not in where else f"{where}.label",
                            f"label {label!r} not allowed for {dim}; expected one of "
                            f"{', '.join(self.tax.dim_labels[dim])}",
                        )
                v["label"] = label
            elif status in ("ok", "rule"):
                rec.error(
                    where if "[" not in where else f"{where}.label",
                    "a verdict without a label needs status unparseable or error",
                )
            p = v["probability"]
            if p is not None and not 0.0 <= p <= 1.0:
                rec.error(
                    f"{where}.prob" if "[" not in where else f"{where}.probability", f"probability {p} outside [0, 1]"
                )
            probs = v["probs"]
            if probs is not None:
                bad = [
                    k
                    for k, x in probs.items()
                    if k not in self.tax.dims[dim]
                    or not isinstance(x, int | float)
                    or isinstance(x, bool)
                    or not 0.0 <= float(x) <= 1.0
                ]
                if bad:
                    rec.error(f"{where}.probs", f"labels must be of {dim} and values in [0, 1]; bad: {bad[:3]}")
            for key in ("rationale", "raw_output", "intent"):
                if "\x00" in v[key]:
                    rec.error(f"{where}.{key}", "contains a NUL character")
            if judge and dim:
                if (dim, judge) in seen:
                    rec.error(where, f"two verdicts for dimension {dim!r} by judge {judge!r}")
                seen.add((dim, judge))

    def _annotations(self, rec: Record) -> None:
        seen: set[str] = set()
        for a in rec.annotations:
            where = a["_field"]
            name = a["annotator"]
            ufield = "annotator" if where == "annotator" else f"{where}.annotator"
            if not name:
                rec.error(ufield, "required")
                continue
            problem = username_problem(name)
            if problem:
                rec.error(ufield, problem)
                continue
            a["annotator"] = unicodedata.normalize("NFC", name.strip())
            if a["annotator"] in seen:
                rec.error(ufield, f"two annotations by {a['annotator']!r} for one item")
            seen.add(a["annotator"])
            for key in ("labels", "blind_labels"):
                labels = a[key]
                if labels is None:
                    if key == "labels":
                        rec.error(f"{where}.labels", "required")
                    continue
                if key == "labels" and not labels:
                    rec.error(
                        f"{where}.labels" if where != "annotator" else "label.<dimension>",
                        "at least one label is required",
                    )
                a[key] = self._labels(rec, labels, where, key, a)
            cats = []
            for c in a["categories"]:
                hit = self.tax.category(c)
                if hit is None:
                    if self.tax.categories:
                        rec.error(
                            f"{where}.categories" if where != "annotator" else "categories", f"unknown category {c!r}"
                        )
                    else:
                        cats.append(c)
                else:
                    cats.append(hit[1] or hit[0])
            a["categories"] = list(dict.fromkeys(cats))
            if a["verdict_action"] is not None and a["verdict_action"] not in VERDICT_ACTIONS:
                rec.error(f"{where}.verdict_action", f"expected confirm or override, got {a['verdict_action']!r}")
            if a["time_spent_s"] is not None and a["time_spent_s"] < 0:
                rec.error(f"{where}.time_spent_s", "must not be negative")
            if a["at"] is not None:
                try:
                    at = datetime.fromisoformat(a["at"])
                    a["at"] = at if at.tzinfo else at.replace(tzinfo=UTC)
                except ValueError:
                    rec.error(f"{where}.at", f"expected an ISO 8601 time, got {a['at']!r}")
            if "\x00" in a["rationale"]:
                rec.error(f"{where}.rationale", "contains a NUL character")

    def _labels(self, rec: Record, labels: dict[str, Any], where: str, key: str, ann: dict[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for dim, label in labels.items():
            if ann.get("_label_fields"):
                fname = ann["_label_fields"].get(dim, where)
            elif where == "annotator":
                fname = f"{'label' if key == 'labels' else 'blind'}.{dim}"
            else:
                fname = f"{where}.{key}.{dim}"
            if dim not in self.tax.dims:
                rec.error(
                    fname,
                    f"unknown dimension {dim!r}; taxonomy {self.tax.spec['name']!r} has {', '.join(self.tax.dims)}",
                )
                continue
            if not isinstance(label, str):
                rec.error(fname, "expected a label string")
                continue
            lab = label.strip()
            if lab not in self.tax.dims[dim]:
                lowered = {x.lower(): x for x in self.tax.dims[dim]}
                if lab.lower() not in lowered:
                    rec.error(
                        fname,
                        f"label {lab!r} not allowed for {dim}; expected one of {', '.join(self.tax.dim_labels[dim])}",
                    )
                    continue
                lab = lowered[lab.lower()]
            out[dim] = lab
        return out


def username_problem(name: str) -> str | None:
    """The same rules as ``workflow.auth.validate_username`` (kept here so import has no auth dependency)."""
    n = unicodedata.normalize("NFC", name.strip())
    if not n:
        return "required"
    if len(n) > 80:
        return "username longer than 80 characters"
    for ch in n:
        if unicodedata.category(ch)[0] in ("C", "Z") and ch != " ":
            return "username contains control, format or separator characters"
    return None


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _chunks(seq: list[Any], n: int = CHUNK) -> Iterable[list[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _verdict_key(v: dict[str, Any]) -> tuple[Any, ...]:
    return (
        v["label"],
        v["status"],
        _round(v["probability"]),
        _canon(v["probs"]),
        _round(v["score"]),
        v["rationale"],
        v["raw_output"],
        v["intent"],
        v["judge_version"],
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 9)


def _canon(d: Any) -> str:
    return json.dumps(d, sort_keys=True) if d is not None else ""


def _ann_key(labels: Any, blind: Any, categories: Any, rationale: str) -> tuple[str, str, str, str]:
    return (_canon(labels or {}), _canon(blind), _canon(list(categories or [])), rationale or "")


def insert_tuples(
    conn: sa.Connection,
    table: sa.Table,
    cols: list[str],
    rows: list[tuple[Any, ...]],
    *,
    const: dict[str, Any] | None = None,
) -> None:
    """Bulk rows given as tuples already in database form (no per-value processing)."""
    if rows:
        bulk_insert(conn, table, cols, rows, const=const)


def fast_insert(
    conn: sa.Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    *,
    raw: Iterable[str] = (),
    const: dict[str, Any] | None = None,
) -> None:
    """Bulk dict rows through ``db.bulk.bulk_insert``, each value through its column's bind processor.

    ``raw`` columns are already in database form (JSON text serialised once during validation).
    """
    if not rows:
        return
    cols = list(rows[0])
    get = itemgetter(*cols)
    bulk_insert(conn, table, cols, map(get, rows), const=const, process=set(cols) - set(raw))


def _in_chunks(conn: sa.Connection, stmt_for: Any, values: list[Any]) -> list[Any]:
    rows: list[Any] = []
    for chunk in _chunks(values, 900):
        rows.extend(conn.execute(stmt_for(chunk)).all())
    return rows


def write(
    conn: sa.Connection,
    session: Session,
    records: list[Record],
    *,
    collection_id: int,
    opts: Options,
    report: ImportReport,
    source_sha256: str,
    user: str,
    created_files: list[Path],
    prior_rejected: int = 0,
) -> list[Record]:
    """Classify and write; returns the records rejected here (conflicts, missing items).

    When ``opts.skip_invalid`` is False and any record fails, nothing is written and the
    failures are returned for the caller to report (the caller rolls back).
    """
    item_t = Item.__table__  # type: ignore[attr-defined]
    verdict_t = Verdict.__table__  # type: ignore[attr-defined]
    now = utcnow()

    existing: dict[str, tuple[int, str]] = {
        ext: (iid, h)
        for iid, ext, h in conn.execute(
            sa.select(item_t.c.id, item_t.c.external_id, item_t.c.content_hash).where(
                item_t.c.collection_id == collection_id
            )
        ).all()
    }

    rejected: list[Record] = []
    accepted: list[Record] = []
    for rec in records:
        if rec.kind != "item":
            continue
        assert rec.item is not None
        hit = existing.get(rec.external_id)
        if hit is None:
            rec.op = "new"  # type: ignore[attr-defined]
        elif hit[1] == rec.item["content_hash"]:
            rec.op = "same"  # type: ignore[attr-defined]
        elif opts.update:
            rec.op = "update"  # type: ignore[attr-defined]
        else:
            rec.error(
                "id",
                f"item {rec.external_id!r} already exists with different content; "
                "not overwritten (use --update to replace it)",
            )
            rejected.append(rec)
            continue
        accepted.append(rec)
    known_ids = set(existing) | {r.external_id for r in accepted}
    for rec in records:
        if rec.kind == "ref":
            if rec.external_id not in known_ids:
                rec.error("item_id", f"no item {rec.external_id!r} in this collection or file")
                rejected.append(rec)
            else:
                accepted.append(rec)

    # Existing verdicts/annotations of items that were already there.
    touched_existing = sorted(
        {existing[r.external_id][0] for r in accepted if r.external_id in existing and (r.verdicts or r.annotations)}
    )
    old_verdicts: dict[tuple[int, str, str], tuple[int, tuple[Any, ...]]] = {}
    if touched_existing and any(r.verdicts for r in accepted):
        cols = [
            verdict_t.c.id,
            verdict_t.c.item_id,
            verdict_t.c.dimension,
            verdict_t.c.judge_id,
            verdict_t.c.label,
            verdict_t.c.status,
            verdict_t.c.probability,
            verdict_t.c.probs,
            verdict_t.c.score,
            verdict_t.c.rationale,
            verdict_t.c.raw_output,
            verdict_t.c.intent,
            verdict_t.c.judge_version,
        ]
        for row in _in_chunks(conn, lambda ch: sa.select(*cols).where(verdict_t.c.item_id.in_(ch)), touched_existing):
            key = (
                row.label,
                row.status,
                _round(row.probability),
                _canon(row.probs),
                _round(row.score),
                row.rationale,
                row.raw_output,
                row.intent,
                row.judge_version,
            )
            old_verdicts[(row.item_id, row.dimension, row.judge_id)] = (row.id, key)

    usernames = sorted({a["annotator"] for r in accepted for a in r.annotations})
    user_t = User.__table__  # type: ignore[attr-defined]
    user_ids: dict[str, int] = {}
    if usernames:
        for uid, uname in _in_chunks(
            conn, lambda ch: sa.select(user_t.c.id, user_t.c.username).where(user_t.c.username.in_(ch)), usernames
        ):
            user_ids[uname] = uid
    ann_t = Annotation.__table__  # type: ignore[attr-defined]
    old_anns: dict[tuple[int, int], Any] = {}
    if touched_existing and user_ids:
        for row in _in_chunks(
            conn,
            lambda ch: sa.select(
                ann_t.c.id,
                ann_t.c.item_id,
                ann_t.c.user_id,
                ann_t.c.labels,
                ann_t.c.blind_labels,
                ann_t.c.categories,
                ann_t.c.rationale,
                ann_t.c.version,
            ).where(ann_t.c.item_id.in_(ch)),
            touched_existing,
        ):
            old_anns[(row.item_id, row.user_id)] = row

    # Compare verdicts/annotations of existing items.
    final: list[Record] = []
    seen_v: dict[tuple[str, str, str], int] = {}
    seen_a: dict[tuple[str, str], int] = {}
    no_plan: list[Any] = []
    for rec in sorted(accepted, key=lambda r: r.line):
        if not rec.verdicts and not rec.annotations:  # fast path: a bare item
            rec.v_plan = rec.a_plan = no_plan  # type: ignore[attr-defined]
            final.append(rec)
            continue
        iid = existing.get(rec.external_id, (None, ""))[0]
        rec_ok = True
        for v in rec.verdicts:
            first = seen_v.setdefault((rec.external_id, v["dimension"], v["judge_id"]), rec.line)
            if first != rec.line:
                rec.error(
                    v["_field"],
                    f"a verdict of judge {v['judge_id']!r} for {v['dimension']!r} on item "
                    f"{rec.external_id!r} is already given at line {first}",
                )
                rec_ok = False
        for a in rec.annotations:
            first = seen_a.setdefault((rec.external_id, a["annotator"]), rec.line)
            if first != rec.line:
                rec.error(
                    a["_field"],
                    f"an annotation by {a['annotator']!r} on item {rec.external_id!r} is already given at line {first}",
                )
                rec_ok = False
        v_plan: list[tuple[str, dict[str, Any], int | None]] = []
        for v in rec.verdicts:
            old = old_verdicts.get((iid, v["dimension"], v["judge_id"])) if iid is not None else None
            if old is None:
                v_plan.append(("new", v, None))
            elif old[1] == _verdict_key(v):
                v_plan.append(("same", v, old[0]))
            elif opts.update:
                v_plan.append(("update", v, old[0]))
            else:
                rec.error(
                    v["_field"],
                    f"verdict of judge {v['judge_id']!r} for {v['dimension']!r} differs "
                    "from the stored one; not overwritten (use --update)",
                )
                rec_ok = False
        a_plan: list[tuple[str, dict[str, Any], Any]] = []
        for a in rec.annotations:
            uid = user_ids.get(a["annotator"])
            old = old_anns.get((iid, uid)) if iid is not None and uid is not None else None
            if old is None:
                a_plan.append(("new", a, None))
            elif _ann_key(old.labels, old.blind_labels, old.categories, old.rationale) == _ann_key(
                a["labels"], a["blind_labels"], a["categories"], a["rationale"]
            ):
                a_plan.append(("same", a, old))
            elif opts.update:
                a_plan.append(("update", a, old))
            else:
                rec.error(
                    a["_field"],
                    f"annotation by {a['annotator']!r} differs from the stored one; not overwritten (use --update)",
                )
                rec_ok = False
        if not rec_ok:
            rejected.append(rec)
            continue
        rec.v_plan = v_plan  # type: ignore[attr-defined]
        rec.a_plan = a_plan  # type: ignore[attr-defined]
        final.append(rec)

    # A ref row for an item of this file that got rejected above has nothing to attach to.
    final_ids = set(existing) | {r.external_id for r in final if r.kind == "item"}
    for rec in list(final):
        if rec.kind == "ref" and rec.external_id not in final_ids:
            rec.error("item_id", f"item {rec.external_id!r} was rejected")
            final.remove(rec)
            rejected.append(rec)

    if rejected and not opts.skip_invalid:
        return rejected
    new_items = [r for r in final if r.kind == "item" and r.op == "new"]  # type: ignore[attr-defined]
    upd_items = [r for r in final if r.kind == "item" and r.op == "update"]  # type: ignore[attr-defined]
    report.items_unchanged = sum(1 for r in final if r.kind == "item" and r.op == "same")  # type: ignore[attr-defined]

    plans_change = bool(new_items or upd_items) or any(
        op != "same" for r in final for plan in (r.v_plan, r.a_plan) for op, _, _ in plan
    )  # type: ignore[attr-defined]
    if not plans_change:
        for r in final:
            report.verdicts_unchanged += sum(1 for op, _, _ in r.v_plan if op == "same")  # type: ignore[attr-defined]
            report.annotations_unchanged += sum(1 for op, _, _ in r.a_plan if op == "same")  # type: ignore[attr-defined]
        return rejected

    # ---- media files, then rows ------------------------------------------------------
    media: dict[str, MediaInfo] = {}
    for rec in final:
        if rec.media and rec.kind == "item" and rec.op in ("new", "update"):  # type: ignore[attr-defined]
            for info in rec.media:
                media.setdefault(info.sha256, info)
    for info in media.values():
        if store_file(info, opts.media_root):
            created_files.append(opts.media_root / info.relpath)
    report.media_files_new = len(created_files)
    report.media_rows_new = insert_media_rows(conn, list(media.values()))

    batch_t = ImportBatch.__table__  # type: ignore[attr-defined]
    batch_id = conn.execute(
        batch_t.insert()
        .values(
            source=opts.file_label,
            source_sha256=source_sha256,
            format=opts.fmt,
            collection_id=collection_id,
            created_by=user,
            created_at=now,
        )
        .returning(batch_t.c.id)
    ).scalar_one()
    report.batch_id = batch_id

    item_cols = (
        "task_type",
        "category",
        "subcategory",
        "model",
        "input_modalities",
        "output_modalities",
        "prompt",
        "response",
        "refused",
        "meta",
        "content_hash",
    )
    if new_items:
        rows = []
        # tuples in database form: JSON already serialised during validation, bool as is
        for rec in new_items:
            it = rec.item
            assert it is not None
            js = it["_json"]
            rows.append(
                (
                    rec.external_id,
                    it["task_type"],
                    it["category"],
                    it["subcategory"],
                    it["model"],
                    it["input_modalities"],
                    it["output_modalities"],
                    js["prompt"],
                    js["response"],
                    bool(it["refused"]),
                    js["meta"],
                    it["content_hash"],
                )
            )
        insert_tuples(
            conn,
            item_t,
            [
                "external_id",
                "task_type",
                "category",
                "subcategory",
                "model",
                "input_modalities",
                "output_modalities",
                "prompt",
                "response",
                "refused",
                "meta",
                "content_hash",
            ],
            rows,
            const={
                "collection_id": collection_id,
                "import_batch_id": batch_id,
                "priority": 0.0,
                "slots_taken": 0,
                "created_at": now,
            },
        )
        report.items_new = len(new_items)
    if upd_items:
        stmt = (
            item_t.update()
            .where(item_t.c.id == sa.bindparam("_id"))
            .values(**{k: sa.bindparam(k) for k in item_cols}, import_batch_id=sa.bindparam("_batch"))
        )
        rows = [
            {"_id": existing[r.external_id][0], "_batch": batch_id, **{k: r.item[k] for k in item_cols}}
            for r in upd_items
        ]  # type: ignore[index]
        for chunk in _chunks(rows):
            conn.execute(stmt, chunk)
        report.items_updated = len(upd_items)
        report.notes.append(
            f"{len(upd_items)} existing item(s) updated with changed content (--update); "
            "verdicts and annotations they already had were kept"
        )

    ids = {k: v[0] for k, v in existing.items()}
    if new_items and any(r.verdicts or r.annotations for r in final):  # ids only needed to attach those
        for iid, ext in conn.execute(
            sa.select(item_t.c.id, item_t.c.external_id).where(
                item_t.c.collection_id == collection_id, item_t.c.import_batch_id == batch_id
            )
        ).all():
            ids[ext] = iid

    # ---- verdicts --------------------------------------------------------------------
    v_new: list[tuple[Any, ...]] = []
    v_upd: list[dict[str, Any]] = []
    touched: set[int] = set()  # items whose verdicts change: only these need a new queue priority
    judges: dict[str, dict[str, Any]] = {}
    for rec in final:
        if not rec.v_plan:  # type: ignore[attr-defined]
            continue
        iid = ids[rec.external_id]
        for op, v, vid in rec.v_plan:  # type: ignore[attr-defined]
            if op == "same":
                report.verdicts_unchanged += 1
                continue
            judges.setdefault(v["judge_id"], v)
            touched.add(iid)
            if op == "new":
                v_new.append(
                    (
                        iid,
                        v["dimension"],
                        v["judge_id"],
                        v["judge_version"],
                        v["label"],
                        v["status"],
                        v["probability"],
                        None if v["probs"] is None else _dumps(v["probs"]),
                        v["score"],
                        v["rationale"],
                        v["raw_output"],
                        v["intent"],
                    )
                )
                continue
            row = {
                "dimension": v["dimension"],
                "judge_id": v["judge_id"],
                "judge_version": v["judge_version"],
                "label": v["label"],
                "status": v["status"],
                "probability": v["probability"],
                "probs": v["probs"],
                "score": v["score"],
                "rationale": v["rationale"],
                "raw_output": v["raw_output"],
                "intent": v["intent"],
            }
            row["import_batch_id"] = batch_id
            row["_id"] = vid
            v_upd.append(row)
    if judges:
        _ensure_judges(conn, judges, now)
    insert_tuples(
        conn,
        verdict_t,
        [
            "item_id",
            "dimension",
            "judge_id",
            "judge_version",
            "label",
            "status",
            "probability",
            "probs",
            "score",
            "rationale",
            "raw_output",
            "intent",
        ],
        v_new,
        const={"import_batch_id": batch_id, "calibration_id": None, "created_at": now},
    )
    if v_upd:
        keys = [k for k in v_upd[0] if k != "_id"]
        stmt = (
            verdict_t.update()
            .where(verdict_t.c.id == sa.bindparam("_id"))
            .values(**{k: sa.bindparam(f"v_{k}") for k in keys})
        )
        for chunk in _chunks([{"_id": r["_id"], **{f"v_{k}": r[k] for k in keys}} for r in v_upd]):
            conn.execute(stmt, chunk)
        report.notes.append(f"{len(v_upd)} verdict(s) replaced (--update)")
    report.verdicts_new, report.verdicts_updated = len(v_new), len(v_upd)

    # ---- annotations -----------------------------------------------------------------
    _write_annotations(conn, final, ids, user_ids, batch_id, now, report)

    conn.execute(
        batch_t.update()
        .where(batch_t.c.id == batch_id)
        .values(
            n_items=report.items_new + report.items_updated,
            n_verdicts=report.verdicts_new + report.verdicts_updated,
            n_annotations=report.annotations_new + report.annotations_updated,
            n_rejected=len(rejected) + prior_rejected,
            n_unchanged=report.items_unchanged,
        )
    )

    if touched:
        report.priorities_refreshed = _refresh_priorities(session, collection_id, touched)
    return rejected


def _ensure_judges(conn: sa.Connection, judges: dict[str, dict[str, Any]], now: datetime) -> None:
    """A ``judgeconfig`` row (protocol ``imported``) for every judge id seen, once."""
    jt = JudgeConfig.__table__  # type: ignore[attr-defined]
    have = set(conn.execute(sa.select(jt.c.id).where(jt.c.id.in_(list(judges)))).scalars())
    rows = [
        {
            "id": jid,
            "protocol": "imported",
            "model": v.get("judge_model", "")[:200],
            "prompt_version": v.get("judge_version", "")[:40],
            "params": {"source": "import"},
            "created_at": now,
        }
        for jid, v in judges.items()
        if jid not in have
    ]
    if rows:
        conn.execute(jt.insert(), rows)


def _write_annotations(
    conn: sa.Connection,
    final: list[Record],
    ids: dict[str, int],
    user_ids: dict[str, int],
    batch_id: int,
    now: datetime,
    report: ImportReport,
) -> None:
    ann_t = Annotation.__table__  # type: ignore[attr-defined]
    ev_t = AnnotationEvent.__table__  # type: ignore[attr-defined]
    asg_t = Assignment.__table__  # type: ignore[attr-defined]
    item_t = Item.__table__  # type: ignore[attr-defined]
    user_t = User.__table__  # type: ignore[attr-defined]

    plans = [(ids[r.external_id], op, a, old) for r in final for op, a, old in r.a_plan]  # type: ignore[attr-defined]
    report.annotations_unchanged += sum(1 for _, op, _, _ in plans if op == "same")
    plans = [p for p in plans if p[1] != "same"]
    if not plans:
        return
    missing = {}
    for _, _, a, _ in plans:
        if a["annotator"] not in user_ids:
            missing.setdefault(a["annotator"], a.get("display_name", ""))
    if missing:
        # Imported people get an unusable password hash ("!" prefix): they cannot sign in until
        # an admin resets the password (workflow.auth owns passwords).
        conn.execute(
            user_t.insert(),
            [
                {
                    "username": name,
                    "display_name": (disp or "")[:200],
                    "password_hash": "!" + secrets.token_hex(16),
                    "role": "annotator",
                    "disabled": False,
                    "created_at": now,
                    "last_login_at": None,
                }
                for name, disp in missing.items()
            ],
        )
        for uid, uname in conn.execute(
            sa.select(user_t.c.id, user_t.c.username).where(user_t.c.username.in_(list(missing)))
        ):
            user_ids[uname] = uid
        report.users_created = len(missing)
        report.notes.append("created user(s) without a usable password: " + ", ".join(sorted(missing)[:20]))

    def snapshot(a: dict[str, Any]) -> dict[str, Any]:
        return {
            "labels": a["labels"],
            "blind_labels": a["blind_labels"],
            "categories": a["categories"],
            "rationale": a["rationale"],
            "verdict_action": a["verdict_action"],
            "time_spent_s": a["time_spent_s"],
            "import_batch_id": batch_id,
        }

    new_rows, upd_rows, events = [], [], []
    for iid, op, a, old in plans:
        uid = user_ids[a["annotator"]]
        at = a["at"] or now
        if op == "new":
            new_rows.append(
                {
                    "item_id": iid,
                    "user_id": uid,
                    "labels": a["labels"],
                    "blind_labels": a["blind_labels"],
                    "categories": a["categories"],
                    "rationale": a["rationale"],
                    "flagged": bool(a["flagged"]),
                    "verdict_action": a["verdict_action"],
                    "verdict_judge_id": a["verdict_judge_id"],
                    "time_spent_s": a["time_spent_s"],
                    "source": "import",
                    "import_batch_id": batch_id,
                    "version": 1,
                    "created_at": at,
                    "updated_at": at,
                }
            )
        else:
            upd_rows.append((old, a, uid, iid))
    if new_rows:
        fast_insert(conn, ann_t, new_rows)
        got = {
            (r.item_id, r.user_id): r.id
            for r in conn.execute(
                sa.select(ann_t.c.id, ann_t.c.item_id, ann_t.c.user_id).where(ann_t.c.import_batch_id == batch_id)
            ).all()
        }
        snap = {(iid, user_ids[a["annotator"]]): a for iid, op, a, _ in plans if op == "new"}
        for key, a in snap.items():
            events.append(
                {
                    "annotation_id": got[key],
                    "item_id": key[0],
                    "actor_id": key[1],
                    "action": "import",
                    "version": 1,
                    "before": None,
                    "after": snapshot(a),
                    "at": now,
                }
            )
        # Assignments: a done slot in the "imported" stratum; bump Item.slots_taken for each new one.
        pairs = list(snap)
        have: dict[tuple[int, int], Any] = {}
        for row in _in_chunks(
            conn,
            lambda ch: sa.select(asg_t.c.id, asg_t.c.item_id, asg_t.c.user_id, asg_t.c.status).where(
                asg_t.c.item_id.in_(ch)
            ),
            sorted({p[0] for p in pairs}),
        ):
            have[(row.item_id, row.user_id)] = row
        asg_new, asg_done, bumps = [], [], {}
        for key in pairs:
            old_asg = have.get(key)
            if old_asg is None:
                asg_new.append(
                    {
                        "item_id": key[0],
                        "user_id": key[1],
                        "status": "done",
                        "stratum": "imported",
                        "sampling_prob": None,
                        "leased_at": now,
                        "lease_expires_at": None,
                        "completed_at": now,
                    }
                )
                bumps[key[0]] = bumps.get(key[0], 0) + 1
            elif old_asg.status != "done":
                asg_done.append({"_id": old_asg.id})
                if old_asg.status not in ("leased",):  # a leased slot is already counted
                    bumps[key[0]] = bumps.get(key[0], 0) + 1
        fast_insert(conn, asg_t, asg_new)
        if asg_done:
            conn.execute(
                asg_t.update()
                .where(asg_t.c.id == sa.bindparam("_id"))
                .values(status="done", completed_at=now, lease_expires_at=None),
                asg_done,
            )
        if bumps:
            stmt = (
                item_t.update()
                .where(item_t.c.id == sa.bindparam("_id"))
                .values(slots_taken=item_t.c.slots_taken + sa.bindparam("_n"))
            )
            for chunk in _chunks([{"_id": k, "_n": n} for k, n in bumps.items()]):
                conn.execute(stmt, chunk)
        report.annotations_new = len(new_rows)
    for old, a, uid, iid in upd_rows:
        before = {
            "labels": old.labels,
            "blind_labels": old.blind_labels,
            "categories": old.categories,
            "rationale": old.rationale,
        }
        res = conn.execute(
            ann_t.update()
            .where(ann_t.c.id == old.id, ann_t.c.version == old.version)
            .values(
                labels=a["labels"],
                blind_labels=a["blind_labels"],
                categories=a["categories"],
                rationale=a["rationale"],
                verdict_action=a["verdict_action"],
                time_spent_s=a["time_spent_s"],
                import_batch_id=batch_id,
                version=old.version + 1,
                updated_at=now,
            )
        )
        if res.rowcount != 1:
            raise RuntimeError(f"annotation {old.id} changed concurrently; import aborted")
        events.append(
            {
                "annotation_id": old.id,
                "item_id": iid,
                "actor_id": uid,
                "action": "import",
                "version": old.version + 1,
                "before": before,
                "after": snapshot(a),
                "at": now,
            }
        )
    if upd_rows:
        report.annotations_updated = len(upd_rows)
        report.notes.append(f"{len(upd_rows)} annotation(s) replaced (--update)")
    fast_insert(conn, ev_t, events)


def _refresh_priorities(session: Session, collection_id: int, item_ids: set[int]) -> bool:
    """Recompute the borderline priorities of the items whose verdicts changed (workflow.ordering scores)."""
    from safereview.workflow.ordering import refresh_priorities

    refresh_priorities(session, collection_id, item_ids)
    session.flush()
    return True


def media_kinds() -> tuple[str, ...]:
    return MEDIA_MODALITIES


def cleanup_files(conn_engine: sa.Engine, files: list[Path]) -> None:
    """Delete media files written by a failed import unless some committed row refers to them."""
    if not files:
        return
    media_t = Media.__table__  # type: ignore[attr-defined]
    shas = {f.name.split(".", 1)[0]: f for f in files}
    with conn_engine.connect() as conn:
        referenced = set(conn.execute(sa.select(media_t.c.sha256).where(media_t.c.sha256.in_(list(shas)))).scalars())
    for sha, f in shas.items():
        if sha not in referenced:
            f.unlink(missing_ok=True)


def now_monotonic() -> float:
    return time.perf_counter()
