"""The application's redirect URIs and hosted-auth codes (migration 0302), as Core tables on the
one schema, :attr:`pipeline.models.Base.metadata`.

``migrations/env.py`` compares that MetaData with the database (see :mod:`pipeline.schema`), so
everything migration 0302 creates is declared here too: the unique URL, the foreign key to
``grants`` and the server defaults.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import UUID

from pipeline.models import Base

redirect_uris = Table(
    "api_redirect_uris",
    Base.metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("url", Text, nullable=False),
    Column("platform", String(32), nullable=False, server_default="web"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("url", name="uq_api_redirect_uris_url"),
)

auth_codes = Table(
    "api_auth_codes",
    Base.metadata,
    Column("code_hash", String(64), primary_key=True),  # sha256 hex; never the code itself
    Column(
        "grant_id",
        UUID(as_uuid=False),
        ForeignKey("grants.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("client_id", Text, nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("code_challenge", Text),  # PKCE S256
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
    Index("ix_api_auth_codes_expires", "expires_at"),  # the purge of expired codes
)
