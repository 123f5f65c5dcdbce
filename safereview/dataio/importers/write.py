"""Writing: carry out each chunk's :class:`ImportPlan` in the caller's transaction, in bulk.

A :class:`Writer` per import. Per chunk, media files are copied under the media root first,
then (after the one ``importbatch`` row, made with the first chunk that changes anything) the items,
the verdicts (and a ``judgeconfig`` per new judge id) and the annotations with their
``import`` events go in through ``db.bulk.bulk_insert`` (no per-row ORM objects). People
named by annotations who have no account yet are created by ``workflow.auth``, and each
imported annotation's done assignment and slot are recorded by ``workflow.queue``. The
caller rolls back on any failure and deletes the media files this run created
(:func:`cleanup_files`).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from safereview.dataio.importers.options import Options
from safereview.dataio.importers.plan import ImportPlan
from safereview.dataio.importers.report import ImportReport
from safereview.dataio.media import insert_media_rows, store_file
from safereview.db.bulk import bulk_insert
from safereview.db.models import (
    ITEM_CONTENT_FIELDS,
    Annotation,
    AnnotationEvent,
    ImportBatch,
    Item,
    JudgeConfig,
    Media,
    Verdict,
    utcnow,
)
from safereview.wording import count
from safereview.workflow import queue, sampling
from safereview.workflow.annotations import SNAPSHOT_FIELDS
from safereview.workflow.ordering import Scorer, refresh_priorities

CHUNK = 5000  # rows per executemany of an UPDATE

VERDICT_COLUMNS = [
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
]
# an imported annotation has no reveal step, so no reveal reason (the column's default, "")
ANNOTATION_COLUMNS = [
    "item_id",
    "user_id",
    *(f for f in SNAPSHOT_FIELDS if f != "reveal_reason"),
    "created_at",
    "updated_at",
]
EVENT_COLUMNS = ["annotation_id", "item_id", "actor_id", "version", "before", "after"]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _chunks(seq: list[Any], n: int = CHUNK) -> Any:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class Writer:
    """Writes an import's plans, chunk after chunk, in the caller's transaction.

    The ``importbatch`` row is created with the first chunk that changes anything (an
    import that changes nothing writes nothing); :meth:`finish` fills in its counts, the
    report's notes, and lets new items join a frozen sampling design. Media files stored by
    this run are appended to ``created_files`` as they are written, so the caller can delete
    them if the transaction rolls back.
    """

    def __init__(
        self,
        conn: sa.Connection,
        session: Session,
        *,
        collection_id: int,
        opts: Options,
        report: ImportReport,
        source_sha256: str,
        user: str,
        created_files: list[Path],
        actor_id: int | None = None,
        spec: dict[str, Any] | None = None,
    ) -> None:
        self.conn, self.session = conn, session
        self.scorer = Scorer(spec)
        self.collection_id, self.opts, self.report = collection_id, opts, report
        self.source_sha256, self.user, self.actor_id = source_sha256, user, actor_id
        self.created_files = created_files
        self.batch_id: int | None = None
        self.now = utcnow()
        self.people: list[str] = []

    def _batch(self) -> int:
        if self.batch_id is None:
            batch_t = ImportBatch.__table__  # type: ignore[attr-defined]
            self.batch_id = self.conn.execute(
                batch_t.insert()
                .values(
                    source=self.opts.file_label,
                    source_sha256=self.source_sha256,
                    format=self.opts.fmt,
                    collection_id=self.collection_id,
                    created_by=self.user,
                    created_at=self.now,
                )
                .returning(batch_t.c.id)
            ).scalar_one()
            self.report.batch_id = self.batch_id
        return self.batch_id

    def chunk(self, plan: ImportPlan) -> None:
        """Write what one chunk's plan says and add to the report's counts."""
        report, conn, opts, now = self.report, self.conn, self.opts, self.now
        report.items_unchanged += plan.unchanged_items
        report.verdicts_unchanged += plan.unchanged_verdicts
        report.annotations_unchanged += plan.unchanged_annotations
        if not plan.changes:
            return
        batch_id = self._batch()
        for info in plan.media:
            if store_file(info, opts.media_root):
                self.created_files.append(opts.media_root / info.relpath)
        report.media_files_new = len(self.created_files)
        report.media_rows_new += insert_media_rows(conn, plan.media)
        ids = _write_items(conn, plan, self.collection_id, batch_id, now, report, self.scorer)
        # a new item's priority went in with it (scored from its row's verdicts, all it has yet)
        touched = _write_verdicts(conn, plan, ids, batch_id, now, report, {r.external_id for r in plan.new_items})
        self.people.extend(_write_annotations(conn, plan, ids, batch_id, now, report, self.user, self.actor_id))
        if touched:
            # the borderline priorities of the stored items whose verdicts changed (workflow.ordering scores)
            refresh_priorities(self.session, self.collection_id, touched)
            self.session.flush()
        if plan.new_verdicts or plan.changed_verdicts:
            report.priorities_refreshed = True

    def finish(self, *, n_rejected: int = 0) -> None:
        """The batch's counts, the report's notes, and new items' sampling keys."""
        report = self.report
        if self.batch_id is None:
            return
        batch_t = ImportBatch.__table__  # type: ignore[attr-defined]
        self.conn.execute(
            batch_t.update()
            .where(batch_t.c.id == self.batch_id)
            .values(
                n_items=report.items_new + report.items_updated,
                n_verdicts=report.verdicts_new + report.verdicts_updated,
                n_annotations=report.annotations_new + report.annotations_updated,
                n_rejected=n_rejected,
                n_unchanged=report.items_unchanged,
            )
        )
        if report.items_updated:
            report.notes.append(
                f"{count(report.items_updated, 'existing item')} updated with changed content (--update); "
                "verdicts and annotations they already had were kept"
            )
        if report.verdicts_updated:
            report.notes.append(f"{count(report.verdicts_updated, 'verdict')} replaced (--update)")
        if self.people:
            report.notes.append(
                f"created {count(len(self.people), 'user')} without a usable password: "
                + ", ".join(sorted(self.people)[:20])
            )
        if report.annotations_updated:
            report.notes.append(f"{count(report.annotations_updated, 'annotation')} replaced (--update)")
        if report.items_new:
            # new items of a collection whose sampling design is frozen join it now (size from the frozen mean)
            sampling.assign_keys(self.session, self.collection_id)


