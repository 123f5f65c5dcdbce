"""sign-in hardening: back-off counters, the sign-in log's address, TRUNCATE refused on the event log

- ``signinthrottle``: one back-off counter per key (account from an address, address,
  account), charged before the password is checked (``workflow.throttle``);
- ``loginattempt.address``: where an attempt came from (the log keeps no typed names that
  match no account);
- PostgreSQL: the append-only annotation event log also refuses ``TRUNCATE`` (row triggers
  do not fire on it); SQLite has no TRUNCATE.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signinthrottle",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("next_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.add_column(
        "loginattempt",
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False, server_default=""),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER annotationevent_no_truncate BEFORE TRUNCATE ON annotationevent "
            "FOR EACH STATEMENT EXECUTE FUNCTION annotationevent_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS annotationevent_no_truncate ON annotationevent")
    with op.batch_alter_table("loginattempt") as batch_op:
        batch_op.drop_column("address")
    op.drop_table("signinthrottle")
