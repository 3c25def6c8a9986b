"""maintenance: the STATUS counts a folder's last sync saw, for polling without CONDSTORE

Revision ID: 0504
Revises: 0503
Create Date: 2026-12-06 23:55:00

On a server without CONDSTORE (Courier-IMAP) STATUS has no HIGHESTMODSEQ, so a flag change or
an expunge moves no value the poll compared (UIDNEXT, UIDVALIDITY). ``MESSAGES`` (an expunge)
and ``UNSEEN`` (a ``\\Seen`` change) do: the sync stores what a STATUS sent just before its
SELECT said (``folders.status_messages``, ``folders.status_unseen``), and the poll compares.
NULL on servers with CONDSTORE, where HIGHESTMODSEQ already tells every change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0504"
down_revision = "0503"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("folders", sa.Column("status_messages", sa.BigInteger(), nullable=True))
    op.add_column("folders", sa.Column("status_unseen", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("folders", "status_unseen")
    op.drop_column("folders", "status_messages")