def _write_items(
    conn: sa.Connection,
    plan: ImportPlan,
    collection_id: int,
    batch_id: int,
    now: datetime,
    report: ImportReport,
    scorer: Scorer,
) -> dict[str, int]:
    """Insert the new items, replace the changed ones; return external id -> id of every item planned on."""
    item_t = Item.__table__  # type: ignore[attr-defined]
    floor = 0
    if plan.new_items:
        floor = _id_floor(conn, item_t)
        rows = []
        # tuples in database form: JSON already serialised during validation, bool as is
        for rec in plan.new_items:
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
                    scorer.score(rec.verdicts),
                )
            )
        bulk_insert(
            conn,
            item_t,
            ["external_id", *ITEM_CONTENT_FIELDS, "priority"],
            rows,
            const={
                "collection_id": collection_id,
                "import_batch_id": batch_id,
                "slots_taken": 0,
                "created_at": now,
            },
        )
        report.items_new += len(plan.new_items)
    if plan.changed_items:
        stmt = (
            item_t.update()
            .where(item_t.c.id == sa.bindparam("_id"))
            .values(**{k: sa.bindparam(k) for k in ITEM_CONTENT_FIELDS}, import_batch_id=sa.bindparam("_batch"))
        )
        upd = [
            {"_id": plan.existing[r.external_id], "_batch": batch_id, **{k: r.item[k] for k in ITEM_CONTENT_FIELDS}}  # type: ignore[index]
            for r in plan.changed_items
        ]
        for chunk in _chunks(upd):
            conn.execute(stmt, chunk)
        report.items_updated += len(plan.changed_items)

    ids = dict(plan.existing)
    need = {ext for ext, _ in plan.new_verdicts} | {ext for ext, _ in plan.new_annotations}
    if plan.new_items and not need <= ids.keys():  # ids of new items, only to attach verdicts or annotations
        exts = [r.external_id for r in plan.new_items]
        for iid, ext in conn.execute(*_new_item_ids(conn, floor, collection_id, batch_id, exts)).all():
            ids[ext] = iid
    return ids


