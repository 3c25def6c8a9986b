"""api: registered redirect URIs and single-use authorization codes of hosted auth

Revision ID: 0302
Revises: 0301
Create Date: 2026-11-26 08:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0302"
down_revision = "0301"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_redirect_uris",
        sa.Column("id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("platform", sa.String(32), nullable=False, server_default="web"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint("url", name="uq_api_redirect_uris_url"),
    )
    op.create_table(
        "api_auth_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),  # sha256 hex; never the code
        sa.Column(
            "grant_id",
            postgresql.UUID(as_uuid=False),
            sa.ForeignKey("grants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.Text(), nullable=True),  # PKCE S256
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_auth_codes_expires", "api_auth_codes", ["expires_at"])


def downgrade() -> None:
    op.drop_table("api_auth_codes")
    op.drop_table("api_redirect_uris")
