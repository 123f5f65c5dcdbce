"""Planning: what a validated file changes, decided against the database in the write transaction.

The file is planned chunk by chunk (a :class:`Planner` per import keeps what later chunks
need: which verdicts and annotations the file already gave, which of its items were
rejected). Item rows are classified against the collection's stored items by external id:
new, unchanged (same content hash) or changed (a conflict unless ``--update``). Verdicts of
items already stored are matched by (item, dimension, judge id) under
``judge.store.verdict_key``, annotations by (item, annotator), with the same three
outcomes. Rows that conflict, or that refer to an item that is neither stored nor imported,
are rejected with a message on the record.

A row that only adds verdicts or annotations to an item (a *ref*) is planned once its item
is in the database: at once for an item stored before or written by an earlier chunk, at
the end of the file for an item of a later row. So when an item's own row and a ref row
give the same verdict, the ref row is the one rejected, wherever it stands in the file.

Each chunk's result is an :class:`ImportPlan`; nothing is written here.
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


class Planner:
    """Plans one import chunk by chunk in the caller's transaction (see the module docstring).

    ``item_lines`` maps the external id of every item row validated so far to its line (the
    validator's own map), for messages about a ref row repeating its item's verdict.
    """

    def __init__(self, conn: sa.Connection, *, collection_id: int, update: bool, item_lines: dict[str, int]) -> None:
        self.conn = conn
        self.collection_id = collection_id
        self.update = update
        self.item_lines = item_lines
        item_t = Item.__table__  # type: ignore[attr-defined]
        self._item_t = item_t
        # a new collection (every first import) has no stored items to look up
        self._any_stored = (
            conn.execute(sa.select(item_t.c.id).where(item_t.c.collection_id == collection_id).limit(1)).first()
            is not None
        )
        # (external id, dimension, judge) / (external id, annotator) given by the file's item rows,
        # kept as hashes (a million verdicts cost ~60 MB this way), and by its ref rows, with lines
        self._item_verdicts: set[int] = set()
        self._item_annotations: set[int] = set()
        self._ref_verdicts: dict[tuple[str, str, str], int] = {}
        self._ref_annotations: dict[tuple[str, str], int] = {}
        self._dropped: set[str] = set()  # item rows rejected for their content (a conflict)
        self._rejected: set[str] = set()  # new item rows rejected for a verdict or annotation conflict
        self._pending: list[Record] = []  # ref rows whose item comes later in the file

    def _stored(self, external_ids: list[str]) -> dict[str, tuple[int, str]]:
        """external id -> (id, content hash) of the collection's stored items among ``external_ids``."""
        t, cid = self._item_t, self.collection_id
        rows = _in_chunks(
            self.conn,
            lambda ch: sa.select(t.c.id, t.c.external_id, t.c.content_hash).where(
                t.c.collection_id == cid, t.c.external_id.in_(ch)
            ),
            sorted(set(external_ids)),
        )
        return {ext: (iid, h) for iid, ext, h in rows}

    def chunk(self, records: list[Record]) -> ImportPlan:
        """Plan a chunk of validated records (file order); refs to later items wait for :meth:`finish`."""
        items = [r for r in records if r.kind == "item"]
        refs = [r for r in records if r.kind == "ref"]
        stored = self._stored([r.external_id for r in items]) if self._any_stored and items else {}
        out = ImportPlan(existing={ext: v[0] for ext, v in stored.items()})
        item_op: dict[int, str] = {}  # id(record) -> new | same | update
        accepted: list[Record] = []
        pre_stored: set[str] = set(stored)
        for rec in items:
            assert rec.item is not None
            hit = stored.get(rec.external_id)
            if hit is None:
                item_op[id(rec)] = "new"
            elif hit[1] == rec.item["content_hash"]:
                item_op[id(rec)] = "same"
            elif self.update:
                item_op[id(rec)] = "update"
            else:
                rec.error(
                    "id",
                    f"item {rec.external_id!r} already exists with different content; "
                    "not overwritten (use --update to replace it)",
                )
                out.rejected.append(rec)
                self._dropped.add(rec.external_id)
                continue
            accepted.append(rec)
        if refs:
            found = self._stored([r.external_id for r in refs])
            for rec in refs:
                hit = found.get(rec.external_id)
                if hit is not None:
                    out.existing[rec.external_id] = hit[0]
                    pre_stored.add(rec.external_id)
                    accepted.append(rec)
                else:
                    self._pending.append(rec)
        self._plan_rows(out, accepted, item_op, pre_stored)
        return out

    def finish(self, *, written: bool) -> ImportPlan:
        """Plan the ref rows that waited for an item of a later row.

        ``written`` is False when earlier chunks were planned but not written (the import is
        failing anyway): refs to the file's own items are then checked for repeats only.
        """
        refs, self._pending = self._pending, []
        out = ImportPlan()
        if not refs:
            return out
        found = self._stored([r.external_id for r in refs])
        accepted: list[Record] = []
        for rec in refs:
            ext = rec.external_id
            hit = found.get(ext)
            if hit is not None:
                out.existing[ext] = hit[0]
                accepted.append(rec)
            elif not written and ext in self.item_lines and ext not in self._dropped | self._rejected:
                accepted.append(rec)  # its item was planned, not written: checked for repeats only
            elif ext in self._rejected:
                rec.error("item_id", f"item {ext!r} was rejected")
                out.rejected.append(rec)
            else:
                rec.error("item_id", f"no item {ext!r} in this collection or file")
                out.rejected.append(rec)
        self._plan_rows(out, accepted, {}, set(out.existing))
        return out

    def _given_at(
        self, rec: Record, key: tuple[str, ...], ref_lines: dict[Any, int], item_hashes: set[int]
    ) -> int | None:
        """The line that already gave this verdict/annotation key, if another row did.

        ``ref_lines`` maps keys given by ``item_id`` rows to their lines; ``item_hashes`` holds
        the hashed keys that item rows gave (their line is the item's own line).
        """
        first = ref_lines.get(key)
        if first is None and rec.kind == "ref" and hash(key) in item_hashes:
            first = self.item_lines.get(rec.external_id)
        return first if first is not None and first != rec.line else None

    @staticmethod
    def _mark_given(rec: Record, key: tuple[str, ...], ref_lines: dict[Any, int], item_hashes: set[int]) -> None:
        """Record that ``rec`` gave ``key``, where :meth:`_given_at` looks for it."""
        if rec.kind == "ref":
            ref_lines[key] = rec.line
        else:
            item_hashes.add(hash(key))

    def _plan_rows(
        self, out: ImportPlan, accepted: list[Record], item_op: dict[int, str], stored_ids: set[str]
    ) -> None:
        """Verdicts and annotations of the accepted rows (item rows first, then refs), and the plan."""
        conn, update = self.conn, self.update
        # ---- what the stored items already have -------------------------------------
        touched_existing = sorted(
            {
                out.existing[r.external_id]
                for r in accepted
                if r.external_id in stored_ids and (r.verdicts or r.annotations)
            }
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

        # ---- verdicts and annotations, row by row ------------------------------------
        final: list[Record] = []
        planned: dict[int, tuple[list[tuple[str, dict[str, Any], Any]], list[tuple[str, dict[str, Any], Any]]]] = {}
        for rec in accepted:
            if not rec.verdicts and not rec.annotations:  # fast path: a bare item
                final.append(rec)
                continue
            ext = rec.external_id
            iid = out.existing.get(ext)
            rec_ok = True
            vkeys = [(ext, v["dimension"], v["judge_id"]) for v in rec.verdicts]
            akeys = [(ext, a["annotator"]) for a in rec.annotations]
            for v, vkey in zip(rec.verdicts, vkeys, strict=True):
                where = self._given_at(rec, vkey, self._ref_verdicts, self._item_verdicts)
                if where is not None:
                    rec.error(
                        v["_field"],
                        f"a verdict of judge {v['judge_id']!r} for {v['dimension']!r} on item "
                        f"{ext!r} is already given at line {where}",
                    )
                    rec_ok = False
            for a, akey in zip(rec.annotations, akeys, strict=True):
                where = self._given_at(rec, akey, self._ref_annotations, self._item_annotations)
                if where is not None:
                    rec.error(
                        a["_field"],
                        f"an annotation by {a['annotator']!r} on item {ext!r} is already given at line {where}",
                    )
                    rec_ok = False
            if not rec_ok:
                self._reject(out, rec)
                continue
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
                self._reject(out, rec)
                continue
            for vkey in vkeys:
                self._mark_given(rec, vkey, self._ref_verdicts, self._item_verdicts)
            for akey in akeys:
                self._mark_given(rec, akey, self._ref_annotations, self._item_annotations)
            planned[id(rec)] = (v_ops, a_ops)
            final.append(rec)

        # ---- the plan -----------------------------------------------------------------
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

    def _reject(self, out: ImportPlan, rec: Record) -> None:
        out.rejected.append(rec)
        if rec.kind == "item" and rec.external_id not in out.existing:
            self._rejected.add(rec.external_id)
