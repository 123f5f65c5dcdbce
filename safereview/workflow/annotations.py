"""Annotations: submit, reveal/finalize, edit with optimistic concurrency, undo, history.

Every change is a conditional UPDATE on ``version`` plus an ``AnnotationEvent`` whose
``before``/``after`` are full snapshots of the annotation's mutable fields
(:data:`SNAPSHOT_FIELDS`), so :func:`replay_events` rebuilds the current state from the
log alone and nothing is ever silently overwritten. Ownership and roles are checked here,
server-side, whatever the UI shows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from safereview.db.bulk import insert_for
from safereview.db.models import (
    Annotation,
    AnnotationEvent,
    Assignment,
    Collection,
    Item,
    Taxonomy,
    User,
    Verdict,
    utcnow,
)
from safereview.db.taxonomy import category_names
from safereview.wording import noun
from safereview.workflow.errors import Conflict, InvalidInput, NotFound
from safereview.workflow.policies import can, require
from safereview.workflow.queue import complete, next_item

SNAPSHOT_FIELDS: tuple[str, ...] = (
    "labels",
    "blind_labels",
    "categories",
    "rationale",
    "reveal_reason",
    "flagged",
    "verdict_action",
    "verdict_judge_id",
    "time_spent_s",
)
EDITABLE_FIELDS: frozenset[str] = frozenset({"labels", "categories", "rationale", "reveal_reason", "flagged"})
MAX_RATIONALE_CHARS = 5000
MAX_CATEGORIES = 50
VERDICT_ACTIONS = ("confirm", "override")


def verdict_action(labels: dict[str, str], judge_labels: dict[str, str]) -> str:
    """ "confirm" when the person's labels agree with the judge's on every dimension the judge
    labelled, else "override": the one rule behind the review page's and the audit's counts."""
    return "confirm" if all(labels.get(d) == lab for d, lab in judge_labels.items()) else "override"


def judge_labels(session: Session, item_id: int, judge_id: str) -> dict[str, str]:
    """The judge's stored labels on an item, per dimension (unparseable verdicts left out)."""
    rows = session.execute(
        sa.select(Verdict.dimension, Verdict.label).where(
            Verdict.item_id == item_id,
            Verdict.judge_id == judge_id,
            Verdict.label.is_not(None),  # type: ignore[union-attr]
        )
    ).all()
    return {d: lab for d, lab in rows}


def _action_for(
    session: Session,
    item_id: int,
    labels: dict[str, str],
    action: str | None,
    judge_id: str | None,
    *,
    field: str = "action",
) -> str | None:
    """The recorded action: computed from the stored verdicts when a judge is named and no
    action is given (pages do this, so the rule is applied here, not in the UI)."""
    if action is None and judge_id is not None:
        return verdict_action(labels, judge_labels(session, item_id, judge_id))
    if action is not None and action not in VERDICT_ACTIONS:
        raise InvalidInput(f"{field}: confirm or override")
    return action


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def validate_labels(spec: dict[str, Any], labels: Any) -> dict[str, str]:
    """Every dimension of the taxonomy labelled, with one of its labels, nothing else."""
    if not isinstance(labels, dict):
        raise InvalidInput("labels: expected a mapping of dimension to label")
    dims = {d["name"]: d["labels"] for d in spec["dimensions"]}
    unknown = [str(k)[:40] for k in labels if k not in dims]
    if unknown:
        raise InvalidInput(f"labels: unknown {noun(len(unknown), 'dimension')} {', '.join(unknown)}")
    out: dict[str, str] = {}
    for name, allowed in dims.items():
        value = labels.get(name)
        if value is None or value == "":
            raise InvalidInput(f"labels: {name} is required")
        if value not in allowed:
            raise InvalidInput(f"labels: {name} must be one of {', '.join(allowed)}")
        out[name] = value
    return out


def allowed_categories(spec: dict[str, Any]) -> set[str]:
    """Selectable category names: subcategories, top-level categories, and their ids."""
    names = set(category_names(spec))
    for c in spec.get("categories", []):
        names.update((c["name"], c["id"]))
        names.update(s["id"] for s in c.get("subcategories", []))
    return names


