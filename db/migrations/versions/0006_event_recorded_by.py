"""annotation events: who recorded the event when it was not the person in the app

An import writes events on behalf of the annotators whose labels it brings in; the event
log now also says which principal did it (``cli:<OS user>``, or the admin who used the
Import page), so "who changed this label" has a true answer for imported changes too.
Events written in the app by the annotator themself record their username.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (no table copy), so the append-only triggers stay in place.
    op.add_column(
        "annotationevent",
        sa.Column("recorded_by", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False, server_default=""),
    )


def downgrade() -> None:
    with op.batch_alter_table("annotationevent") as batch_op:
        batch_op.drop_column("recorded_by")
