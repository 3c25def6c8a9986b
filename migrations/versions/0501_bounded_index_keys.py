"""sync: indexes on text that mail controls use bounded keys (an MD5 of the value)

Revision ID: 0501
Revises: 0002
Depends on: 0304 (api_participant_keys, btree_gin)
Create Date: 2026-12-06 21:00:00

A B-tree or GIN entry cannot exceed about a third of a page: one message with a 9,000-character
subject, Message-ID, reference or address made every write of its batch fail
(``ProgramLimitExceeded``), and with it the folder. The values are stored whole; the indexes
now key them by ``md5(value)`` (32 characters whatever the value), and the lookups in
``pipeline.messages.repository`` and ``pipeline.api.queries`` compare the same keys (then the
values themselves, so a collision cannot join two threads):

- ``threads (grant_id, md5(subject_key))`` replaces ``ix_threads_grant_subject``;
- ``messages (grant_id, md5(message_id_header))`` replaces ``ix_messages_grant_msgid``;
- ``messages USING gin (grant_id, message_reference_keys("references"))`` replaces
  ``ix_messages_references`` (now per grant too, as 0303/0304 did for the API's indexes);
- ``api_participant_keys`` yields ``<grant id>:md5(lower(address))``.

Hand-made (expression indexes no model declares; ``pipeline.schema`` leaves them alone). Plain
CREATE INDEX: on a large live database create these CONCURRENTLY by hand first (``IF NOT
EXISTS`` then skips them); the REINDEX of the participant keys cannot be skipped.
"""

from __future__ import annotations

from alembic import op

revision = "0501"
down_revision = "0002"
branch_labels = None
depends_on = "0304"

PARTICIPANT_KEYS = """
CREATE OR REPLACE FUNCTION api_participant_keys(grant_id uuid, people jsonb)
RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        array_agg(DISTINCT grant_id::text || ':' || {key}),
        '{{}}'::text[]
    )
    FROM jsonb_array_elements(
        CASE WHEN jsonb_typeof(people) = 'array' THEN people ELSE '[]'::jsonb END
    ) AS p
    WHERE p ->> 'email' IS NOT NULL AND p ->> 'email' <> ''
$$
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION message_reference_keys(refs text[])
        RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT coalesce(array_agg(md5(r)), '{}'::text[]) FROM unnest(refs) AS r
        $$
        """
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_threads_grant_subject_key "
        "ON threads (grant_id, md5(subject_key))"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_messages_grant_msgid_key "
        "ON messages (grant_id, md5(message_id_header))"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_messages_reference_keys "
        'ON messages USING gin (grant_id, message_reference_keys("references"))'
    )
    op.execute("DROP INDEX IF EXISTS ix_threads_grant_subject")
    op.execute("DROP INDEX IF EXISTS ix_messages_grant_msgid")
    op.execute("DROP INDEX IF EXISTS ix_messages_references")
    op.execute(PARTICIPANT_KEYS.format(key="md5(lower(p ->> 'email'))"))
    op.execute("REINDEX INDEX ix_api_messages_participant_keys")


def downgrade() -> None:
    op.execute(PARTICIPANT_KEYS.format(key="lower(p ->> 'email')"))
    op.execute("REINDEX INDEX ix_api_messages_participant_keys")
    op.execute("CREATE INDEX ix_threads_grant_subject ON threads (grant_id, subject_key)")
    op.execute("CREATE INDEX ix_messages_grant_msgid ON messages (grant_id, message_id_header)")
    op.execute('CREATE INDEX ix_messages_references ON messages USING gin ("references")')
    op.execute("DROP INDEX IF EXISTS ix_threads_grant_subject_key")
    op.execute("DROP INDEX IF EXISTS ix_messages_grant_msgid_key")
    op.execute("DROP INDEX IF EXISTS ix_messages_reference_keys")
    op.execute("DROP FUNCTION IF EXISTS message_reference_keys(text[])")
