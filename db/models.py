"""SQLModel tables for the domain model (see docs/architecture.md for the data flow).

Conventions
- Times are timezone-aware UTC (``utcnow()``); SQLModel's ``UTCDateTime`` column type refuses
  naive values and returns aware ones from SQLite and PostgreSQL alike.
- Flexible, benchmark-specific structure (prompt/response parts, per-dimension labels,
  metadata) lives in JSON columns (JSONB on PostgreSQL); everything that is filtered,
  joined or counted in a hot path has its own indexed column.
- Rows that record what people did (annotation events, adjudications, gold snapshots) are
  never updated in place; ``annotation_event`` is append-only by database trigger.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Aware UTC now (see module docstring)."""
    return datetime.now(UTC)


def _json(nullable: bool = False) -> Any:
    return Field(default=None, sa_type=JSONType, nullable=nullable)


# ---------------------------------------------------------------------------------------
# Taxonomy and collections
# ---------------------------------------------------------------------------------------


class Taxonomy(SQLModel, table=True):
    """A named label scheme: task types, two-level categories and judged dimensions.

    ``spec`` is the validated dictionary produced by :mod:`db.taxonomy`.
    """

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    version: str = Field(default="1", max_length=40)
    spec: dict = Field(sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow)


class Collection(SQLModel, table=True):
    """One benchmark run (e.g. "uni-safebench / BAGEL") and its review settings."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=200)
    taxonomy_id: int = Field(foreign_key="taxonomy.id", index=True)
    description: str = Field(default="")
    overlap_target: int = Field(default=2, ge=1)  # k annotators per item
    blind: bool = Field(default=True)  # annotators label before they see the judge
    # Sampling design of the review queue (safereview.workflow.sampling): the least share of
    # the design spread evenly over items (1 = a simple random order), frozen with the mean
    # borderline score (of its square root) and the share actually used (raised when the
    # judge's scores are concentrated) at the first pull, so every item's inclusion
    # probability is known.
    audit_share: float = Field(default=0.3, ge=0.0, le=1.0)
    design_frozen_at: datetime | None = None
    design_score_mean: float | None = None
    design_share: float | None = None
    # Blind review: whether changing a blind label after the reveal needs a reason
    reveal_reason: str = Field(default="required", max_length=12)  # required | optional
    # Reviewer wellbeing: media start blurred and greyscale until revealed; break reminders
    # after this many minutes or items labelled unsafe (0 = no reminder)
    protect_media: bool = Field(default=True)
    break_minutes: int = Field(default=45, ge=0)
    break_unsafe_items: int = Field(default=40, ge=0)
    archived: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow)


class ImportBatch(SQLModel, table=True):
    """Provenance of every import: which file, in which format, by whom, with what result."""

    id: int | None = Field(default=None, primary_key=True)
    source: str  # file name as given
    source_sha256: str = Field(max_length=64)
    format: str = Field(max_length=40)
    collection_id: int | None = Field(default=None, foreign_key="collection.id", index=True)
    created_by: str = Field(default="")
    created_at: datetime = Field(default_factory=utcnow)
    n_items: int = 0
    n_verdicts: int = 0
    n_annotations: int = 0
    n_rejected: int = 0
    n_unchanged: int = 0


# ---------------------------------------------------------------------------------------
# Items and media
# ---------------------------------------------------------------------------------------


class Media(SQLModel, table=True):
    """One media file, stored once under the media root by its SHA-256."""

    sha256: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=10)  # image | audio | video
    mime: str = Field(max_length=80)
    ext: str = Field(max_length=10)
    size_bytes: int
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    sample_rate: int | None = None
    frames: int | None = None  # images: animation frames; video: frame count when known
    original_name: str = Field(default="")
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def relpath(self) -> str:
        """Location under the media root: ``ab/cd/<sha256>.<ext>``."""
        return f"{self.sha256[:2]}/{self.sha256[2:4]}/{self.sha256}.{self.ext}"


# What an item *is* (an import with --update may change these; the queue's fields may not).
ITEM_CONTENT_FIELDS: tuple[str, ...] = (
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


class Item(SQLModel, table=True):
    """One model input/output pair to be judged and reviewed.

    ``prompt`` and ``response`` are lists of parts, each
    ``{"modality": "text"|"image"|"audio"|"video", "text": str}`` or
    ``{"modality": ..., "media": <sha256>, "name": <original file name>}``; a response may
    also be empty (the model produced nothing) and ``refused`` records an explicit refusal
    to generate (Uni-SafeBench's ``reject_image``).
    """

    __table_args__ = (
        sa.UniqueConstraint("collection_id", "external_id", name="uq_item_collection_external"),
        sa.Index("ix_item_sample", "collection_id", "slots_taken", "sample_key"),
        # facet lists and queue filters ask within one collection (migration 0011)
        sa.Index("ix_item_collection_task_type", "collection_id", "task_type"),
        sa.Index("ix_item_collection_category", "collection_id", "category"),
        sa.Index("ix_item_collection_model", "collection_id", "model"),
        sa.Index(
            "ix_item_unkeyed",
            "collection_id",
            sqlite_where=sa.text("sample_key IS NULL"),
            postgresql_where=sa.text("sample_key IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    collection_id: int = Field(foreign_key="collection.id")
    external_id: str = Field(max_length=200)
    task_type: str = Field(default="", max_length=100)
    category: str = Field(default="", max_length=200)
    subcategory: str = Field(default="", max_length=200)
    model: str = Field(default="", max_length=200)
    input_modalities: str = Field(default="text", max_length=60)  # e.g. "image+text"
    output_modalities: str = Field(default="text", max_length=60)
    prompt: list = Field(default_factory=list, sa_type=JSONType)
    response: list = Field(default_factory=list, sa_type=JSONType)
    refused: bool = Field(default=False)
    meta: dict = Field(default_factory=dict, sa_type=JSONType)
    content_hash: str = Field(max_length=64)  # of the normalised content: re-import detects change
    import_batch_id: int | None = Field(default=None, foreign_key="importbatch.id")
    # Queue state (safereview.workflow.queue): a borderline score and how many of the
    # collection's overlap slots are taken (atomic conditional UPDATEs). ``sample_size`` and
    # ``sample_key`` are the item's frozen place in the sampling design: reviewed in
    # ascending key order, so the reviewed items are a sequential Poisson sample.
    priority: float = Field(default=0.0)
    slots_taken: int = Field(default=0)
    sample_size: float | None = None
    sample_key: float | None = None
    created_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------
# Judge verdicts
# ---------------------------------------------------------------------------------------


class JudgeConfig(SQLModel, table=True):
    """A judge configuration: its id is a stable hash of protocol, model and prompt version."""

    id: str = Field(primary_key=True, max_length=80)
    protocol: str = Field(max_length=40)  # uni-judger | vlsu | imported | calibrated
    model: str = Field(default="", max_length=200)
    prompt_version: str = Field(default="", max_length=40)
    params: dict = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow)


class Verdict(SQLModel, table=True):
    """One judge's label for one item and dimension.

    ``label`` is None when the judge's answer could not be parsed (``status`` then says
    ``unparseable`` and ``raw_output`` keeps the text) or the call failed (``error``).
    ``probs`` holds the probability of each label when the server returned log-probs.
    """

    __table_args__ = (sa.UniqueConstraint("item_id", "dimension", "judge_id", name="uq_verdict"),)

    id: int | None = Field(default=None, primary_key=True)
    # no index of its own: the unique key above leads with it (migration 0013)
    item_id: int = Field(foreign_key="item.id")
    dimension: str = Field(max_length=40)
    judge_id: str = Field(max_length=80, index=True)
    judge_version: str = Field(default="", max_length=40)
    label: str | None = Field(default=None, max_length=40)
    status: str = Field(default="ok", max_length=20)  # ok | unparseable | error | rule
    probability: float | None = None  # probability of the label given
    probs: dict | None = Field(default=None, sa_type=JSONType)
    score: float | None = None
    rationale: str = Field(default="")
    raw_output: str = Field(default="")
    intent: str = Field(default="")
    calibration_id: int | None = Field(default=None, foreign_key="calibration.id")
    import_batch_id: int | None = Field(default=None, foreign_key="importbatch.id")
    created_at: datetime = Field(default_factory=utcnow)


class JudgeCache(SQLModel, table=True):
    """Response cache keyed by the SHA-256 of the exact request: re-runs cost nothing."""

    key: str = Field(primary_key=True, max_length=64)
    response: dict = Field(sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------
# People
# ---------------------------------------------------------------------------------------


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True, max_length=80)
    display_name: str = Field(default="", max_length=200)
    password_hash: str
    role: str = Field(default="annotator", max_length=20)  # annotator | lead | admin
    disabled: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow)
    last_login_at: datetime | None = None


class UserPreference(SQLModel, table=True):
    """A reviewer's own settings (last collection, media protection), kept in the database
    so they follow the person to any browser or app replica."""

    user_id: int = Field(foreign_key="user.id", primary_key=True)
    prefs: dict = Field(default_factory=dict, sa_type=JSONType)
    updated_at: datetime = Field(default_factory=utcnow)


class LoginAttempt(SQLModel, table=True):
    """The sign-in log: who tried which account from where, and whether it worked.

    ``username`` is an existing account's name, or empty when the typed name matched no
    account (people type passwords into the username box; those are never stored). Rows
    older than the throttle window are purged as new attempts come in (``workflow.throttle``).
    """

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, max_length=80)
    ok: bool
    at: datetime = Field(default_factory=utcnow, index=True)
    address: str = Field(default="", max_length=64)


class SignInThrottle(SQLModel, table=True):
    """One back-off counter per sign-in key (an account from an address, an address, an
    account), shared by every app replica. An attempt is charged *before* its password is
    checked, in a row-locked update, so concurrent guesses cannot slip past the limit."""

    key: str = Field(primary_key=True, max_length=200)
    failures: int = 0
    window_start: datetime = Field(default_factory=utcnow)
    next_at: datetime = Field(default_factory=utcnow)


class SignInTicket(SQLModel, table=True):
    """A one-time ticket that turns a fresh sign-in into the browser's HttpOnly cookie.

    Kept in the database so that any app replica can redeem what another issued (issue
    "A team on one PostgreSQL"). Only the ticket's SHA-256 is stored, and the session token
    is sealed with a key derived from the ticket itself, so the table alone gives no session
    away; the ticket is single-use, bound to the browser that signed in, and lives two minutes.
    """

    ticket_sha256: str = Field(primary_key=True, max_length=64)
    sealed_token: str = Field(max_length=512)
    browser_sha256: str = Field(default="", max_length=64)
    expires_at: datetime = Field(index=True)
    redeemed_at: datetime | None = Field(default=None)


class UserSession(SQLModel, table=True):
    """A signed-in browser session; only the token's SHA-256 is stored."""

    token_sha256: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="user.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    revoked: bool = Field(default=False)


