"""queue: a frozen sampling design per collection (sequential Poisson order)

Each item gets its frozen design size and random rank key; the queue serves items in
ascending key order (index ``ix_item_sample``), so whatever has been reviewed at any moment
is a probability sample with known inclusion probabilities (safereview.workflow.sampling).
The collection records when its design was frozen and the mean borderline score it used.
The old borderline-first index goes: nothing orders by ``priority`` any more.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs (no table copy), so triggers and foreign keys stay as they are.
    op.add_column("item", sa.Column("sample_size", sa.Float(), nullable=True))
    op.add_column("item", sa.Column("sample_key", sa.Float(), nullable=True))
    op.add_column("collection", sa.Column("design_frozen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column("collection", sa.Column("design_score_mean", sa.Float(), nullable=True))
    op.drop_index("ix_item_queue", table_name="item")
    op.create_index("ix_item_sample", "item", ["collection_id", "slots_taken", "sample_key"])
    # items still without a key (imported after the freeze): found by the queue in one probe
    unkeyed = sa.text("sample_key IS NULL")
    op.create_index("ix_item_unkeyed", "item", ["collection_id"], sqlite_where=unkeyed, postgresql_where=unkeyed)


def downgrade() -> None:
    op.drop_index("ix_item_unkeyed", table_name="item")
    op.drop_index("ix_item_sample", table_name="item")
    op.create_index("ix_item_queue", "item", ["collection_id", "slots_taken", "priority"])
    with op.batch_alter_table("collection") as batch_op:
        batch_op.drop_column("design_score_mean")
        batch_op.drop_column("design_frozen_at")
    with op.batch_alter_table("item") as batch_op:
        batch_op.drop_column("sample_key")
        batch_op.drop_column("sample_size")
