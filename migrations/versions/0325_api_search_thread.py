"""api: each search row carries its message's thread, indexed

Revision ID: 0325
Revises: 0324
Create Date: 2026-12-07 10:45:00

A thread list with ``search_query_native`` asks, for each thread, whether one of its messages
matches. Walking the threads newest first, Postgres found a thread's messages
(``ix_messages_thread``, the heap of each) and then each message's search row by its key: about
22 buffers a thread (``FROM "Sender 12"``, 3.7 % of the messages: 20,666 buffers for a page of
50 threads on a 100,000-message grant). With ``thread_id`` on the search row and indexed, the
thread's search rows are one index scan, the text is tested on them in place, and only a
matching row is joined to its message (7,100 buffers); starting from a term's matches instead,
the message is not read to find its thread.

``thread_id`` always equals ``messages.thread_id``: written with the row on insert (0323's
statement trigger), and on an update of ``messages.thread_id`` (a merge of threads, or a thread
deleted under it: ON DELETE SET NULL) copied by a row trigger that folds nothing again.

Cost: one more column and btree index on ``api_message_search`` (about 6 MB for 200,000
rows); the backfill rewrites the table under the migration's lock (200,000 rows: about 25 s on
a loaded 2-core machine).
"""

from __future__ import annotations

from alembic import op

revision = "0325"
down_revision = "0324"
branch_labels = None
depends_on = None

COLUMNS = "message_id, grant_id, subject, from_text, to_text, cc_text, bcc_text, sent_day, date"
ROW = """
    SELECT m.id, m.grant_id,
        api_search_header(m.headers, 'subject'),
        api_search_addresses(m."from"), api_search_addresses(m."to"),
        api_search_addresses(m.cc), api_search_addresses(m.bcc),
        api_search_sent_day(m.headers), m.date
"""
SET = """
    grant_id = EXCLUDED.grant_id, subject = EXCLUDED.subject,
    from_text = EXCLUDED.from_text, to_text = EXCLUDED.to_text,
    cc_text = EXCLUDED.cc_text, bcc_text = EXCLUDED.bcc_text,
    sent_day = EXCLUDED.sent_day, date = EXCLUDED.date
"""


def _functions(columns: str, row: str, set_: str) -> None:
    """(Re)create the insert (0323) and update (0321/0322) trigger functions with these columns;
    the triggers call them by name and stay as they are."""
    for name, source in (
        ("api_message_search_add", "new_messages AS m"),
        ("api_message_search_keep", "(SELECT NEW.*) AS m"),
    ):
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION {name}() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO api_message_search ({columns}) {row} FROM {source}
                ON CONFLICT (message_id) DO UPDATE SET {set_};
                RETURN NULL;
            END
            $$
            """
        )


def upgrade() -> None:
    op.execute("ALTER TABLE api_message_search ADD COLUMN thread_id uuid")
    op.execute(
        "UPDATE api_message_search AS s SET thread_id = m.thread_id FROM messages AS m "
        "WHERE m.id = s.message_id AND m.thread_id IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX ix_api_message_search_thread ON api_message_search (thread_id) "
        "WHERE thread_id IS NOT NULL"
    )
    _functions(
        COLUMNS + ", thread_id",
        ROW + ", m.thread_id",
        SET + ", thread_id = EXCLUDED.thread_id",
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION api_message_search_thread() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE api_message_search SET thread_id = NEW.thread_id WHERE message_id = NEW.id;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER api_message_search_thread AFTER UPDATE OF thread_id ON messages "
        "FOR EACH ROW WHEN (OLD.thread_id IS DISTINCT FROM NEW.thread_id) "
        "EXECUTE FUNCTION api_message_search_thread()"
    )
    op.execute("ANALYZE api_message_search")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS api_message_search_thread ON messages")
    op.execute("DROP FUNCTION IF EXISTS api_message_search_thread()")
    _functions(COLUMNS, ROW, SET)
    op.execute("DROP INDEX IF EXISTS ix_api_message_search_thread")
    op.execute("ALTER TABLE api_message_search DROP COLUMN IF EXISTS thread_id")
