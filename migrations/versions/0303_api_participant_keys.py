"""api: per-grant address keys, so an address filter reads only the grant's own messages

Revision ID: 0303
Revises: 0302
Create Date: 2026-11-26 08:35:00

``ix_api_messages_participants`` (0301) indexed bare addresses: a common address matched rows
of every grant, which were then thrown away. The keys are ``<grant id>:<lower-case address>``,
so the GIN index finds exactly the grant's matches. The function must stay IMMUTABLE (it is
pure) and identical to what ``pipeline.api.queries`` calls.
"""

from __future__ import annotations

from alembic import op

revision = "0303"
down_revision = "0302"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION api_participant_keys(grant_id uuid, people jsonb)
        RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT coalesce(
                array_agg(DISTINCT grant_id::text || ':' || lower(p ->> 'email')),
                '{}'::text[]
            )
            FROM jsonb_array_elements(
                CASE WHEN jsonb_typeof(people) = 'array' THEN people ELSE '[]'::jsonb END
            ) AS p
            WHERE p ->> 'email' IS NOT NULL AND p ->> 'email' <> ''
        $$
        """
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_api_messages_participant_keys ON messages USING gin "
        '(api_participant_keys(grant_id, "from" || "to" || cc || bcc))'
    )
    op.execute("DROP INDEX IF EXISTS ix_api_messages_participants")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_api_messages_participant_keys")
    op.execute("DROP FUNCTION IF EXISTS api_participant_keys(uuid, jsonb)")
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_api_messages_participants ON messages USING gin "
        '((jsonb_path_query_array(lower(("from" || "to" || cc || bcc)::text)::jsonb, '
        "'$[*].email'::jsonpath)))"
    )
