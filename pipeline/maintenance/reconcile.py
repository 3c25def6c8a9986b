"""Reconciliation: re-enqueue work that a lost Redis event or a dead worker left behind.

Postgres is the truth; Redis only carries the queue. So every ``RECONCILE_INTERVAL_S`` this
looks at what the database says is unfinished and enqueues it again:

- grants still in their initial sync (``pending``/``syncing``) with no grant or folder change
  for ``GRANT_STALL_S`` -> ``pipeline.sync.grant`` (discovers folders, enqueues each);
- folders ``failed``, or left ``pending``/``syncing``/``reindexing`` for ``FOLDER_STALL_S``
  with nobody holding their sync lock -> ``pipeline.sync.folder`` (at most
  ``per_grant`` per grant and run, as discovery queues them);
- messages that lost their last placement more than the orphan grace ago
  (``IMAP_PIPELINE_ORPHAN_GRACE_S``) -> deleted with ``message.deleted``
  (:func:`finalize_quiet_orphans`). A folder sync does this too when it ends, but on a grant
  where nothing else happens no sync follows the one that saw the expunge: this run is what
  finishes the delete, within the grace plus one ``RECONCILE_INTERVAL_S``.

Re-enqueueing is harmless: sync tasks are idempotent and take a per-folder lock, so a folder
that is in fact being synced is skipped by the task. At most ``RECONCILE_MAX_ENQUEUE`` jobs per
run, so a large backlog drains over several runs instead of flooding the queues.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from pipeline.maintenance.repository import MaintenanceRepository
from pipeline.messages.orphans import finalize_orphans

GRANT_STALL_S = 15 * 60  # an initial sync commits far more often than this while it runs
FOLDER_STALL_S = 10 * 60  # > a sync task's time budget (120 s) plus its queueing
RECONCILE_MAX_ENQUEUE = 1000  # jobs per run
# Grants whose orphans one run deletes (one short transaction each); a larger backlog drains
# over the next runs, oldest orphans first.
ORPHAN_GRANTS_PER_RUN = 500


@dataclass
class ReconcileReport:
    """What one reconciliation run enqueued."""

    grants: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    busy: int = 0


def reconcile(
    db: Session,
    *,
    now: datetime,
    enqueue_grant: Callable[[str, str], object],
    enqueue_folder: Callable[[str, str, str], object],
    folder_busy: Callable[[str], bool],
    per_grant: int | None = None,
) -> ReconcileReport:
    """Find stalled grants and folders and enqueue them again. Never commits.

    Args:
        db: A session (read only here).
        now: The time of the run.
        enqueue_grant: ``(grant_id, provider)``: enqueue a grant sync.
        enqueue_folder: ``(grant_id, folder_id, provider)``: enqueue a folder sync.
        folder_busy: Whether a folder's sync lock is held right now.
        per_grant: At most this many folder jobs per grant and run (the grant's share of the
            queue, ``IMAP_PIPELINE_MAX_FOLDER_TASKS_PER_GRANT``); None: no limit.
    """
    report = ReconcileReport()
    repo = MaintenanceRepository(db)
    budget = RECONCILE_MAX_ENQUEUE
    for grant_id, provider in repo.stalled_grants(now - timedelta(seconds=GRANT_STALL_S)):
        if budget <= 0:
            return report
        enqueue_grant(grant_id, provider)
        report.grants.append(grant_id)
        budget -= 1
    stalled = set(report.grants)
    queued: dict[str, int] = {}
    for grant_id, folder_id, provider in repo.folders_to_retry(
        now - timedelta(seconds=FOLDER_STALL_S)
    ):
        if budget <= 0:
            break
        if grant_id in stalled:
            continue  # the grant sync enqueues its folders
        if per_grant is not None and queued.get(grant_id, 0) >= per_grant:
            continue  # the next run takes more of this grant's folders
        if folder_busy(folder_id):
            report.busy += 1
            continue
        queued[grant_id] = queued.get(grant_id, 0) + 1
        enqueue_folder(grant_id, folder_id, provider)
        report.folders.append(folder_id)
        budget -= 1
    return report


@dataclass
class OrphanReport:
    """What one run of :func:`finalize_quiet_orphans` deleted."""

    grants: list[str] = field(default_factory=list)
    messages: int = 0


def finalize_quiet_orphans(
    sessions: sessionmaker[Session], *, now: datetime, grace_s: float
) -> OrphanReport:
    """Delete the messages of every grant that stayed in no folder for ``grace_s``, each grant
    in its own transaction, with its ``message.deleted`` notifications (after the initial sync).

    Idempotent, and safe beside a folder sync doing the same for its grant: the delete takes
    the grant's lock and deletes only messages still unplaced, so a message a sync re-placed
    meanwhile (a move) is kept.
    """
    report = OrphanReport()
    with sessions.begin() as db:
        grants = MaintenanceRepository(db).grants_with_expired_orphans(
            now - timedelta(seconds=grace_s), ORPHAN_GRANTS_PER_RUN
        )
    for grant_id in grants:
        deleted = finalize_orphans(sessions, grant_id, now=now, grace_s=grace_s)
        if deleted:
            report.grants.append(grant_id)
            report.messages += len(deleted)
    return report
