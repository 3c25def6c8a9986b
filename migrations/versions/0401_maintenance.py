"""maintenance: UIDVALIDITY resync counter and retry time on folders; purge indexes

Revision ID: 0401
Revises: 0001
Create Date: 2026-11-26 08:00:00

- ``folders.uidvalidity_changes``: consecutive sweeps that found the folder's UIDVALIDITY
  changed; at 5 the folder is stopped (``pipeline.maintenance.sweep``).
- ``folders.swept_uidvalidity``: the UIDVALIDITY the last sweep saw (a change still waiting
  for its reindex is not counted twice).
- ``folders.retry_at``: when a stopped folder is tried again (long back-off).
- ``ix_messages_received_at``: the retention purge deletes by ``received_at`` across all grants
  in index order, a batch at a time.
- ``ix_sync_failures_recorded_at``: expiry of old sync failures.

Plain CREATE INDEX: ``migrations/env.py`` runs every revision inside one transaction, where
CONCURRENTLY is not allowed. On a large live database create these indexes CONCURRENTLY by hand
first; ``IF NOT EXISTS`` then makes this revision a no-op for them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0401"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_messages_received_at": "messages (received_at)",
    "ix_sync_failures_recorded_at": "sync_failures (recorded_at)",
}


def upgrade() -> None:
    op.add_column(
        "folders",
        sa.Column("uidvalidity_changes", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("folders", sa.Column("swept_uidvalidity", sa.BigInteger(), nullable=True))
    op.add_column("folders", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    for name, target in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}")


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.drop_column("folders", "retry_at")
    op.drop_column("folders", "swept_uidvalidity")
    op.drop_column("folders", "uidvalidity_changes")
