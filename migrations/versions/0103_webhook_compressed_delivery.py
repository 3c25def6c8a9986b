"""webhooks: a destination's ``compressed_delivery`` (Nylas v3 field), stored as given

Revision ID: 0103
Revises: 0102
Create Date: 2026-12-06 21:50:00

Nylas destinations take ``compressed_delivery`` on create and update; the engine keeps it so
that the API shows back what a client set (delivery is not compressed yet: see README, Webhooks).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0103"
down_revision = "0102"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "webhook_destinations",
        sa.Column("compressed_delivery", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("webhook_destinations", "compressed_delivery")
