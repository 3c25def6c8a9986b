"""attachments.part_path becomes text: an IMAP section number has no length limit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 11:00:00

A message whose attachment sits 40 multiparts deep has a 79-character section number
("2.2.2…"); varchar(64) refused the row and, with it, the whole batch. varchar -> text is a
catalog change in Postgres (no table rewrite).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("attachments", "part_path", type_=sa.Text(), existing_nullable=False)


def downgrade() -> None:
    op.alter_column(
        "attachments",
        "part_path",
        type_=sa.String(length=64),
        existing_nullable=False,
        postgresql_using="left(part_path, 64)",
    )
