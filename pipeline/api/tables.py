"""Tables only the API uses (migration 0302), as SQLAlchemy Core tables.

They live on their own MetaData, outside :mod:`pipeline.models`, so the API owns them; an
Alembic autogenerate against ``pipeline.models`` does not know them (do not let it drop them).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, MetaData, String, Table, Text
from sqlalchemy.dialects.postgresql import UUID

metadata = MetaData()

redirect_uris = Table(
    "api_redirect_uris",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("url", Text, nullable=False),
    Column("platform", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

auth_codes = Table(
    "api_auth_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("grant_id", UUID(as_uuid=False), nullable=False),
    Column("client_id", Text, nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("code_challenge", Text),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
)
