"""sign-in tickets in the database, so any app replica redeems what another issued

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signinticket",
        sa.Column("ticket_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("sealed_token", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("browser_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("redeemed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("ticket_sha256"),
    )
    with op.batch_alter_table("signinticket") as batch_op:
        batch_op.create_index("ix_signinticket_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_table("signinticket")
