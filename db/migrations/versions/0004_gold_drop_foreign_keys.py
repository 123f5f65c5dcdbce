"""gold: drop the row-level foreign keys to goldsnapshot and item

Profiling a 1,000,000-row gold snapshot on PostgreSQL: the COPY of its rows took 13.8 s, of
which 9.4 s were the two foreign-key checks (one trigger query per row and key, each locking
and WAL-logging the referenced goldsnapshot or item row: about 4.5 s per key per million
rows); SQLite spent 0.75 s on them. Gold rows are immutable records written only by
``agreement.gold.create_snapshot``, in the same transaction as their ``GoldSnapshot`` and
from item ids read in that transaction (annotations reference items through their own key);
neither items nor snapshots are ever deleted. The unique (snapshot_id, item_id, dimension)
index stays.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# SQLite keeps these constraints unnamed; batch mode names them by this convention when reflecting.
_SQLITE_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_KEYS = (("item_id", "item"), ("snapshot_id", "goldsnapshot"))


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("gold", naming_convention=_SQLITE_NAMES) as batch_op:
            for column, table in _KEYS:
                batch_op.drop_constraint(f"fk_gold_{column}_{table}", type_="foreignkey")
        return
    for column, _table in _KEYS:
        op.drop_constraint(f"gold_{column}_fkey", "gold", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("gold", naming_convention=_SQLITE_NAMES) as batch_op:
            for column, table in _KEYS:
                batch_op.create_foreign_key(f"fk_gold_{column}_{table}", table, [column], ["id"])
        return
    for column, table in _KEYS:
        op.create_foreign_key(f"gold_{column}_fkey", "gold", table, [column], ["id"])
