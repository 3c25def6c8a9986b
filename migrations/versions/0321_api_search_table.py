"""api: search text stored per message (api_message_search), kept by a trigger

Revision ID: 0321
Revises: 0320
Create Date: 2026-12-07 00:30:00

0320 indexed expressions over ``messages``; a trigram index is lossy, so every candidate row
was folded again (about 40 us a message with 25 headers: JSONB walk, ``normalize``), and a
search that scans newest-first folded every row it passed. Here each message's folded search
text is computed once, when the message is stored or changed (a trigger on ``messages``), into
``api_message_search``; the searches compare stored text. The expression indexes of 0320 are
dropped (nothing reads them any more); its functions stay (the trigger calls them).

Cost: the backfill folds every stored message once (on 200,000 generated messages about
30 s on a loaded 2-core machine) and the GIN indexes are built after it; each message insert
or update of those columns then costs one row here. Plain statements in the migration's
transaction (no CONCURRENTLY, see 0301): on a large live database expect the table and its
indexes to take that long under the migration's lock.
"""

from __future__ import annotations

from alembic import op

revision = "0321"
down_revision = "0320"
branch_labels = None
depends_on = None

ROW = """
    SELECT m.id, m.grant_id,
        api_search_header(m.headers, 'subject'),
        api_search_addresses(m."from"), api_search_addresses(m."to"),
        api_search_addresses(m.cc), api_search_addresses(m.bcc),
        api_search_sent_day(m.headers)
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api_message_search (
            message_id uuid NOT NULL,
            grant_id uuid NOT NULL,
            subject text NOT NULL,
            from_text text NOT NULL,
            to_text text NOT NULL,
            cc_text text NOT NULL,
            bcc_text text NOT NULL,
            sent_day date NOT NULL,
            CONSTRAINT pk_api_message_search PRIMARY KEY (message_id),
            CONSTRAINT fk_api_message_search_message_id_messages FOREIGN KEY (message_id)
                REFERENCES messages (id) ON DELETE CASCADE
        )
        """
    )
    op.execute(f"INSERT INTO api_message_search {ROW} FROM messages AS m")
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION api_message_search_keep() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO api_message_search {ROW} FROM (SELECT NEW.*) AS m
            ON CONFLICT (message_id) DO UPDATE SET
                grant_id = EXCLUDED.grant_id, subject = EXCLUDED.subject,
                from_text = EXCLUDED.from_text, to_text = EXCLUDED.to_text,
                cc_text = EXCLUDED.cc_text, bcc_text = EXCLUDED.bcc_text,
                sent_day = EXCLUDED.sent_day;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER api_message_search_insert AFTER INSERT ON messages "
        "FOR EACH ROW EXECUTE FUNCTION api_message_search_keep()"
    )
    op.execute(
        'CREATE TRIGGER api_message_search_update AFTER UPDATE OF subject, headers, "from", '
        '"to", cc, bcc, grant_id ON messages FOR EACH ROW EXECUTE FUNCTION api_message_search_keep()'
    )
    for column in ("subject", "from_text", "to_text", "cc_text", "bcc_text"):
        op.execute(
            f"CREATE INDEX ix_api_message_search_{column} ON api_message_search "
            f"USING gin (grant_id, {column} gin_trgm_ops)"
        )
    op.execute(
        "CREATE INDEX ix_api_message_search_sent_day ON api_message_search (grant_id, sent_day)"
    )
    for name in ("subject", "from", "to", "sent_day"):
        op.execute(f"DROP INDEX IF EXISTS ix_api_search_{name}")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS api_message_search_update ON messages")
    op.execute("DROP TRIGGER IF EXISTS api_message_search_insert ON messages")
    op.execute("DROP FUNCTION IF EXISTS api_message_search_keep()")
    op.execute("DROP TABLE IF EXISTS api_message_search")
    for name, definition in {
        "subject": "USING gin (grant_id, api_search_header(headers, 'subject') gin_trgm_ops)",
        "from": 'USING gin (grant_id, api_search_addresses("from") gin_trgm_ops)',
        "to": 'USING gin (grant_id, api_search_addresses("to") gin_trgm_ops)',
        "sent_day": "(grant_id, api_search_sent_day(headers))",
    }.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS ix_api_search_{name} ON messages {definition}")