# ---------------------------------------------------------------------------------------
# Review
# ---------------------------------------------------------------------------------------


class Assignment(SQLModel, table=True):
    """One overlap slot of one item held by one reviewer.

    ``stratum`` says how the slot was taken: ``sample`` (the queue's design order, see
    :mod:`safereview.workflow.sampling`), ``imported`` (a review done outside the queue), or
    ``priority``/``audit`` for reviews taken before migration 0007. ``sampling_prob`` is only
    kept for those old rows: an item's inclusion probability is a function of its frozen
    design (``Item.sample_size``) and of how far review has got, computed when estimating.
    """

    __table_args__ = (
        sa.UniqueConstraint("item_id", "user_id", name="uq_assignment_item_user"),
        # workflow queue (migration 0002): a user's active lease, and expired-lease reclaim.
        sa.Index("ix_assignment_user_status", "user_id", "status"),
        sa.Index("ix_assignment_lease", "status", "lease_expires_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # no index of its own: the unique key above leads with it (migration 0013)
    item_id: int = Field(foreign_key="item.id")
    user_id: int = Field(foreign_key="user.id", index=True)
    status: str = Field(default="leased", max_length=20)  # leased | done | skipped | released
    stratum: str = Field(default="sample", max_length=20)
    sampling_prob: float | None = None
    leased_at: datetime = Field(default_factory=utcnow)
    lease_expires_at: datetime | None = None
    completed_at: datetime | None = None


class Annotation(SQLModel, table=True):
    """One person's current labels for one item.

    ``labels`` maps dimension → label (the final, post-reveal label); ``blind_labels`` keeps
    what the annotator committed before the judge's verdict was shown. ``version`` grows on
    every change and every update is conditional on it, so concurrent edits never overwrite
    each other silently. Each change also lands in :class:`AnnotationEvent`.
    """

    __table_args__ = (sa.UniqueConstraint("item_id", "user_id", name="uq_annotation_item_user"),)

    id: int | None = Field(default=None, primary_key=True)
    # no index of its own: the unique key above leads with it (migration 0013)
    item_id: int = Field(foreign_key="item.id")
    user_id: int = Field(foreign_key="user.id", index=True)
    labels: dict = Field(default_factory=dict, sa_type=JSONType)
    blind_labels: dict | None = Field(default=None, sa_type=JSONType)
    categories: list = Field(default_factory=list, sa_type=JSONType)
    rationale: str = Field(default="")
    reveal_reason: str = Field(default="")  # why a blind label changed after the judge's verdict was shown
    flagged: bool = Field(default=False)
    verdict_action: str | None = Field(default=None, max_length=20)  # confirm | override | None
    verdict_judge_id: str | None = Field(default=None, max_length=80)
    time_spent_s: float | None = None
    source: str = Field(default="app", max_length=20)  # app | import
    import_batch_id: int | None = Field(default=None, foreign_key="importbatch.id")
    version: int = Field(default=1)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class AnnotationEvent(SQLModel, table=True):
    """Append-only log of every annotation change: who, when, before and after."""

    __table_args__ = (sa.Index("ix_annotationevent_actor", "actor_id", "id"),)  # undo (migration 0002)

    id: int | None = Field(default=None, primary_key=True)
    annotation_id: int = Field(foreign_key="annotation.id", index=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    actor_id: int | None = Field(default=None, foreign_key="user.id")
    # the principal that wrote the event: the person's username in the app, "cli:<OS user>"
    # (or the admin's username) for an import acting on an annotator's label (migration 0006)
    recorded_by: str = Field(default="", max_length=80, sa_column_kwargs={"server_default": ""})
    action: str = Field(max_length=20)  # create | update | reveal | undo | import
    version: int
    before: dict | None = Field(default=None, sa_type=JSONType)
    after: dict | None = Field(default=None, sa_type=JSONType)
    at: datetime = Field(default_factory=utcnow, index=True)


class ErrorTag(SQLModel, table=True):
    """A lead's tag on a judge error found in the audit (e.g. "missed compositional harm")."""

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    dimension: str = Field(max_length=40)
    judge_id: str = Field(max_length=80)
    tag: str = Field(max_length=80)
    note: str = Field(default="")
    user_id: int = Field(foreign_key="user.id")
    at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------------------------------
# Consensus, gold and calibration
# ---------------------------------------------------------------------------------------


class Adjudication(SQLModel, table=True):
    """A lead's decision for one item and dimension; the newest one wins over any vote."""

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    dimension: str = Field(max_length=40)
    label: str = Field(max_length=40)
    rationale: str = Field(default="")
    user_id: int = Field(foreign_key="user.id")
    at: datetime = Field(default_factory=utcnow)


class GoldSnapshot(SQLModel, table=True):
    """A numbered, reproducible gold-label release."""

    id: int | None = Field(default=None, primary_key=True)
    method: str = Field(max_length=40)  # majority | dawid-skene
    params: dict = Field(default_factory=dict, sa_type=JSONType)
    collection_ids: list = Field(default_factory=list, sa_type=JSONType)
    n_rows: int = 0
    checksum: str = Field(default="", max_length=64)
    created_by: str = Field(default="")
    created_at: datetime = Field(default_factory=utcnow)


class Gold(SQLModel, table=True):
    """The consensus label for one item and dimension within one snapshot."""

    __table_args__ = (sa.UniqueConstraint("snapshot_id", "item_id", "dimension", name="uq_gold"),)

    id: int | None = Field(default=None, primary_key=True)
    # No single-column indexes here: the unique (snapshot_id, item_id, dimension) index
    # serves every look-up, and extra indexes made million-row snapshots 2-3x slower to write.
    # No foreign keys either (migration 0004): their per-row checks cost PostgreSQL 9 s per
    # million rows; create_snapshot writes these rows with their snapshot, from existing items.
    snapshot_id: int
    item_id: int
    dimension: str = Field(max_length=40)
    label: str | None = Field(default=None, max_length=40)
    method: str = Field(max_length=40)  # unanimous | majority | dawid-skene | adjudicated | tie
    n_annotators: int
    agreement: float | None = None  # share of annotators agreeing with the gold label
    posterior: float | None = None  # Dawid–Skene posterior of the gold label
    # the judge's label at snapshot time (its id per dimension: GoldSnapshot.params["judge_ids"]);
    # NULL in snapshots made before migration 0005, which look the verdicts up again
    judge_label: str | None = Field(default=None, max_length=40)


class Calibration(SQLModel, table=True):
    """A fitted map from a judge's raw probability to P(people call the item unsafe)."""

    id: int | None = Field(default=None, primary_key=True)
    judge_id: str = Field(max_length=80, index=True)
    dimension: str = Field(max_length=40)
    method: str = Field(max_length=20)  # isotonic | platt
    params: dict = Field(default_factory=dict, sa_type=JSONType)
    metrics: dict = Field(default_factory=dict, sa_type=JSONType)
    threshold: float | None = None
    target_under_blocking: float | None = None
    n_items: int = 0
    created_by: str = Field(default="")
    created_at: datetime = Field(default_factory=utcnow)


class Setting(SQLModel, table=True):
    """Key/value settings that belong to the deployment, not one process (e.g. schema notes)."""

    key: str = Field(primary_key=True, max_length=80)
    value: dict = Field(default_factory=dict, sa_type=JSONType)
    updated_at: datetime = Field(default_factory=utcnow)
