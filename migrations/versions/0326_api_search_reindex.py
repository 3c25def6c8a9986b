"""api: the search table's indexes rebuilt after 0325's backfill

Revision ID: 0326
Revises: 0325
Create Date: 2026-12-07 10:35:00

0325 wrote ``thread_id`` into every row of ``api_message_search``: each row got a new version,
and each of the table's indexes an entry for both (on the search benchmark's 200,000 rows the
indexes doubled: the ``from_text`` trigram index 8 -> 20 MB), and a trigram scan then read
twice the posting lists (``SUBJECT "subject 4242"``: 7.6 ms of Postgres CPU a messages page
before the backfill, 22 ms after it). Rebuilt here, and not in 0325, so that a database that
already ran 0325 gets them rebuilt too.

Cost: REINDEX of the table under the migration's lock (200,000 rows: 3 s on a loaded 2-core
machine); the heap keeps the old versions' space for later rows. Nothing to undo.
"""

from __future__ import annotations

from alembic import op

revision = "0326"
down_revision = "0325"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("REINDEX TABLE api_message_search")


def downgrade() -> None:
    pass  # the rebuilt indexes are the same indexes
