"""api: search rows walked by date; trigram indexes led by the text; finer text statistics

Revision ID: 0322
Revises: 0321
Create Date: 2026-12-07 03:30:00

A page of ``search_query_native`` is the newest matches first, and the match is decided on the
search row (0321) while the order was the message's. Postgres had two plans, both slow on a
term with hundreds or thousands of matches: walk the grant's messages newest first and probe
each one's search row by key (four index and heap pages a message passed), or read every
match through the trigram index, join each to its message, its copies and the drafts check,
and sort them all for the first 50. With ``date`` on the search row (equal to
``messages.date``, kept by the same trigger) and ``(grant_id, date, message_id)`` indexed, the
page query (``pipeline.api.queries.list_messages_query``) walks the search rows newest first,
tests the stored text in place and joins only the matches.

Two more changes let Postgres choose between that walk and the trigram index well:

- the trigram GIN indexes of 0321 are rebuilt as ``(text gin_trgm_ops, grant_id)``: led by
  ``grant_id`` (btree_gin), a scan stepped through every message of the grant against the
  trigram entries, and a term made of common trigrams cost 25-40 ms on a 100,000-message grant
  even when it matched 20 rows (``SUBJECT "subject 4242"``; ``FROM sender7@`` 34 ms); led by
  the trigrams, the same scans take 3-9 ms and still return only the grant's rows;
- the text columns keep 1,000-entry statistics (default 100): ``LIKE '%term%'`` is estimated
  from the histogram, and with 100 entries a term in 1 % of the rows was mostly absent from it
  and estimated at the 0.01 % floor, so Postgres read and sorted all its matches instead of
  walking (``SUBJECT invoice``, 1,030 matches). ANALYZE of the table then samples 300,000 rows.

Cost: one more column and index on ``api_message_search`` (about 8 MB for 200,000 rows) and
five GIN indexes rebuilt; the backfill rewrites the table under the migration's lock (200,000
rows: about 20 s, and about 2 s an index, on a loaded 2-core machine). Whatever writes a
message's search row must write its date: the trigger below (also on updates of
``messages.date``).
"""

from __future__ import annotations

from alembic import op

revision = "0322"
down_revision = "0321"
branch_labels = None
depends_on = None

COLUMNS = "message_id, grant_id, subject, from_text, to_text, cc_text, bcc_text, sent_day"
ROW = """
    SELECT m.id, m.grant_id,
        api_search_header(m.headers, 'subject'),
        api_search_addresses(m."from"), api_search_addresses(m."to"),
        api_search_addresses(m.cc), api_search_addresses(m.bcc),
        api_search_sent_day(m.headers)
"""
SET = """
    grant_id = EXCLUDED.grant_id, subject = EXCLUDED.subject,
    from_text = EXCLUDED.from_text, to_text = EXCLUDED.to_text,
    cc_text = EXCLUDED.cc_text, bcc_text = EXCLUDED.bcc_text,
    sent_day = EXCLUDED.sent_day
"""
WATCHED = 'subject, headers, "from", "to", cc, bcc, grant_id'
TEXTS = ("subject", "from_text", "to_text", "cc_text", "bcc_text")
TEXT_STATISTICS = 1000  # histogram entries of each text column (Postgres' default: 100)


def _trigram_indexes(columns: str | None) -> None:
    """Drop the trigram index of each text column and, unless ``columns`` is None, build it
    again on ``columns`` ({c}: the column)."""
    for column in TEXTS:
        op.execute(f"DROP INDEX IF EXISTS ix_api_message_search_{column}")
        if columns is None:
            continue
        op.execute(
            f"CREATE INDEX ix_api_message_search_{column} ON api_message_search "
            f"USING gin ({columns.format(c=column)})"
        )


def _keep(columns: str, row: str, set_: str, watched: str) -> None:
    """(Re)create the trigger function and the update trigger of 0321 with these columns."""
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION api_message_search_keep() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO api_message_search ({columns}) {row} FROM (SELECT NEW.*) AS m
            ON CONFLICT (message_id) DO UPDATE SET {set_};
            RETURN NULL;
        END
        $$
        """
    )
    op.execute("DROP TRIGGER IF EXISTS api_message_search_update ON messages")
    op.execute(
        f"CREATE TRIGGER api_message_search_update AFTER UPDATE OF {watched} ON messages "
        "FOR EACH ROW EXECUTE FUNCTION api_message_search_keep()"
    )


def upgrade() -> None:
    _trigram_indexes(None)  # rebuilt below: the backfill need not update them
    op.execute("ALTER TABLE api_message_search ADD COLUMN date timestamptz")
    op.execute(
        "UPDATE api_message_search AS s SET date = m.date FROM messages AS m "
        "WHERE m.id = s.message_id"
    )
    op.execute("ALTER TABLE api_message_search ALTER COLUMN date SET NOT NULL")
    _keep(
        COLUMNS + ", date",
        ROW + ", m.date",
        SET + ", date = EXCLUDED.date",
        WATCHED + ", date",
    )
    op.execute(
        "CREATE INDEX ix_api_message_search_date ON api_message_search "
        "(grant_id, date, message_id)"
    )
    _trigram_indexes("{c} gin_trgm_ops, grant_id")
    op.execute(
        "ALTER TABLE api_message_search "
        + ", ".join(f"ALTER COLUMN {c} SET STATISTICS {TEXT_STATISTICS}" for c in TEXTS)
    )
    op.execute("ANALYZE api_message_search")


def downgrade() -> None:
    op.execute(
        "ALTER TABLE api_message_search "
        + ", ".join(f"ALTER COLUMN {c} SET STATISTICS -1" for c in TEXTS)
    )
    _trigram_indexes("grant_id, {c} gin_trgm_ops")
    op.execute("DROP INDEX IF EXISTS ix_api_message_search_date")
    _keep(COLUMNS, ROW, SET, WATCHED)
    op.execute("ALTER TABLE api_message_search DROP COLUMN IF EXISTS date")
