"""The end of an orphan: a message that stayed in no folder past the grace is deleted, with
its ``message.deleted`` (after the grant's initial sync).

A message whose last placement vanished is only marked orphaned (:mod:`pipeline.sync.changes`):
a move shows up as an expunge in one folder and an arrival in another, and keeps its id. A
folder's run finishes its grant's orphans (:mod:`pipeline.sync.run`), and beat's
reconciliation those of grants whose folders are quiet
(:func:`pipeline.maintenance.reconcile.finalize_quiet_orphans`), so both reach it from here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from pipeline import notifications
from pipeline.grants.repository import GrantRepository
from pipeline.messages.repository import MessageRepository


def finalize_orphans(
    sessions: sessionmaker[Session], grant_id: str, *, now: datetime, grace_s: float
) -> list[str]:
    """Delete messages that stayed in no folder for ``grace_s`` and notify ``message.deleted``.

    Idempotent; beat's reconciliation calls it too, for grants whose folders are quiet
    (:func:`pipeline.maintenance.reconcile.finalize_quiet_orphans`).
    """
    with sessions.begin() as db:
        repo = MessageRepository(db)
        repo.lock_grant(grant_id)  # a batch re-placing a moved message commits first, or waits
        expired = repo.expired_orphans(grant_id, now - timedelta(seconds=grace_s))
        deleted = repo.delete_unplaced(grant_id, expired)
        grant = GrantRepository(db).get(grant_id)
        if deleted and grant is not None and grant.initial_sync_completed_at is not None:
            notifications.messages_deleted(db, grant_id, deleted)
    return deleted
