"""maintenance: a partial index of orphaned messages, for reconciliation

Revision ID: 0503
Revises: 0502
Create Date: 2026-12-06 21:45:00

Every reconciliation run looks for grants holding messages that lost their last placement
longer than the orphan grace ago (to delete them with ``message.deleted``). Orphans are few and
short-lived, so an index of only the rows with ``orphaned_at`` set stays tiny, and the run does
not scan every message.
"""

from __future__ import annotations

from alembic import op

revision = "0503"
down_revision = "0502"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_messages_orphaned_at ON messages (orphaned_at, grant_id) "
        "WHERE orphaned_at IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_messages_orphaned_at")
