"""workbench: the reason for a change after the reveal, protected media, breaks, per-user preferences

- ``annotation.reveal_reason``: why an annotator changed a blind label after seeing the judge;
- ``collection.reveal_reason``: whether that reason is ``required`` or ``optional``;
- ``collection.protect_media``: images and video start blurred and greyscale until revealed;
- ``collection.break_minutes`` / ``collection.break_unsafe_items``: when the workbench
  suggests a break (0 turns either reminder off);
- ``userpreference``: per-user settings kept in the database (last collection, media
  protection), so they follow the reviewer to any browser or replica.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("annotation", sa.Column("reveal_reason", sa.String(), nullable=False, server_default=""))
    op.add_column(
        "collection", sa.Column("reveal_reason", sa.String(length=12), nullable=False, server_default="required")
    )
    op.add_column("collection", sa.Column("protect_media", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.add_column("collection", sa.Column("break_minutes", sa.Integer(), nullable=False, server_default="45"))
    op.add_column("collection", sa.Column("break_unsafe_items", sa.Integer(), nullable=False, server_default="40"))
    op.create_table(
        "userpreference",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column(
            "prefs", sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"), nullable=False
        ),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"]),
        sa.PrimaryKeyConstraint("user_id"),
    )


def downgrade() -> None:
    op.drop_table("userpreference")
    with op.batch_alter_table("collection") as batch_op:
        for col in ("break_unsafe_items", "break_minutes", "protect_media", "reveal_reason"):
            batch_op.drop_column(col)
    with op.batch_alter_table("annotation") as batch_op:
        batch_op.drop_column("reveal_reason")
