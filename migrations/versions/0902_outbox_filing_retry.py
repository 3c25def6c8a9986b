"""outbox: a sent message whose Sent copy could not be filed is filed again later

Revision ID: 0902
Revises: 0901
Create Date: 2026-12-07 06:20:00

``filing_attempts`` counts the tries at the Sent copy; a ``sent`` row that still holds its
MIME is waiting for one (its ``lease_until`` says not before when). The partial index serves
the drains' and the sweep's look for such rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0902"
down_revision = "0901"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "send_outbox",
        sa.Column("filing_attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_send_outbox_unfiled",
        "send_outbox",
        ["grant_id", "lease_until"],
        postgresql_where=sa.text("state = 'sent' AND raw IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_send_outbox_unfiled", table_name="send_outbox")
    op.drop_column("send_outbox", "filing_attempts")