def validate_categories(spec: dict[str, Any], categories: Any) -> list[str]:
    if categories is None:
        return []
    if isinstance(categories, str) or not isinstance(categories, list | tuple | set | frozenset):
        raise InvalidInput("categories: expected a list")
    cats = list(dict.fromkeys(categories))
    if len(cats) > MAX_CATEGORIES:
        raise InvalidInput(f"categories: at most {MAX_CATEGORIES}")
    allowed = allowed_categories(spec)
    bad = [str(c)[:80] for c in cats if c not in allowed]
    if bad:
        raise InvalidInput(f"categories: not in the taxonomy: {', '.join(bad)}")
    return cats


def _clean_rationale(text: Any) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise InvalidInput("rationale: expected text")
    if len(text) > MAX_RATIONALE_CHARS:
        raise InvalidInput(f"rationale: at most {MAX_RATIONALE_CHARS} characters")
    return text


def _clean_time(t: Any) -> float | None:
    if t is None:
        return None
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise InvalidInput("time_spent_s: expected a number of seconds") from None
    if not (v >= 0) or v > 7 * 24 * 3600:
        raise InvalidInput("time_spent_s: out of range")
    return v


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def snapshot(ann: Annotation) -> dict[str, Any]:
    """The mutable state of an annotation as stored in event before/after."""
    return {f: _copy(getattr(ann, f)) for f in SNAPSHOT_FIELDS}


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return dict(v)
    if isinstance(v, list):
        return list(v)
    return v


_spec_cache: dict[tuple[str, int], dict[str, Any]] = {}


def _spec(session: Session, taxonomy_id: int) -> dict[str, Any]:
    """A taxonomy's spec; cached per process because a stored taxonomy never changes
    (``db.collections.ensure_taxonomy`` refuses to redefine one)."""
    key = (str(session.get_bind().url), taxonomy_id)
    spec = _spec_cache.get(key)
    if spec is None:
        tax = session.get(Taxonomy, taxonomy_id)
        if tax is None:
            raise NotFound("no such taxonomy")
        spec = _spec_cache[key] = tax.spec
    return spec


def _spec_for_item(session: Session, item_id: int) -> tuple[Item, Collection, dict[str, Any]]:
    item = session.get(Item, item_id)
    if item is None:
        raise NotFound("no such item")
    col = session.get(Collection, item.collection_id)
    assert col is not None
    return item, col, _spec(session, col.taxonomy_id)


def _own_annotation(session: Session, user: User, annotation_id: int) -> Annotation:
    ann = session.get(Annotation, annotation_id, populate_existing=True)
    if ann is None or ann.user_id != user.id:
        raise NotFound("no such annotation")  # same message for others' rows: no probing
    return ann


def _event(
    session: Session,
    ann: Annotation,
    actor: User,
    action: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    now: datetime,
) -> None:
    """Append one event (Core insert: the log is write-only from here)."""
    session.execute(
        sa.insert(AnnotationEvent.__table__).values(  # type: ignore[attr-defined]
            annotation_id=ann.id,
            item_id=ann.item_id,
            actor_id=actor.id,
            recorded_by=actor.username,
            action=action,
            version=ann.version,
            before=before,
            after=after,
            at=now,
        )
    )


