"""Validation: every parsed record against the taxonomy, the limits and the media folder.

Nothing here touches the database. Each :class:`Record` is checked and normalised in
place: the item's content is resolved against the taxonomy (task type, category, dimension
names and labels), its text limits checked, its media decoded for real (once per path) and
its content hash computed; verdicts and annotations are checked the same way, usernames by
the account rule of ``workflow.auth``. Problems are collected on the record, never raised
one at a time, so one run reports every bad row.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safereview.dataio.importers.options import Options
from safereview.dataio.importers.records import Record
from safereview.dataio.importers.taxonomy_index import TaxonomyIndex
from safereview.dataio.media import MediaError, MediaInfo, probe, resolve_path
from safereview.workflow.errors import InvalidInput

VERDICT_STATUSES = ("ok", "unparseable", "error", "rule")
VERDICT_ACTIONS = ("confirm", "override")

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


PROB_TOLERANCE = 0.011  # probability vs probs[label], allowing two-decimal rounding


class Validator:
    """Checks and normalises parsed records in place; problems land on ``record.errors``."""

    def __init__(self, tax: TaxonomyIndex, opts: Options) -> None:
        self.tax = tax
        self.opts = opts
        self.media_cache: dict[tuple[str, str], MediaInfo | str] = {}
        self.seen_ids: dict[str, int] = {}
        self.usernames: dict[str, str | InvalidInput] = {}
        self._base: tuple[Path, Path] | None = None

    @property
    def base(self) -> Path:
        """The media folder, resolved (read when first needed: a parser may set it, as Inspect logs do)."""
        if self._base is None or self._base[0] != self.opts.media_dir:
            self._base = (self.opts.media_dir, self.opts.media_dir.resolve())
        return self._base[1]

    def username(self, name: str) -> str | InvalidInput:
        """The account rule of ``workflow.auth`` (checked once per distinct name)."""
        hit = self.usernames.get(name)
        if hit is None:
            # imported here: workflow.auth hashes a dummy password when loaded (~0.2 s of
            # argon2), which only files with annotations should pay for
            from safereview.workflow.auth import validate_username

            try:
                hit = validate_username(name)
            except InvalidInput as exc:
                hit = exc
            self.usernames[name] = hit
        return hit

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
                elif p is not None and label in probs and abs(float(probs[label]) - p) > PROB_TOLERANCE:
                    # probability is P(the label given); a file that stores P(unsafe) there says otherwise here
                    rec.error(
                        f"{where}.prob" if "[" not in where else f"{where}.probability",
                        f"probability {p} is not the probability of the label {label!r} ({probs[label]} in probs): "
                        "it must be P(label), not P(unsafe)",
                    )
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
            checked = self.username(name)
            if isinstance(checked, InvalidInput):
                rec.error(ufield, str(checked).removeprefix("username: "))
                continue
            a["annotator"] = checked
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
