"""api: metadata on messages (Nylas v3), and the index of the metadata_pair filter

Revision ID: 0310
Revises: 0304
Create Date: 2026-12-06 23:55:00

``messages.metadata`` holds the key-value pairs a client sets (``PUT .../messages/{id}``, sends,
drafts); existing rows read ``{}`` (a constant default: no table rewrite). Few messages carry
metadata, so the GIN index on ``(grant_id, metadata jsonb_path_ops)`` is partial: it holds only
those, and serves ``metadata @> '{"key1": "value"}'`` per grant (btree_gin, migration 0304).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0310"
down_revision = "0304"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "messages",
        sa.Column("metadata", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_api_messages_grant_metadata ON messages "
        "USING gin (grant_id, metadata jsonb_path_ops) WHERE metadata <> '{}'::jsonb"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_api_messages_grant_metadata")
    op.drop_column("messages", "metadata")
