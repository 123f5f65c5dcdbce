"""queue: the uniform share the frozen sampling design actually used

A collection's ``audit_share`` is the least share of the design spread evenly over its
items; when the judge's borderline scores are concentrated on a few items, freezing the
design raises the share so the weights' design effect stays bounded
(safereview.workflow.sampling). The share used is recorded so that items imported later
are sized by the same rule.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("collection", sa.Column("design_share", sa.Float(), nullable=True))
    # designs frozen before this revision used the configured share as it was
    op.execute("UPDATE collection SET design_share = audit_share WHERE design_frozen_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("collection") as batch_op:
        batch_op.drop_column("design_share")
