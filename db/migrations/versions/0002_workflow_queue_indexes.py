"""workflow: queue and undo indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 19:55:00

A user's active lease is found by (user_id, status); expired leases are reclaimed by
(status, lease_expires_at); undo finds a user's latest events by (actor_id, id). Without
them each queue pull would scan the user's whole assignment history or the whole table.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_assignment_user_status", "assignment", ["user_id", "status"])
    op.create_index("ix_assignment_lease", "assignment", ["status", "lease_expires_at"])
    op.create_index("ix_annotationevent_actor", "annotationevent", ["actor_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_annotationevent_actor", table_name="annotationevent")
    op.drop_index("ix_assignment_lease", table_name="assignment")
    op.drop_index("ix_assignment_user_status", table_name="assignment")
