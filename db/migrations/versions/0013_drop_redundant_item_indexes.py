"""verdict, assignment, annotation: drop the single-column ``item_id`` indexes

Each table also has a unique key that begins with ``item_id`` (``uq_verdict``,
``uq_assignment_item_user``, ``uq_annotation_item_user``), and both SQLite and PostgreSQL
answer a look-up or join by ``item_id`` (and the foreign key's checks) from that key's
index. The second index only cost every insert: one more B-tree to update per verdict,
assignment and annotation written (about 7% of the bare insert of a million items with
their verdicts on SQLite) and its pages on disk.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TABLES = ("verdict", "assignment", "annotation")


def upgrade() -> None:
    for table in TABLES:  # plain DDL on both back ends: no table copy
        op.drop_index(f"ix_{table}_item_id", table_name=table)


def downgrade() -> None:
    for table in TABLES:
        op.create_index(f"ix_{table}_item_id", table, ["item_id"], unique=False)
