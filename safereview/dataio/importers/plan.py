"""Planning: what a validated file changes, decided against the database in the write transaction.

One query for the collection's external ids classifies every item row: new, unchanged (same
content hash) or changed (a conflict unless ``--update``). Verdicts of items already stored
are matched by (item, dimension, judge id) under ``judge.store.verdict_key``, annotations by
(item, annotator), with the same three outcomes. Rows that conflict, or that refer to an
item that is neither stored nor imported, are rejected with a message on the record.

The result is an :class:`ImportPlan`; nothing is written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from safereview.dataio.importers.records import Record
from safereview.dataio.media import MediaInfo
from safereview.db.models import Annotation, Item
from safereview.judge.store import stored_verdicts, verdict_key

LOOKUP_CHUNK = 900  # ids per IN (...) look-up (SQLite's old limit of 999 bound values)


@dataclass
class ImportPlan:
    """What the write step will insert and update; counts of what stays as it is.

    Items are records whose ``item`` holds the validated content. Verdicts and annotations
    are the validated dicts, keyed by their item's external id (``existing`` gives the id
    of an item already stored; new items get theirs when written).
    """

    existing: dict[str, int] = field(default_factory=dict)  # external id -> id of a stored item
    new_items: list[Record] = field(default_factory=list)
    changed_items: list[Record] = field(default_factory=list)  # --update: content replaced
    unchanged_items: int = 0
    new_verdicts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (external id, verdict)
    changed_verdicts: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)  # (ext, verdict id, v)
    unchanged_verdicts: int = 0
    judges: dict[str, dict[str, Any]] = field(default_factory=dict)  # judge id -> its first new or changed verdict
    new_annotations: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (external id, annotation)
    changed_annotations: list[tuple[int, Any, dict[str, Any]]] = field(default_factory=list)  # (item, stored, new)
    unchanged_annotations: int = 0
    user_ids: dict[str, int] = field(default_factory=dict)  # annotators who have an account
    new_people: dict[str, str] = field(default_factory=dict)  # annotators to create: username -> display name
    media: list[MediaInfo] = field(default_factory=list)  # files of the new and changed items
    rejected: list[Record] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(
            self.new_items
            or self.changed_items
            or self.new_verdicts
            or self.changed_verdicts
            or self.new_annotations
            or self.changed_annotations
        )


def _canon(d: Any) -> str:
    return json.dumps(d, sort_keys=True) if d is not None else ""


def _annotation_key(labels: Any, blind: Any, categories: Any, rationale: str) -> tuple[str, str, str, str]:
    return (_canon(labels or {}), _canon(blind), _canon(list(categories or [])), rationale or "")


def _in_chunks(conn: sa.Connection, stmt_for: Any, values: list[Any]) -> list[Any]:
    rows: list[Any] = []
    for k in range(0, len(values), LOOKUP_CHUNK):
        rows.extend(conn.execute(stmt_for(values[k : k + LOOKUP_CHUNK])).all())
    return rows


def plan(conn: sa.Connection, records: list[Record], *, collection_id: int, update: bool) -> ImportPlan:
    """Classify validated ``records`` against the collection's stored rows.

    A record with a conflict lands in ``rejected`` (its message on the record) and nothing
    of it is planned; the caller decides whether that fails the whole import.
    """
    item_t = Item.__table__  # type: ignore[attr-defined]
    out = ImportPlan()
    stored: dict[str, tuple[int, str]] = {
        ext: (iid, h)
        for iid, ext, h in conn.execute(
            sa.select(item_t.c.id, item_t.c.external_id, item_t.c.content_hash).where(
                item_t.c.collection_id == collection_id
            )
        ).all()
    }
    out.existing = {ext: v[0] for ext, v in stored.items()}

    # ---- items ----------------------------------------------------------------------
    item_op: dict[int, str] = {}  # id(record) -> new | same | update
    accepted: list[Record] = []
    for rec in records:
        if rec.kind != "item":
            continue
        assert rec.item is not None
        hit = stored.get(rec.external_id)
        if hit is None:
            item_op[id(rec)] = "new"
        elif hit[1] == rec.item["content_hash"]:
            item_op[id(rec)] = "same"
        elif update:
            item_op[id(rec)] = "update"
        else:
            rec.error(
                "id",
                f"item {rec.external_id!r} already exists with different content; "
                "not overwritten (use --update to replace it)",
            )
            out.rejected.append(rec)
            continue
        accepted.append(rec)
    known_ids = set(stored) | {r.external_id for r in accepted}
    for rec in records:
        if rec.kind == "ref":
            if rec.external_id not in known_ids:
                rec.error("item_id", f"no item {rec.external_id!r} in this collection or file")
                out.rejected.append(rec)
            else:
                accepted.append(rec)

    # ---- what the stored items already have -----------------------------------------
    touched_existing = sorted(
        {out.existing[r.external_id] for r in accepted if r.external_id in stored and (r.verdicts or r.annotations)}
    )
    old_verdicts: dict[tuple[int, str, str], tuple[int, tuple[Any, ...]]] = {}
    if touched_existing and any(r.verdicts for r in accepted):
        old_verdicts = stored_verdicts(conn, touched_existing)

    annotators = {a["annotator"] for r in accepted for a in r.annotations}
    if annotators:
        from safereview.workflow.auth import user_ids  # loading it costs an argon2 hash: only when needed

        out.user_ids = user_ids(conn, annotators)
    old_anns: dict[tuple[int, int], Any] = {}
    if touched_existing and out.user_ids:
        ann_t = Annotation.__table__  # type: ignore[attr-defined]
        cols = [ann_t.c.id, ann_t.c.item_id, ann_t.c.user_id, ann_t.c.labels, ann_t.c.blind_labels]
        cols += [ann_t.c.categories, ann_t.c.rationale, ann_t.c.version, ann_t.c.source, ann_t.c.import_batch_id]
        for row in _in_chunks(conn, lambda ch: sa.select(*cols).where(ann_t.c.item_id.in_(ch)), touched_existing):
            old_anns[(row.item_id, row.user_id)] = row

    # ---- verdicts and annotations, record by record in file order --------------------
    final: list[Record] = []
    seen_v: dict[tuple[str, str, str], int] = {}
    seen_a: dict[tuple[str, str], int] = {}
    planned: dict[int, tuple[list[tuple[str, dict[str, Any], Any]], list[tuple[str, dict[str, Any], Any]]]] = {}
    for rec in sorted(accepted, key=lambda r: r.line):
        if not rec.verdicts and not rec.annotations:  # fast path: a bare item
            final.append(rec)
            continue
        iid = out.existing.get(rec.external_id)
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
        v_ops: list[tuple[str, dict[str, Any], Any]] = []
        for v in rec.verdicts:
            old = old_verdicts.get((iid, v["dimension"], v["judge_id"])) if iid is not None else None
            if old is None:
                v_ops.append(("new", v, None))
            elif old[1] == verdict_key(v):
                v_ops.append(("same", v, old[0]))
            elif update:
                v_ops.append(("update", v, old[0]))
            else:
                rec.error(
                    v["_field"],
                    f"verdict of judge {v['judge_id']!r} for {v['dimension']!r} differs "
                    "from the stored one; not overwritten (use --update)",
                )
                rec_ok = False
        a_ops: list[tuple[str, dict[str, Any], Any]] = []
        for a in rec.annotations:
            uid = out.user_ids.get(a["annotator"])
            old = old_anns.get((iid, uid)) if iid is not None and uid is not None else None
            if old is None:
                a_ops.append(("new", a, None))
            elif _annotation_key(old.labels, old.blind_labels, old.categories, old.rationale) == _annotation_key(
                a["labels"], a["blind_labels"], a["categories"], a["rationale"]
            ):
                a_ops.append(("same", a, old))
            elif update:
                a_ops.append(("update", a, old))
            else:
                rec.error(
                    a["_field"],
                    f"annotation by {a['annotator']!r} differs from the stored one; not overwritten (use --update)",
                )
                rec_ok = False
        if not rec_ok:
            out.rejected.append(rec)
            continue
        planned[id(rec)] = (v_ops, a_ops)
        final.append(rec)

    # A ref row for an item of this file that got rejected above has nothing to attach to.
    final_ids = set(stored) | {r.external_id for r in final if r.kind == "item"}
    for rec in list(final):
        if rec.kind == "ref" and rec.external_id not in final_ids:
            rec.error("item_id", f"item {rec.external_id!r} was rejected")
            final.remove(rec)
            out.rejected.append(rec)

    # ---- the plan ---------------------------------------------------------------------
    media: dict[str, MediaInfo] = {}
    for rec in final:
        op = item_op.get(id(rec))
        if op == "new":
            out.new_items.append(rec)
        elif op == "update":
            out.changed_items.append(rec)
        elif op == "same":
            out.unchanged_items += 1
        if op in ("new", "update"):
            for info in rec.media:
                media.setdefault(info.sha256, info)
        ops = planned.get(id(rec))
        if ops is None:
            continue
        v_ops, a_ops = ops
        ext = rec.external_id
        for vop, v, vid in v_ops:
            if vop == "same":
                out.unchanged_verdicts += 1
                continue
            out.judges.setdefault(v["judge_id"], v)
            if vop == "new":
                out.new_verdicts.append((ext, v))
            else:
                out.changed_verdicts.append((ext, vid, v))
        for aop, a, old in a_ops:
            if aop == "same":
                out.unchanged_annotations += 1
                continue
            if a["annotator"] not in out.user_ids:
                out.new_people.setdefault(a["annotator"], a.get("display_name", ""))
            if aop == "new":
                out.new_annotations.append((ext, a))
            else:
                out.changed_annotations.append((out.existing[ext], old, a))
    out.media = list(media.values())
    return out
