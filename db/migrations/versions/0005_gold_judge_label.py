"""gold: keep the judge's label beside each gold row

A snapshot promises to be reproducible, but ``export gold --snapshot N`` used to look the
judge's verdicts up again at export time, so re-judging (or importing new verdicts) changed
an old snapshot's ``judge_label`` column and broke its checksum. The label is now stored
with the row (the judge id per dimension goes into the snapshot's params). Rows of older
snapshots keep NULL here and are exported as before.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gold") as batch_op:
        batch_op.add_column(sa.Column("judge_label", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gold") as batch_op:
        batch_op.drop_column("judge_label")