def _apply(
    session: Session,
    user: User,
    ann: Annotation,
    expected_version: int,
    values: dict[str, Any],
    action: str,
    *,
    extra_after: dict[str, Any] | None = None,
) -> Annotation:
    """Conditional UPDATE of ``values`` on ``version == expected_version`` plus its event."""
    if ann.version != expected_version:
        raise Conflict("this annotation changed since you opened it; reload to see the current version")
    now = utcnow()
    before = snapshot(ann)
    res = session.execute(
        sa.update(Annotation)
        .where(
            Annotation.id == ann.id,
            Annotation.user_id == user.id,  # type: ignore[arg-type]
            Annotation.version == expected_version,
        )  # type: ignore[arg-type]
        .values(**values, version=Annotation.version + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("this annotation changed since you opened it; reload to see the current version")
    session.refresh(ann)
    after = snapshot(ann)
    if extra_after:
        after.update(extra_after)
    _event(session, ann, user, action, before, after, now)
    return ann


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def submit(
    session: Session,
    user: User,
    assignment_id: int,
    labels: dict[str, str],
    *,
    categories: tuple[str, ...] | list[str] = (),
    rationale: str = "",
    flagged: bool = False,
    time_spent_s: float | None = None,
    verdict_action: str | None = None,
    verdict_judge_id: str | None = None,
) -> Annotation:
    """Commit labels for the user's own active lease; marks the assignment done.

    In a blind collection the labels are also stored as ``blind_labels`` and the judge's
    verdict may be revealed afterwards (:func:`verdicts_for`, then :func:`finalize`). In an
    open collection the verdict was visible: name ``verdict_judge_id`` and the action is
    worked out from that judge's stored labels (:func:`verdict_action`), or give it directly.
    On any exception the caller must roll back (``session_scope`` does).
    """
    require(user, "review")
    row = session.execute(
        sa.select(Assignment.user_id, Assignment.item_id, Collection.blind, Collection.taxonomy_id)
        .join(Item, Item.id == Assignment.item_id)
        .join(Collection, Collection.id == Item.collection_id)
        .where(Assignment.id == assignment_id)
    ).first()
    if row is None or row[0] != user.id:
        raise NotFound("no such assignment")
    item_id, blind, spec = int(row[1]), bool(row[2]), _spec(session, int(row[3]))
    clean = validate_labels(spec, labels)
    cats = validate_categories(spec, list(categories))
    why = _clean_rationale(rationale)
    spent = _clean_time(time_spent_s)
    if (verdict_action is not None or verdict_judge_id is not None) and blind:
        raise InvalidInput("verdict_action: in a blind collection, confirm or override after the reveal")
    verdict_action = _action_for(session, item_id, clean, verdict_action, verdict_judge_id, field="verdict_action")
    now = utcnow()
    values: dict[str, Any] = {
        "item_id": item_id,
        "user_id": user.id,
        "labels": clean,
        "blind_labels": dict(clean) if blind else None,
        "categories": cats,
        "rationale": why,
        "flagged": bool(flagged),
        "verdict_action": verdict_action,
        "verdict_judge_id": (str(verdict_judge_id)[:80] if verdict_judge_id else None),
        "time_spent_s": spent,
        "source": "app",
        "import_batch_id": None,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    pg = session.get_bind().dialect.name == "postgresql"
    if pg:
        ann = _pg_submit_fast(session, user, assignment_id, values)
        if ann is not None:
            return ann
    done = session.execute(
        sa.text(
            "UPDATE assignment SET status = 'done', completed_at = :t "
            "WHERE id = :id AND user_id = :u AND status = 'leased'"
        ),
        {"t": now, "id": assignment_id, "u": user.id},
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        complete(session, user, assignment_id, now=now)  # lease was reclaimed: retake a free slot or raise
    t = Annotation.__table__  # type: ignore[attr-defined]
    insert = insert_for(session)
    ann_id = session.execute(
        insert(t).values(**values).on_conflict_do_nothing(index_elements=["item_id", "user_id"]).returning(t.c.id)
    ).scalar()
    if ann_id is None:
        raise Conflict("you already labelled this item; edit it in your history")
    ann = Annotation(id=int(ann_id), **values)
    _event(session, ann, user, "create", None, snapshot(ann), now)
    return ann


_PG_SUBMIT = """
WITH done AS (
  UPDATE assignment SET status = 'done', completed_at = :now
  WHERE id = :aid AND user_id = :uid AND status = 'leased' RETURNING item_id
),
ann AS (
  INSERT INTO annotation (item_id, user_id, labels, blind_labels, categories, rationale, flagged, verdict_action,
                          verdict_judge_id, time_spent_s, source, import_batch_id, version, created_at, updated_at)
  SELECT done.item_id, :uid, CAST(:labels AS JSONB), CAST(:blind AS JSONB), CAST(:cats AS JSONB), :rationale,
         :flagged, :vaction, :vjudge, :spent, 'app', NULL, 1, :now, :now FROM done
  ON CONFLICT (item_id, user_id) DO NOTHING
  RETURNING id, item_id
),
ev AS (
  INSERT INTO annotationevent (annotation_id, item_id, actor_id, recorded_by, action, version, before, after, at)
  SELECT ann.id, ann.item_id, :uid, :uname, 'create', 1, NULL, CAST(:after AS JSONB), :now FROM ann
  RETURNING id
)
SELECT (SELECT count(*) FROM done), (SELECT id FROM ann), (SELECT count(*) FROM ev)
"""


def _pg_submit_fast(session: Session, user: User, assignment_id: int, values: dict[str, Any]) -> Annotation | None:
    """PostgreSQL: finish the lease, insert the annotation and its "create" event in ONE statement.

    Returns None when the lease is not active any more (the caller's general path then
    re-claims a free slot or raises); raises :class:`Conflict` if the user already labelled
    the item.
    """
    import json

    ann = Annotation(**values)
    blind = values["blind_labels"]
    done, ann_id, _n_ev = session.execute(
        sa.text(_PG_SUBMIT),
        {
            "now": values["created_at"],
            "aid": assignment_id,
            "uid": user.id,
            "uname": user.username,
            "labels": json.dumps(values["labels"]),
            "blind": None if blind is None else json.dumps(blind),
            "cats": json.dumps(values["categories"]),
            "rationale": values["rationale"],
            "flagged": values["flagged"],
            "vaction": values["verdict_action"],
            "vjudge": values["verdict_judge_id"],
            "spent": values["time_spent_s"],
            "after": json.dumps(snapshot(ann)),
        },
    ).one()
    if not done:
        return None
    if ann_id is None:
        raise Conflict("you already labelled this item; edit it in your history")
    ann.id = int(ann_id)
    return ann


def submit_and_next(
    engine: sa.Engine,
    user: User,
    assignment_id: int,
    labels: dict[str, str],
    flt: Any,
    *,
    rng: Any = None,
    **kwargs: Any,
) -> tuple[Annotation, Assignment | None]:
    """Submit and claim the next item in ONE write transaction (the review page's main button).

    ``flt`` is a :class:`workflow.queue.QueueFilter`; ``kwargs`` go to :func:`submit`. Half
    the transactions of submit-then-next, and on SQLite threads of one process queue on a
    lock instead of SQLite's sleeping busy handler (:mod:`workflow.tx`).
    """
    return _then_next(
        engine,
        user,
        flt,
        rng,
        lambda s: submit(s, user, assignment_id, labels, **kwargs),
        lambda s: stored_submit(s, user, assignment_id, labels, **kwargs),
    )


def finalize_and_next(
    engine: sa.Engine,
    user: User,
    annotation_id: int,
    labels: dict[str, str],
    flt: Any,
    *,
    rng: Any = None,
    **kwargs: Any,
) -> tuple[Annotation, Assignment | None]:
    """Confirm or override after the reveal and claim the next item in ONE write transaction.

    ``kwargs`` go to :func:`finalize` (``expected_version`` is required there)."""
    return _then_next(
        engine,
        user,
        flt,
        rng,
        lambda s: finalize(s, user, annotation_id, labels, **kwargs),
        lambda s: stored_finalize(s, user, annotation_id, labels, **kwargs),
    )


def _then_next(
    engine: sa.Engine,
    user: User,
    flt: Any,
    rng: Any,
    write: Callable[[Session], Annotation],
    stored: Callable[[Session], Annotation | None],
) -> tuple[Annotation, Assignment | None]:
    """``write(session)`` then ``queue.next_item`` in one transaction, retried as a whole
    while it fails transiently (``workflow.tx.is_transient``: locks, deadlocks, serialisation
    failures, a duplicate lease insert from a second browser tab, a lost connection). The
    whole transaction rolls back before a retry, so nothing is written twice; any other error
    surfaces at once.

    A connection lost at COMMIT leaves the outcome unknown: the server may have committed.
    After one, each retry first asks ``stored(session)`` for the very write it was making;
    when it is there the retry only claims the next item (``next_item`` returns the lease
    the unheard commit took), instead of reporting a lost lease or "already labelled"."""
    import random

    from safereview.workflow.tx import write_with_retry

    rng = rng or random.Random()

    def found(session: Session) -> tuple[Annotation, Assignment | None] | None:
        ann = stored(session)
        return None if ann is None else (ann, next_item(session, user, flt, rng=rng))

    def written(session: Session) -> tuple[Annotation, Assignment | None]:
        ann = write(session)
        return ann, next_item(session, user, flt, rng=rng)

    return write_with_retry(engine, written, found, rng=rng)


def stored_submit(
    session: Session,
    user: User,
    assignment_id: int,
    labels: dict[str, str],
    *,
    categories: tuple[str, ...] | list[str] = (),
    rationale: str = "",
    flagged: bool = False,
    **_ignored: Any,
) -> Annotation | None:
    """The annotation :func:`submit` with these values made, if it is stored; else None.

    Used after a connection lost at COMMIT: the lease is done and the user's annotation of
    its item holds exactly these labels, categories, rationale and flag at version 1.
    Anything else (no annotation, another label from a second tab) is not this write.
    The lease row is read FOR UPDATE: a COMMIT the server is still finishing (the client
    heard the connection drop first) holds that row, so the check waits for its outcome
    instead of reading the row as it was before it.
    """
    row = session.execute(
        sa.select(Assignment.item_id, Assignment.status, Collection.taxonomy_id)
        .join(Item, Item.id == Assignment.item_id)
        .join(Collection, Collection.id == Item.collection_id)
        .where(Assignment.id == assignment_id, Assignment.user_id == user.id)  # type: ignore[arg-type]
        .with_for_update(of=Assignment)
    ).first()
    if row is None or row[1] != "done":
        return None
    ann = session.exec(
        select(Annotation).where(Annotation.item_id == int(row[0]), Annotation.user_id == user.id)
    ).first()
    if ann is None or ann.version != 1 or ann.source != "app":
        return None
    same = _holds(ann, _spec(session, int(row[2])), labels, categories=categories, rationale=rationale, flagged=flagged)
    return ann if same else None


def stored_finalize(
    session: Session,
    user: User,
    annotation_id: int,
    labels: dict[str, str],
    *,
    expected_version: int,
    action: str | None = None,
    categories: tuple[str, ...] | list[str] | None = None,
    rationale: str | None = None,
    flagged: bool | None = None,
    **_ignored: Any,
) -> Annotation | None:
    """The annotation :func:`finalize` with these values made, if it is stored; else None.

    After a connection lost at COMMIT: the user's annotation is one version past
    ``expected_version``, holds these labels (and the action, categories, rationale and flag
    where the call gave them), and its latest event is this user's reveal at that version.
    The row is read FOR UPDATE, as in :func:`stored_submit`.
    """
    ann = session.get(Annotation, annotation_id, populate_existing=True, with_for_update=True)
    if ann is None or ann.user_id != user.id or ann.version != expected_version + 1:
        return None
    latest = session.exec(
        select(AnnotationEvent)
        .where(AnnotationEvent.annotation_id == annotation_id)
        .order_by(sa.desc(AnnotationEvent.id))  # type: ignore[arg-type]
    ).first()
    if latest is None or (latest.action, latest.version, latest.actor_id) != ("reveal", ann.version, user.id):
        return None
    _item, _col, spec = _spec_for_item(session, ann.item_id)
    same = _holds(ann, spec, labels, categories=categories, rationale=rationale, flagged=flagged)
    return ann if same and (action is None or ann.verdict_action == action) else None


def _holds(
    ann: Annotation,
    spec: dict[str, Any],
    labels: dict[str, str],
    *,
    categories: tuple[str, ...] | list[str] | None,
    rationale: str | None,
    flagged: bool | None,
) -> bool:
    """Whether ``ann`` holds these values as the writes store them (validated, cleaned);
    None means the call did not give that value. Values the writes would refuse never match."""
    try:
        return (
            ann.labels == validate_labels(spec, labels)
            and (categories is None or ann.categories == validate_categories(spec, list(categories)))
            and (rationale is None or ann.rationale == _clean_rationale(rationale))
            and (flagged is None or ann.flagged == bool(flagged))
        )
    except InvalidInput:
        return False


def finalize(
    session: Session,
    user: User,
    annotation_id: int,
    labels: dict[str, str],
    *,
    expected_version: int,
    action: str | None = None,
    judge_id: str | None = None,
    categories: tuple[str, ...] | list[str] | None = None,
    rationale: str | None = None,
    flagged: bool | None = None,
    reveal_reason: str = "",
) -> Annotation:
    """After the verdict is revealed: confirm or override. ``blind_labels`` stay as committed.

    Name ``judge_id`` and leave ``action`` out to have it worked out from that judge's
    stored labels (:func:`verdict_action`); one of the two is required. Categories,
    rationale and the flag may change too (None keeps them). Changing a blind label after
    seeing the judge needs ``reveal_reason`` when the collection requires it: the judge
    swayed the label, and a lead auditing the judge must know why. The event log keeps both
    states (the "create" event the blind labels and first rationale, this "reveal" event the
    final ones).
    """
    require(user, "review")
    if action is None and judge_id is None:
        raise InvalidInput("action: confirm or override (or name the judge whose verdict was shown)")
    if action is not None and action not in VERDICT_ACTIONS:
        raise InvalidInput("action: confirm or override")
    ann = _own_annotation(session, user, annotation_id)
    _item, col, spec = _spec_for_item(session, ann.item_id)
    clean = validate_labels(spec, labels)
    action = _action_for(session, ann.item_id, clean, action, judge_id)
    values: dict[str, Any] = {"labels": clean, "verdict_action": action}
    if judge_id is not None:
        values["verdict_judge_id"] = str(judge_id)[:80]
    if categories is not None:
        values["categories"] = validate_categories(spec, list(categories))
    if rationale is not None:
        values["rationale"] = _clean_rationale(rationale)
    if flagged is not None:
        values["flagged"] = bool(flagged)
    reason = _clean_rationale(reveal_reason)
    blind = ann.blind_labels or {}
    changed = ann.blind_labels is not None and clean != blind
    if changed and not reason.strip() and col.reveal_reason == "required":
        moved = ", ".join(f"{d}: {blind.get(d)} → {v}" for d, v in clean.items() if blind.get(d) != v)
        raise InvalidInput(f"reveal_reason: you changed {moved} after seeing the judge; say why")
    values["reveal_reason"] = reason if changed else ""
    return _apply(session, user, ann, expected_version, values, "reveal")


def update(session: Session, user: User, annotation_id: int, expected_version: int, **changes: Any) -> Annotation:
    """Edit labels/categories/rationale/flagged of one's own annotation.

    Raises :class:`Conflict` when the annotation's version is no longer ``expected_version``
    (another tab, an undo or an import changed it).
    """
    require(user, "view_own_history")
    bad = set(changes) - EDITABLE_FIELDS
    if bad:
        raise InvalidInput(f"cannot change {', '.join(sorted(bad))}")
    ann = _own_annotation(session, user, annotation_id)
    _item, _col, spec = _spec_for_item(session, ann.item_id)
    values: dict[str, Any] = {}
    if "labels" in changes:
        values["labels"] = validate_labels(spec, changes["labels"])
    if "categories" in changes:
        values["categories"] = validate_categories(spec, list(changes["categories"] or []))
    if "rationale" in changes:
        values["rationale"] = _clean_rationale(changes["rationale"])
    if "flagged" in changes:
        values["flagged"] = bool(changes["flagged"])
    if not values:
        raise InvalidInput("nothing to change")
    return _apply(session, user, ann, expected_version, values, "update")


def edit(engine: sa.Engine, user: User, annotation_id: int, expected_version: int, **changes: Any) -> Annotation:
    """:func:`update` as a write transaction of its own, retried while it fails transiently
    (``workflow.tx.write_with_retry``); after a connection lost at COMMIT the retry accepts
    its own stored edit (:func:`stored_update`) instead of calling it a conflict."""
    from safereview.workflow.tx import write_with_retry

    return write_with_retry(
        engine,
        lambda s: update(s, user, annotation_id, expected_version, **changes),
        lambda s: stored_update(s, user, annotation_id, expected_version, **changes),
    )


def stored_update(
    session: Session, user: User, annotation_id: int, expected_version: int, **changes: Any
) -> Annotation | None:
    """The annotation :func:`update` with these changes made, if it is stored; else None: one
    version past ``expected_version``, its latest event this user's update at that version,
    and the values the call gave. Read FOR UPDATE, as in :func:`stored_submit`."""
    ann = session.get(Annotation, annotation_id, populate_existing=True, with_for_update=True)
    if ann is None or ann.user_id != user.id or ann.version != expected_version + 1:
        return None
    latest = session.exec(
        select(AnnotationEvent)
        .where(AnnotationEvent.annotation_id == annotation_id)
        .order_by(sa.desc(AnnotationEvent.id))  # type: ignore[arg-type]
    ).first()
    if latest is None or (latest.action, latest.version, latest.actor_id) != ("update", ann.version, user.id):
        return None
    _item, _col, spec = _spec_for_item(session, ann.item_id)
    same = _holds(
        ann,
        spec,
        changes.get("labels", ann.labels),
        categories=changes.get("categories"),
        rationale=changes.get("rationale"),
        flagged=changes.get("flagged"),
    )
    return ann if same else None


def undo_last(session: Session, user: User) -> Annotation | None:
    """Revert the user's most recent change that is not yet undone; None if there is none.

    Undoable: "update" and "reveal" events. A submission ("create") is the floor: it is
    edited, never withdrawn, because its slot and the blind record are part of the
    sampling design. Undo appends an "undo" event (``after["undo_of"]`` = the event undone)
    and deletes nothing. Raises :class:`Conflict` if someone else changed the annotation
    after the change being undone.
    """
    require(user, "view_own_history")
    undone: set[int] = set()
    events = session.exec(
        select(AnnotationEvent).where(AnnotationEvent.actor_id == user.id).order_by(AnnotationEvent.id.desc())  # type: ignore[union-attr]
    )
    target: AnnotationEvent | None = None
    for ev in events:
        if ev.action == "undo":
            if isinstance(ev.after, dict) and ev.after.get("undo_of") is not None:
                undone.add(int(ev.after["undo_of"]))
            continue
        if ev.id in undone:
            continue
        if ev.action in ("update", "reveal"):
            target = ev
        break
    if target is None or target.before is None:
        return None
    ann = _own_annotation(session, user, target.annotation_id)
    later_by_others = session.exec(
        select(AnnotationEvent.id).where(
            AnnotationEvent.annotation_id == ann.id,
            AnnotationEvent.id > target.id,  # type: ignore[operator]
            AnnotationEvent.actor_id != user.id,
        )
    ).first()
    if later_by_others is not None:
        raise Conflict("someone else changed this annotation since; undo is not possible")
    restore = {f: _copy(target.before.get(f)) for f in SNAPSHOT_FIELDS if f != "blind_labels"}
    return _apply(session, user, ann, ann.version, restore, "undo", extra_after={"undo_of": target.id})


def history(
    session: Session, user: User, limit: int = 50, *, offset: int = 0, collection_id: int | None = None
) -> list[Annotation]:
    """The user's own annotations, most recently changed first."""
    require(user, "view_own_history")
    q = select(Annotation).where(Annotation.user_id == user.id)
    if collection_id is not None:
        q = q.join(Item, Item.id == Annotation.item_id).where(Item.collection_id == collection_id)  # type: ignore[arg-type]
    q = q.order_by(Annotation.updated_at.desc(), Annotation.id.desc())  # type: ignore[attr-defined, union-attr]
    return list(session.exec(q.offset(max(0, offset)).limit(max(1, min(limit, 1000)))).all())


def history_items(
    session: Session, user: User, limit: int = 50, *, offset: int = 0, collection_id: int | None = None
) -> list[tuple[Annotation, Item]]:
    """:func:`history` with each annotation's item (its external id and collection for display)."""
    require(user, "view_own_history")
    anns = history(session, user, limit, offset=offset, collection_id=collection_id)
    ids = sorted({a.item_id for a in anns})
    items = {i.id: i for i in session.exec(select(Item).where(Item.id.in_(ids)))} if ids else {}  # type: ignore[union-attr]
    return [(a, items[a.item_id]) for a in anns if a.item_id in items]


def awaiting_reveal(session: Session, user: User, collection_id: int) -> Annotation | None:
    """The user's oldest blind submission in the collection still waiting for confirm or override.

    Left when a tab closed at the reveal step: the workbench shows it again before a new
    item, so no annotation stays half-finished. Only items with a judge verdict to confirm
    count (without one there is nothing to reveal and the submission is complete).
    """
    require(user, "review")
    row = session.execute(
        sa.select(Annotation.id)
        .join(Item, Item.id == Annotation.item_id)
        .join(Collection, Collection.id == Item.collection_id)
        .where(
            Item.collection_id == collection_id,
            Collection.blind.is_(True),  # type: ignore[attr-defined]
            Annotation.user_id == user.id,
            Annotation.source == "app",
            Annotation.verdict_action.is_(None),  # type: ignore[union-attr]
            sa.exists().where(Verdict.item_id == Annotation.item_id, Verdict.label.is_not(None)),  # type: ignore[union-attr]
        )
        .order_by(Annotation.id)
        .limit(1)
    ).first()
    return session.get(Annotation, int(row[0])) if row is not None else None


def visible_annotations(session: Session, viewer: User, item_id: int) -> list[Annotation]:
    """Annotations of an item the viewer may see: annotators only their own; leads/admins all."""
    require(viewer, "review")
    q = select(Annotation).where(Annotation.item_id == item_id)
    if not can(viewer, "view_others_labels"):
        q = q.where(Annotation.user_id == viewer.id)
    return list(session.exec(q.order_by(Annotation.id)).all())  # type: ignore[arg-type]


def verdicts_for(session: Session, viewer: User, item_id: int, *, revealed: bool) -> list[Verdict]:
    """Judge verdicts of an item if the viewer may see them now, else an empty list.

    Open collections: anyone reviewing or auditing the item sees them. Blind collections:
    a viewer who holds or held a slot on the item (leased, skipped or released) sees them
    only after submitting it and asking for the reveal (``revealed=True``), because a
    released item may be offered to them again; leads/admins never assigned to the item
    (audit, adjudication) see them; annotators never see verdicts of items they were not assigned.
    """
    require(viewer, "review")
    item, col, _spec = _spec_for_item(session, item_id)

    def has_row(model: type[Annotation] | type[Assignment]) -> bool:
        """Whether the viewer has an annotation (or assignment) of this item."""
        q = select(model.id).where(model.item_id == item_id, model.user_id == viewer.id)  # type: ignore[arg-type]
        return session.exec(q).first() is not None

    # each question asked only when the answer can still matter (one query less per item shown)
    if col.blind:
        if has_row(Annotation):
            allowed = revealed
        elif has_row(Assignment):
            allowed = False  # holds, held or skipped a slot without submitting: stay blind (may get it again)
        else:
            allowed = can(viewer, "audit")
    else:
        allowed = has_row(Assignment) or has_row(Annotation) or can(viewer, "audit")
    if not allowed:
        return []
    return list(
        session.exec(
            select(Verdict).where(Verdict.item_id == item.id).order_by(Verdict.dimension, Verdict.judge_id)
        ).all()
    )  # type: ignore[arg-type]


def events_for(session: Session, viewer: User, annotation_id: int) -> list[AnnotationEvent]:
    """The event log of one annotation (own, or any for leads/admins)."""
    require(viewer, "view_own_history")
    ann = session.get(Annotation, annotation_id)
    if ann is None or (ann.user_id != viewer.id and not can(viewer, "view_others_labels")):
        raise NotFound("no such annotation")
    return list(
        session.exec(
            select(AnnotationEvent).where(AnnotationEvent.annotation_id == annotation_id).order_by(AnnotationEvent.id)
        ).all()
    )  # type: ignore[arg-type]


_DEFAULTS: dict[str, Any] = {
    "labels": {},
    "blind_labels": None,
    "categories": [],
    "rationale": "",
    "reveal_reason": "",
    "flagged": False,
    "verdict_action": None,
    "verdict_judge_id": None,
    "time_spent_s": None,
}


def replay_events(session: Session) -> dict[int, dict[str, Any]]:
    """Rebuild every annotation's state (id → snapshot fields + ``version``) from the log alone.

    "create"/"import" start from defaults; every other event overlays its ``after``. The
    result must equal the stored rows (tests check it), which proves the log is complete.
    """
    state: dict[int, dict[str, Any]] = {}
    rows = session.exec(select(AnnotationEvent).order_by(AnnotationEvent.id))  # type: ignore[arg-type]
    for ev in rows:
        after = ev.after if isinstance(ev.after, dict) else {}
        if ev.action in ("create", "import") or ev.annotation_id not in state:
            cur = {k: _copy(v) for k, v in _DEFAULTS.items()}
        else:
            cur = state[ev.annotation_id]
        for f in SNAPSHOT_FIELDS:
            if f in after:
                cur[f] = _copy(after[f])
        cur["version"] = ev.version
        state[ev.annotation_id] = cur
    return state


def stored_state(session: Session) -> dict[int, dict[str, Any]]:
    """The same shape as :func:`replay_events`, read from the annotation table."""
    return {
        a.id: {**snapshot(a), "version": a.version}  # type: ignore[misc]
        for a in session.exec(select(Annotation))
    }
