"""api: the subject trigram index per grant (btree_gin), like the address keys of 0303

Revision ID: 0304
Revises: 0303
Create Date: 2026-11-26 09:05:00

``ix_api_messages_subject_trgm`` (0301) covered every grant: a common word matched rows of all
of them. With ``grant_id`` as the first GIN column (btree_gin) the index yields only the grant's.
"""

from __future__ import annotations

from alembic import op

revision = "0304"
down_revision = "0303"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_api_messages_grant_subject_trgm ON messages "
        "USING gin (grant_id, subject gin_trgm_ops)"
    )
    op.execute("DROP INDEX IF EXISTS ix_api_messages_subject_trgm")


def downgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_api_messages_subject_trgm ON messages "
        "USING gin (subject gin_trgm_ops)"
    )
    op.execute("DROP INDEX IF EXISTS ix_api_messages_grant_subject_trgm")