def _write_verdicts(
    conn: sa.Connection,
    plan: ImportPlan,
    ids: dict[str, int],
    batch_id: int,
    now: datetime,
    report: ImportReport,
    scored: set[str],
) -> set[int]:
    """Insert the new verdicts, replace the changed ones; return the items whose verdicts changed
    (except those of ``scored``, external ids of items whose priority is already right)."""
    verdict_t = Verdict.__table__  # type: ignore[attr-defined]
    touched: set[int] = set()
    if plan.judges:
        _ensure_judges(conn, plan.judges, now)
    rows = []
    for ext, v in plan.new_verdicts:
        iid = ids[ext]
        if ext not in scored:
            touched.add(iid)
        rows.append(
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
    if rows:
        bulk_insert(
            conn,
            verdict_t,
            VERDICT_COLUMNS,
            rows,
            const={"import_batch_id": batch_id, "calibration_id": None, "created_at": now},
        )
    if plan.changed_verdicts:
        keys = VERDICT_COLUMNS[1:]
        stmt = (
            verdict_t.update()
            .where(verdict_t.c.id == sa.bindparam("_id"))
            .values(**{k: sa.bindparam(f"v_{k}") for k in keys}, import_batch_id=sa.bindparam("v_import_batch_id"))
        )
        upd = []
        for ext, vid, v in plan.changed_verdicts:
            touched.add(ids[ext])
            upd.append({"_id": vid, "v_import_batch_id": batch_id, **{f"v_{k}": v[k] for k in keys}})
        for chunk in _chunks(upd):
            conn.execute(stmt, chunk)
    report.verdicts_new += len(plan.new_verdicts)
    report.verdicts_updated += len(plan.changed_verdicts)
    return touched


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


def _snapshot(a: dict[str, Any], batch_id: int) -> dict[str, Any]:
    return {
        "labels": a["labels"],
        "blind_labels": a["blind_labels"],
        "categories": a["categories"],
        "rationale": a["rationale"],
        "verdict_action": a["verdict_action"],
        "time_spent_s": a["time_spent_s"],
        "import_batch_id": batch_id,
    }


def _write_annotations(
    conn: sa.Connection,
    plan: ImportPlan,
    ids: dict[str, int],
    batch_id: int,
    now: datetime,
    report: ImportReport,
    recorded_by: str,
    importer_id: int | None,
) -> list[str]:
    """New annotations (with their people, done assignments and slots), replaced ones, and every ``import`` event;
    returns the usernames of the people created.

    A new annotation's event names its annotator as the actor (the label is theirs, made
    elsewhere). A *replaced* one is the importer's change to someone's label: its event names
    the importer (their account, or none for the CLI; ``recorded_by`` says who), its
    ``before`` keeps the row's provenance (source, batch), and the row's source becomes
    ``import``, so neither the log nor the row says the annotator made the new label in the app.
    """
    if not plan.new_annotations and not plan.changed_annotations:
        return []
    ann_t = Annotation.__table__  # type: ignore[attr-defined]
    user_ids = dict(plan.user_ids)
    if plan.new_people:
        from safereview.workflow import auth  # loading it costs an argon2 hash: only when needed

        user_ids.update(auth.create_placeholder_users(conn, plan.new_people, now=now))
        report.users_created += len(plan.new_people)

    events: list[tuple[Any, ...]] = []
    if plan.new_annotations:
        floor = _id_floor(conn, ann_t)
        rows = []
        new: dict[tuple[int, int], dict[str, Any]] = {}
        for ext, a in plan.new_annotations:
            key = (ids[ext], user_ids[a["annotator"]])
            new[key] = a
            at = a["at"] or now
            rows.append(
                (
                    *key,
                    a["labels"],
                    a["blind_labels"],
                    a["categories"],
                    a["rationale"],
                    bool(a["flagged"]),
                    a["verdict_action"],
                    a["verdict_judge_id"],
                    a["time_spent_s"],
                    at,
                    at,
                )
            )
        bulk_insert(
            conn,
            ann_t,
            ANNOTATION_COLUMNS,
            rows,
            const={"source": "import", "import_batch_id": batch_id, "version": 1},
            process=True,
        )
        got = {
            (item_id, user_id): aid
            for aid, item_id, user_id in conn.execute(*_new_annotation_ids(conn, floor, batch_id, new)).all()
        }
        events.extend((got[key], key[0], key[1], 1, None, _snapshot(a, batch_id)) for key, a in new.items())
        # each one a done assignment in the "imported" stratum, holding one of the item's slots
        queue.record_imported(conn, new, now=now)
        report.annotations_new += len(rows)

    for iid, old, a in plan.changed_annotations:
        before = {
            "labels": old.labels,
            "blind_labels": old.blind_labels,
            "categories": old.categories,
            "rationale": old.rationale,
            "source": old.source,
            "import_batch_id": old.import_batch_id,
            "annotator_id": old.user_id,
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
                source="import",
                version=old.version + 1,
                updated_at=now,
            )
        )
        if res.rowcount != 1:
            raise RuntimeError(f"annotation {old.id} changed concurrently; import aborted")
        events.append((old.id, iid, importer_id, old.version + 1, before, _snapshot(a, batch_id)))
    report.annotations_updated += len(plan.changed_annotations)
    if events:
        ev_t = AnnotationEvent.__table__  # type: ignore[attr-defined]
        const = {"action": "import", "at": now, "recorded_by": recorded_by[:80]}  # the importer, not the annotator
        bulk_insert(conn, ev_t, EVENT_COLUMNS, events, const=const, process=True)
    return list(plan.new_people)


