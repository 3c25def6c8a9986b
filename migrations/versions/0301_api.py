"""api: indexes that let every message-list filter of the HTTP API read a page from an index

Revision ID: 0301
Revises: 0001
Create Date: 2026-11-26 08:00:00

Plain CREATE INDEX: ``migrations/env.py`` runs every revision inside one transaction (after
its advisory lock), where CONCURRENTLY is not allowed. On a large live database, create these
indexes CONCURRENTLY by hand first; ``IF NOT EXISTS`` then makes this revision a no-op.
The participants expression must stay identical to ``pipeline.api.queries.participants_expr``.
"""

from __future__ import annotations

from alembic import op

revision = "0301"
down_revision = "0001"
branch_labels = None
depends_on = None

PARTICIPANTS = (
    "jsonb_path_query_array("
    'lower(("from" || "to" || cc || bcc)::text)::jsonb, \'$[*].email\'::jsonpath)'
)

INDEXES = {
    "ix_api_messages_grant_unread_date": "messages (grant_id, unread, date, id)",
    "ix_api_messages_grant_starred_date": "messages (grant_id, date, id) WHERE starred",
    "ix_api_messages_grant_attach_date": "messages (grant_id, date, id) WHERE has_attachments",
    "ix_api_messages_participants": f"messages USING gin (({PARTICIPANTS}))",
    "ix_api_messages_subject_trgm": "messages USING gin (subject gin_trgm_ops)",
    "ix_api_threads_grant_latest": "threads (grant_id, latest_message_at, id)",
}


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, definition in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
