"""item facets: composite (collection, task type / category / model) indexes

The queue's filters and the review page's facet lists always ask within one collection.
Single-column indexes on ``task_type``, ``category`` and ``model`` made the facet lists
three ``SELECT DISTINCT`` scans of the collection (2-2.4 s each at a million items, paid
again every minute by the cache); with ``(collection_id, <facet>)`` each list is a skip
scan, one index seek per distinct value (``review_app.data.facets``).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

FACETS = ("task_type", "category", "model")


def upgrade() -> None:
    with op.batch_alter_table("item") as batch_op:
        for col in FACETS:
            batch_op.drop_index(f"ix_item_{col}")
            batch_op.create_index(f"ix_item_collection_{col}", ["collection_id", col], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("item") as batch_op:
        for col in FACETS:
            batch_op.drop_index(f"ix_item_collection_{col}")
            batch_op.create_index(f"ix_item_{col}", [col], unique=False)
