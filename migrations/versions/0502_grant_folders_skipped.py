"""sync: grants.folders_skipped, the folders a grant's server lists that are not synced

Revision ID: 0502
Revises: 0501
Create Date: 2026-12-06 21:10:00

A server listing 10,000 folders queued 10,009 tasks. The folders synced per grant are capped
(``IMAP_PIPELINE_MAX_FOLDERS_PER_GRANT``); how many were left out is kept on the grant, so that
``grants status`` and the API say so. Adding a column with a constant default is a catalog
change in Postgres (no table rewrite).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0502"
down_revision = "0501"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "grants",
        sa.Column("folders_skipped", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("grants", "folders_skipped")
