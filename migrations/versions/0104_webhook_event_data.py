"""webhooks: fields a notification carries in ``data`` beside ``object``

Revision ID: 0104
Revises: 0103
Create Date: 2026-12-07 03:10:00

Nylas' ``message.send_success`` has ``data.grant_id`` and ``message.send_failed`` has
``data.grant_id``, ``data.reason`` and ``data.error`` next to ``data.object``; an outbox row
keeps them in ``data`` (NULL for every other type).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0104"
down_revision = "0103"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_outbox", sa.Column("data", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("webhook_outbox", "data")