# Without statistics for the rows an import is adding, both planners walked the
# collection's items once per chunk to find a chunk's new ids (quadratic at 1M): SQLite
# takes an id range only ("+" keeps it off the other indexes), PostgreSQL the unique
# (collection, external id) and (item, user) indexes (an id range there is a sequential scan).


def _id_floor(conn: sa.Connection, table: sa.Table) -> int:
    """The highest id before a chunk's insert (SQLite only: its look-up of new ids is by range)."""
    if conn.dialect.name == "postgresql":
        return 0
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0))).scalar_one())


def _new_item_ids(
    conn: sa.Connection, floor: int, collection_id: int, batch_id: int, exts: list[str]
) -> tuple[Any, dict[str, Any]]:
    """The query for (id, external id) of a chunk's new items."""
    if conn.dialect.name == "postgresql":
        return (
            sa.text("SELECT id, external_id FROM item WHERE collection_id = :c AND external_id = ANY(:exts)"),
            {"c": collection_id, "exts": exts},
        )
    return (
        sa.text("SELECT id, external_id FROM item WHERE id > :floor AND +collection_id = :c AND +import_batch_id = :b"),
        {"floor": floor, "c": collection_id, "b": batch_id},
    )


def _new_annotation_ids(
    conn: sa.Connection, floor: int, batch_id: int, new: dict[tuple[int, int], Any]
) -> tuple[Any, dict[str, Any]]:
    """The query for (id, item id, user id) of a chunk's new annotations."""
    if conn.dialect.name == "postgresql":
        return (
            sa.text("SELECT id, item_id, user_id FROM annotation WHERE item_id = ANY(:items) AND import_batch_id = :b"),
            {"items": sorted({item_id for item_id, _ in new}), "b": batch_id},
        )
    return (
        sa.text("SELECT id, item_id, user_id FROM annotation WHERE id > :floor AND +import_batch_id = :b"),
        {"floor": floor, "b": batch_id},
    )


def cleanup_files(engine: sa.Engine, files: list[Path]) -> None:
    """Delete media files written by a failed import unless some committed row refers to them."""
    if not files:
        return
    media_t = Media.__table__  # type: ignore[attr-defined]
    shas = {f.name.split(".", 1)[0]: f for f in files}
    with engine.connect() as conn:
        referenced = set(conn.execute(sa.select(media_t.c.sha256).where(media_t.c.sha256.in_(list(shas)))).scalars())
    for sha, f in shas.items():
        if sha not in referenced:
            f.unlink(missing_ok=True)
