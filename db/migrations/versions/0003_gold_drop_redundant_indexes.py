"""gold: drop single-column indexes covered by the unique (snapshot, item, dimension) index

Writing a million-row gold snapshot spent most of its time maintaining ``ix_gold_item_id``
(scattered inserts, since every snapshot repeats the same item ids); ``ix_gold_snapshot_id``
duplicates the unique index's leading column.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_gold_item_id", table_name="gold")
    op.drop_index("ix_gold_snapshot_id", table_name="gold")


def downgrade() -> None:
    op.create_index("ix_gold_snapshot_id", "gold", ["snapshot_id"])
    op.create_index("ix_gold_item_id", "gold", ["item_id"])
