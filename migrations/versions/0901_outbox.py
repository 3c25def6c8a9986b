"""outbox: sends and scheduled sends, one row each, keyed by the request's Idempotency-Key

Revision ID: 0901
Revises: 0001
Create Date: 2026-12-06 23:50:00

A branch of its own (``outbox``), as every domain has. The table is declared in
:mod:`pipeline.outbound.outbox` (the states are drawn there).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0901"
down_revision = "0001"
branch_labels = ("outbox",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_outbox",
        sa.Column("id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column(
            "grant_id",
            postgresql.UUID(as_uuid=False),
            sa.ForeignKey("grants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("idempotency_key", sa.String(256), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("use_draft", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("mail_from", sa.Text(), nullable=False),
        sa.Column("recipients", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("bcc", postgresql.JSONB(), nullable=False, server_default="[]"),
        sa.Column("message_id_header", sa.Text(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("request", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("stored_message_id", sa.String(64), nullable=True),
        sa.Column("error", postgresql.JSONB(), nullable=True),
        sa.Column("response", postgresql.JSONB(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("grant_id", "idempotency_key", name="uq_send_outbox_grant_key"),
    )
    # what the drain and the sweep look for: open rows of a grant, by when they are due
    op.create_index(
        "ix_send_outbox_open",
        "send_outbox",
        ["grant_id", "send_at"],
        postgresql_where=sa.text("state IN ('queued', 'sending')"),
    )
    op.create_index("ix_send_outbox_closed", "send_outbox", ["closed_at"])


def downgrade() -> None:
    op.drop_table("send_outbox")
