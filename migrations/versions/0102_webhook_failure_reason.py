"""webhooks: why a destination fails (webhook_destinations.failure_reason)

Set with every failed batch, cleared by a success or by resuming the destination by hand;
``imap-pipeline webhooks list`` and ``/v3/webhooks`` show it. A nullable column without a
default: adding it rewrites nothing.

Revision ID: 0102
Revises: 0101
Create Date: 2026-12-06 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0102"
down_revision = "0101"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_destinations", sa.Column("failure_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("webhook_destinations", "failure_reason")
