"""api: search_query_native from the store: folding functions and their trigram indexes

Revision ID: 0320
Revises: 0310
Create Date: 2026-12-06 23:55:00

``pipeline.search.store`` answers IMAP SEARCH keys the way Dovecot matches them: a substring
after folding (``i;unicode-casemap``: upper case, then canonical decomposition). The functions
here are that folding, the address text a search matches (``Name <user@host>, ...``) and the
day of the Date header in its own zone; they must stay IMMUTABLE and identical to what the
store module calls. The trigram GIN indexes (grant first, btree_gin) narrow a substring match to
the grant's candidate rows; ``LIKE`` on the same expression decides.

Cost: three GIN indexes built over every message (on 100,000 messages about 10 s and 60 MB on
a 2-core machine; they grow with the table and slow message inserts a little). Plain CREATE
INDEX: ``migrations/env.py`` runs every revision in one transaction, where CONCURRENTLY is not
allowed. On a large live database run the three ``CREATE INDEX CONCURRENTLY IF NOT EXISTS``
statements by hand first (after creating the functions); this revision then skips them.
"""

from __future__ import annotations

from alembic import op

revision = "0320"
down_revision = "0310"
branch_labels = None
depends_on = None

FUNCTIONS = [
    """
    CREATE OR REPLACE FUNCTION api_search_fold(value text)
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
        SELECT normalize(upper(value), NFD)
    $$
    """,
    """
    CREATE OR REPLACE FUNCTION api_search_addresses(people jsonb)
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT api_search_fold(coalesce(string_agg(
            CASE WHEN coalesce(p ->> 'name', '') = '' THEN '' ELSE (p ->> 'name') || ' ' END
            || '<' || coalesce(p ->> 'email', '')
            || CASE WHEN strpos(coalesce(p ->> 'email', ''), '@') = 0
                    THEN '@MISSING_DOMAIN' ELSE '' END
            || '>',
            ', ' ORDER BY n), ''))
        FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(people) = 'array' THEN people ELSE '[]'::jsonb END
        ) WITH ORDINALITY AS t(p, n)
    $$
    """,
    """
    CREATE OR REPLACE FUNCTION api_search_header(headers jsonb, field text)
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT api_search_fold(coalesce(string_agg(e ->> 'value', E'\n' ORDER BY n), ''))
        FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(headers) = 'array' THEN headers ELSE '[]'::jsonb END
        ) WITH ORDINALITY AS t(e, n)
        WHERE lower(e ->> 'name') = field
    $$
    """,
    r"""
    CREATE OR REPLACE FUNCTION api_search_sent_day(headers jsonb)
    RETURNS date LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
    DECLARE
        value text;
        z text[];
        y int;
        mon int;
        d int;
    BEGIN
        SELECT e ->> 'value' INTO value
        FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(headers) = 'array' THEN headers ELSE '[]'::jsonb END
        ) AS e
        WHERE lower(e ->> 'name') = 'date'
        LIMIT 1;
        z := regexp_match(
            coalesce(value, ''),
            '^\s*(?:[A-Za-z]+\s*,\s*)?(\d{1,2})\s+([A-Za-z]{3})[A-Za-z]*\s+(\d{2,4})\s+'
            '(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?(?:\s|$)'
        );
        IF z IS NULL OR z[4]::int > 23 OR z[5]::int > 59 OR coalesce(z[6], '0')::int > 60 THEN
            RETURN DATE '1970-01-01';  -- no Date, or one that does not parse: as Dovecot
        END IF;
        mon := array_position(
            ARRAY['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov',
                  'dec'], lower(z[2]));
        y := z[3]::int;
        IF length(z[3]) = 2 THEN
            y := y + CASE WHEN y < 50 THEN 2000 ELSE 1900 END;  -- RFC 5322 obs-year
        ELSIF length(z[3]) = 3 THEN
            y := y + 1900;
        END IF;
        d := z[1]::int;
        IF mon IS NULL OR d < 1 OR y > 2037
           OR d > extract(day FROM make_date(y, mon, 1) + interval '1 month - 1 day') THEN
            RETURN DATE '1970-01-01';
        END IF;
        RETURN make_date(y, mon, d);  -- the day as written: SENT* disregard time and zone
    END
    $$
    """,
]

INDEXES = {
    "ix_api_search_subject": "api_search_header(headers, 'subject')",
    "ix_api_search_from": 'api_search_addresses("from")',
    "ix_api_search_to": 'api_search_addresses("to")',
}


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    for statement in FUNCTIONS:
        op.execute(statement)
    for name, definition in INDEXES.items():
        op.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON messages "
            f"USING gin (grant_id, {definition} gin_trgm_ops)"
        )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_api_search_sent_day ON messages "
        "(grant_id, api_search_sent_day(headers))"
    )


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute("DROP INDEX IF EXISTS ix_api_search_sent_day")
    op.execute("DROP FUNCTION IF EXISTS api_search_sent_day(jsonb)")
    op.execute("DROP FUNCTION IF EXISTS api_search_addresses(jsonb)")
    op.execute("DROP FUNCTION IF EXISTS api_search_header(jsonb, text)")
    op.execute("DROP FUNCTION IF EXISTS api_search_fold(text)")
