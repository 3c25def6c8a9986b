"""``api_message_search`` (migration 0321): each message's search text, folded once.

One row per message, written by triggers on ``messages`` (inserts: one set-based statement over
a statement's new rows, migration 0323, so a sync batch's COPY computes them together; updates
of the subject, headers, address and date columns: per row) with the functions of migration
0320: every Subject field
and the four address fields as Dovecot matches them, the day of the Date header, and
(migration 0322) the message's own ``date``, always equal to ``messages.date``: a search page
walks a grant's rows newest first on ``(grant_id, date, message_id)``; and (migration 0325) its
``thread_id``, always equal to ``messages.thread_id``. A search then compares
stored text (trigram GIN indexes narrow, ``LIKE`` decides) instead of computing the folding for
every row it looks at. Declared here, on the one schema (:attr:`pipeline.models.Base.metadata`),
so that the schema comparison (:mod:`pipeline.schema`) sees what the migration creates.
"""

from __future__ import annotations

from sqlalchemy import Column, Date, DateTime, ForeignKey, Table, Text
from sqlalchemy.dialects.postgresql import UUID

from pipeline.models import Base

message_search = Table(
    "api_message_search",
    Base.metadata,
    Column(
        "message_id",
        UUID(as_uuid=False),
        ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("grant_id", UUID(as_uuid=False), nullable=False),
    Column("subject", Text, nullable=False),
    Column("from_text", Text, nullable=False),
    Column("to_text", Text, nullable=False),
    Column("cc_text", Text, nullable=False),
    Column("bcc_text", Text, nullable=False),
    Column("sent_day", Date, nullable=False),
    Column("date", DateTime(timezone=True), nullable=False),
    # the message's thread (migration 0325, always equal to ``messages.thread_id``): a thread
    # list's search finds a thread's matching rows by it
    # (``ix_api_message_search_thread``, partial: made by the migration)
    Column("thread_id", UUID(as_uuid=False), nullable=True),
)
