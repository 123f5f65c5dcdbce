"""Forgiving look-ups of task types, categories and labels in a collection's taxonomy."""

from __future__ import annotations

import itertools
import re
import unicodedata
from pathlib import Path
from typing import Any

from safereview.db.taxonomy import PRESETS


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
        preset = {t["id"]: t for t in PRESETS.get(spec.get("name", ""), {}).get("task_types", [])}
        for tt in spec["task_types"]:
            # aliases: a benchmark's own names (also for a preset stored before it listed them)
            aliases = [*tt.get("aliases", ()), *preset.get(tt["id"], {}).get("aliases", ())]
            for key in (tt["id"], tt["name"], *aliases):
                self.task_types.setdefault(norm(key), tt["id"])
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
        parents = [p.name for p in path.resolve().parents][:3]
        # a release folder such as VQA/safety_I_safety_T names the task with its parent
        candidates = [path.stem, *(f"{a}/{b}" for b, a in itertools.pairwise(parents)), *parents]
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
