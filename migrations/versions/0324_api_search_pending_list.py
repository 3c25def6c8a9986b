"""api: the search text's trigram indexes keep short pending lists

Revision ID: 0324
Revises: 0323
Create Date: 2026-12-07 04:00:00

New entries of a GIN index wait in its pending list until the list passes
``gin_pending_list_limit`` (Postgres' default: 4 MB) or a vacuum merges it, and every scan of
the index reads the whole list. Right after a sync wrote 20,000 messages the five trigram
indexes of ``api_message_search`` held 1,349 pending pages, and ``FROM sender7@`` (a count of
the grant's 334 matches) took 23 ms where the merged index answers in 3. At 256 kB: 101
pending pages and 9 ms, with the 20,000 writes about 8 % slower (26.1 -> 28.1 s on a loaded
2-core machine, measured with 0321's row trigger; 0323's statement trigger makes the writes
cheaper, so the share may be larger there). A storage parameter only: nothing is rebuilt.
"""

from __future__ import annotations

from alembic import op

revision = "0324"
down_revision = "0323"
branch_labels = None
depends_on = None

TEXTS = ("subject", "from_text", "to_text", "cc_text", "bcc_text")
PENDING_LIST_KB = 256


def upgrade() -> None:
    for column in TEXTS:
        op.execute(
            f"ALTER INDEX ix_api_message_search_{column} "
            f"SET (gin_pending_list_limit = {PENDING_LIST_KB})"
        )


def downgrade() -> None:
    for column in TEXTS:
        op.execute(f"ALTER INDEX ix_api_message_search_{column} RESET (gin_pending_list_limit)")
