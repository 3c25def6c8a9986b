"""The rolling retention purge: mail older than the window leaves the database in small steps.

A message whose INTERNALDATE (``messages.received_at``) is older than ``retention_days`` is
deleted with everything hanging off it: its placements and attachment metadata go by
``ON DELETE CASCADE``, threads it leaves empty are deleted in the same transaction. Old
sync-failure records expire after ``SYNC_FAILURE_RETENTION_DAYS``. (Webhook delivery records
have their own purge in :mod:`pipeline.webhooks`.)

Cost: each batch walks ``ix_messages_received_at`` from its oldest end, so a batch touches only
the rows it deletes and their index entries, whatever the size of the table; ``FOR UPDATE SKIP
LOCKED`` never waits for a sync holding a row, and every transaction is short
(``PURGE_BATCH_ROWS`` rows, ``SET LOCAL`` statement and lock timeouts). A run stops after
``PURGE_BUDGET_S`` and the next beat run continues: a task never comes near the broker's
visibility timeout. No webhook is emitted for purged mail (Nylas does not notify for it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from pipeline.maintenance.repository import MaintenanceRepository

log = logging.getLogger(__name__)

PURGE_BATCH_ROWS = 5000  # messages per transaction: locks held for well under a second
PURGE_BUDGET_S = 120.0  # one run's work; like a sync chunk, far below the visibility timeout
PURGE_STATEMENT_TIMEOUT_MS = 60_000  # a batch that takes longer is rolled back and retried later
PURGE_LOCK_TIMEOUT_MS = 2_000  # never queue behind a schema change or a long writer
SYNC_FAILURE_RETENTION_DAYS = 30  # then a message that failed to parse is tried again


@dataclass
class PurgeResult:
    """What one purge run removed."""

    messages: int = 0
    threads: int = 0
    sync_failures: int = 0
    batches: int = 0
    complete: bool = True  # False when the run stopped at its budget with work left


def purge(
    sessions: sessionmaker[Session],
    *,
    retention_days: int,
    now: datetime,
    batch_rows: int = PURGE_BATCH_ROWS,
    budget_s: float = PURGE_BUDGET_S,
) -> PurgeResult:
    """Remove mail received before ``now - retention_days``, one committed batch at a time.

    Commits its own transactions (one per batch), like a task does; safe to run twice or in
    parallel (batches skip each other's rows).
    """
    started = time.monotonic()
    result = PurgeResult()
    cutoff = now - timedelta(days=retention_days)
    while True:
        with sessions.begin() as db:
            repo = MaintenanceRepository(db)
            repo.set_local_timeouts(PURGE_STATEMENT_TIMEOUT_MS, PURGE_LOCK_TIMEOUT_MS)
            batch = repo.purge_batch(cutoff, batch_rows)
        result.batches += 1
        result.messages += batch.messages
        result.threads += batch.threads
        if batch.messages < batch_rows:
            break
        if time.monotonic() - started > budget_s:
            result.complete = False
            break
    failures_cutoff = now - timedelta(days=SYNC_FAILURE_RETENTION_DAYS)
    while result.complete:
        with sessions.begin() as db:
            repo = MaintenanceRepository(db)
            repo.set_local_timeouts(PURGE_STATEMENT_TIMEOUT_MS, PURGE_LOCK_TIMEOUT_MS)
            expired = repo.expire_sync_failures(failures_cutoff, batch_rows)
        result.sync_failures += expired
        if expired < batch_rows:
            break
        if time.monotonic() - started > budget_s:
            result.complete = False
    if result.messages or result.sync_failures:
        log.info(
            "retention purge",
            extra={
                "messages": result.messages,
                "threads": result.threads,
                "sync_failures": result.sync_failures,
                "complete": result.complete,
            },
        )
    return result
