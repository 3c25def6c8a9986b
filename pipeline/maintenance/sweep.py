"""The five-minute UIDVALIDITY sweep and the stop rule for misconfigured servers.

Every ``SWEEP_INTERVAL_S`` the planner (:func:`plan_sweep`) gives each valid grant a check at a
fixed offset within the interval (a hash of its id), so checks are spread evenly instead of a
thundering herd at :00, and each grant is checked once per interval. A check
(:func:`check_grant`) asks ``STATUS`` of each folder that was synced at least once, on a fresh
session (a pooled one would only repeat what the last sync saw), and compares::

    server == stored                 -> fine; consecutive-change count back to 0
    server != stored, == last swept  -> the same change, still waiting for its reindex:
                                        enqueue the sync again, count unchanged
    server != stored, != last swept  -> a new change: count + 1, enqueue the folder's sync
                                        (the runner reindexes, keeping message ids)
    count reaches UIDVALIDITY_STOP_AFTER
                                     -> folder ``stopped`` ("stopped: UIDVALIDITY changes on
                                        every session"), retried after a long back-off; if it
                                        is the Inbox the whole grant is stopped, and
                                        ``grant.updated`` is emitted

The same STATUS also polls the folders no listener watches (every role but Inbox and Sent): a
``synced`` folder whose UIDNEXT or HIGHESTMODSEQ differs from what its last sync stored gets a
sync enqueued; on a server without CONDSTORE (no HIGHESTMODSEQ, so flag changes and expunges
are invisible to STATUS) it is synced when its last sync is ``POLL_FALLBACK_S`` old.

A stopped folder whose retry is due is asked again: if the server now gives the value the
last sweep saw (stable across sessions hours apart) the folder resumes (state ``syncing``,
count 0, sync enqueued); otherwise the back-off doubles, up to ``STOPPED_RETRY_MAX_S``.

Every look counts, wherever it is (this sweep, the poll, a folder sync's SELECT): a UIDVALIDITY
that differs from the stored one and from the last one seen is a new change
(:func:`count_seen_uidvalidity`), so a folder whose server gives every session a new UIDVALIDITY
is stopped after ``UIDVALIDITY_STOP_AFTER`` changes in a row, whatever the poll and sweep
intervals (before, only sweeps counted, and the minute's polls reindexed it meanwhile). A sync
that sees the stored value remembers it as the last seen, so sessions that disagree (pooled
ones each keeping their own value) also count. Only the sweep resets the count: it looks on a
fresh session, while a poll or a sync may reuse the very session that set the stored value.
Enqueueing is a callback run after the commit.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from pipeline.errors import ImapFolderError
from pipeline.grants.repository import GrantRepository
from pipeline.imap import FolderStatus, ImapSession
from pipeline.maintenance.repository import MaintenanceRepository, SweptFolder
from pipeline.sync import events

log = logging.getLogger(__name__)

UIDVALIDITY_STOP_AFTER = 5  # as Nylas and its predecessor: 5 resyncs in a row, then stop
STOPPED_DETAIL = "stopped: UIDVALIDITY changes on every session"
STOPPED_RETRY_S = 6 * 60 * 60  # a misconfigured server is rarely fixed within hours
STOPPED_RETRY_MAX_S = 48 * 60 * 60  # but keep looking at least every two days
IDLE_ROLES = frozenset({"inbox", "sent"})  # the listener watches these; the sweep polls the rest
POLL_FALLBACK_S = 30 * 60  # without CONDSTORE, a folder is synced at least this often
# A watched folder (Inbox, Sent) that changed but was not synced for this long is synced by the
# poll too: the listener's event was lost (a Redis flush, a listener crash mid-enqueue).
IDLE_SAFETY_NET_S = 2 * 60


@dataclass(frozen=True)
class SweepJob:
    """One grant's check within a sweep interval."""

    grant_id: str
    provider: str
    countdown_s: float


@dataclass
class SweepReport:
    """What one grant's check found, by folder id."""

    same: list[str]
    changed: list[str]
    stopped: list[str]
    resumed: list[str]
    still_broken: list[str]
    gone: list[str]
    polled: list[str] = field(default_factory=list)
    grant_stopped: bool = False
    grant_resumed: bool = False

    @classmethod
    def empty(cls) -> SweepReport:
        return cls([], [], [], [], [], [])


def sweep_offset(grant_id: str, interval_s: float) -> float:
    """A grant's fixed offset within the interval: even spread, stable between sweeps."""
    digest = hashlib.sha256(grant_id.encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return round(fraction * interval_s, 3)


def plan_sweep(db: Session, interval_s: float) -> list[SweepJob]:
    """Every valid grant's check, each at its offset within the interval. Never commits."""
    return [
        SweepJob(grant_id, provider, sweep_offset(grant_id, interval_s))
        for grant_id, provider in MaintenanceRepository(db).valid_grants()
    ]


def retry_delay_s(changes: int) -> float:
    """Back-off of a stopped folder after ``changes`` consecutive changes."""
    doublings = max(changes - UIDVALIDITY_STOP_AFTER, 0)
    return min(math.ldexp(STOPPED_RETRY_S, min(doublings, 16)), STOPPED_RETRY_MAX_S)


def check_grant(
    sessions: sessionmaker[Session],
    imap: ImapSession,
    grant_id: str,
    *,
    now: datetime,
    enqueue_sync: Callable[[str], object],
) -> SweepReport:
    """STATUS every swept folder of ``grant_id`` on ``imap`` and act on what changed.

    Commits its own short transactions (one per folder that needs a write) and calls
    ``enqueue_sync(folder_id)`` after they commit.

    Raises:
        ImapError: The session failed (what was committed stays; the next sweep goes on).
    """
    report = SweepReport.empty()
    with sessions.begin() as db:
        candidates = MaintenanceRepository(db).sweep_candidates(grant_id, now)
    to_sync: list[str] = []
    for candidate in candidates:
        try:
            status = imap.status(candidate.raw_name)
        except ImapFolderError:
            report.gone.append(candidate.id)  # folder discovery removes it
            continue
        seen = status.uidvalidity
        with sessions.begin() as db:
            repo = MaintenanceRepository(db)
            folder = repo.lock_folder(candidate.id)
            if folder is None:
                continue
            action = _decide(db, repo, grant_id, folder, seen, now, report)
        if action:
            to_sync.append(folder.id)
        elif _poll_due(folder, status, now):
            report.polled.append(folder.id)
            to_sync.append(folder.id)
    for folder_id in to_sync:
        enqueue_sync(folder_id)
    if report.stopped or report.changed or report.resumed:
        log.warning(
            "UIDVALIDITY sweep found changes",
            extra={
                "grant_id": grant_id,
                "changed": len(report.changed),
                "stopped": len(report.stopped),
                "resumed": len(report.resumed),
            },
        )
    return report


def poll_grant(
    sessions: sessionmaker[Session],
    imap: ImapSession,
    grant_id: str,
    *,
    now: datetime,
    enqueue_sync: Callable[[str], object],
) -> list[str]:
    """STATUS the folders no listener watches and enqueue a sync of those that changed.

    Cheaper and more frequent than :func:`check_grant`: it reuses a pooled session and writes
    only when a folder's UIDVALIDITY changed: the change counts for the stop rule
    (:func:`count_seen_uidvalidity`), and the folder is synced (which reindexes it) unless the
    rule stopped it. Inbox and Sent are the listener's, but are looked at too once
    their last sync is ``IDLE_SAFETY_NET_S`` old, so a lost event costs minutes, not mail.

    Returns:
        The ids of the folders whose sync was enqueued.

    Raises:
        ImapError: The session failed; the next poll looks again.
    """
    with sessions.begin() as db:
        candidates = MaintenanceRepository(db).sweep_candidates(grant_id, now)
    changed: list[str] = []
    for folder in candidates:
        if folder.state != "synced":
            continue
        watched = folder.role in IDLE_ROLES
        if watched and (
            folder.last_synced_at is None
            or (now - folder.last_synced_at).total_seconds() < IDLE_SAFETY_NET_S
        ):
            continue  # the listener's business, unless its event may have been lost
        try:
            status = imap.status(folder.raw_name)
        except ImapFolderError:
            continue  # gone: folder discovery removes it
        if status.uidvalidity != folder.uidvalidity:
            if status.uidvalidity != folder.swept_uidvalidity:
                with sessions.begin() as db:
                    if not count_seen_uidvalidity(db, grant_id, folder.id, status.uidvalidity, now):
                        continue  # stopped by the rule
            changed.append(folder.id)
        elif _moved_on(folder, status, now):
            changed.append(folder.id)
    for folder_id in changed:
        enqueue_sync(folder_id)
    return changed


def _moved_on(folder: SweptFolder, status: FolderStatus, now: datetime) -> bool:
    """Whether a folder changed since its last sync (any role)."""
    if status.uidnext != folder.uidnext:
        return True
    if status.highestmodseq is not None and folder.highestmodseq is not None:
        return status.highestmodseq != folder.highestmodseq
    last = folder.last_synced_at
    return last is None or (now - last).total_seconds() >= POLL_FALLBACK_S


def _poll_due(folder: SweptFolder, status: FolderStatus, now: datetime) -> bool:
    """Whether a synced folder no listener watches changed since its last sync."""
    if folder.role in IDLE_ROLES or folder.state != "synced":
        return False
    if status.uidvalidity != folder.uidvalidity:
        return False  # a UIDVALIDITY matter: the sweep's rule decides
    return _moved_on(folder, status, now)


def _decide(
    db: Session,
    repo: MaintenanceRepository,
    grant_id: str,
    folder: SweptFolder,
    seen: int,
    now: datetime,
    report: SweepReport,
) -> bool:
    """Apply the rule to one folder (inside its row lock); True when its sync is due."""
    if folder.state == "stopped":
        if seen == folder.swept_uidvalidity:
            repo.resume_folder(folder.id)
            repo.record_sweep(folder.id, seen=seen, changes=0)
            report.resumed.append(folder.id)
            if folder.role == "inbox":
                report.grant_resumed = _set_grant_stopped(db, grant_id, stopped=False)
            return True
        changes = folder.changes + 1
        repo.record_sweep(folder.id, seen=seen, changes=changes)
        repo.stop_folder(folder.id, STOPPED_DETAIL, now + timedelta(seconds=retry_delay_s(changes)))
        report.still_broken.append(folder.id)
        return False
    if seen == folder.uidvalidity:
        if folder.changes or folder.swept_uidvalidity != seen:
            repo.record_sweep(folder.id, seen=seen, changes=0)
        report.same.append(folder.id)
        return False
    return _count_change(db, repo, grant_id, folder, seen, now, report)


def count_seen_uidvalidity(
    db: Session, grant_id: str, folder_id: str, seen: int, now: datetime
) -> bool:
    """Apply the stop rule to a UIDVALIDITY a poll or a folder sync saw. Never commits.

    A value other than the stored one and the last one seen counts one change (the folder's
    row is locked meanwhile); at ``UIDVALIDITY_STOP_AFTER`` the folder is stopped (and, for the
    Inbox, the grant, with ``grant.updated``). The stored value is remembered as the last seen,
    never resets the count (see the module docstring).

    Returns:
        Whether the folder may be synced (False: it is stopped, now or already).
    """
    repo = MaintenanceRepository(db)
    folder = repo.lock_folder(folder_id)
    if folder is None:
        return True  # never synced: nothing to compare with yet
    if folder.state == "stopped":
        return False
    if seen == folder.uidvalidity:
        repo.note_seen(folder_id, seen)
        return True
    return _count_change(db, repo, grant_id, folder, seen, now, SweepReport.empty())


def _count_change(
    db: Session,
    repo: MaintenanceRepository,
    grant_id: str,
    folder: SweptFolder,
    seen: int,
    now: datetime,
    report: SweepReport,
) -> bool:
    """Count ``seen`` (not the folder's stored UIDVALIDITY) unless it is the change last seen;
    stop the folder at the limit. True when its sync is due."""
    if seen == folder.swept_uidvalidity:
        report.changed.append(folder.id)  # the same change, its reindex not done yet
        return True
    changes = folder.changes + 1
    repo.record_sweep(folder.id, seen=seen, changes=changes)
    if changes < UIDVALIDITY_STOP_AFTER:
        report.changed.append(folder.id)
        return True
    repo.stop_folder(folder.id, STOPPED_DETAIL, now + timedelta(seconds=retry_delay_s(changes)))
    report.stopped.append(folder.id)
    if folder.role == "inbox":
        report.grant_stopped = _set_grant_stopped(db, grant_id, stopped=True)
    return False


def _set_grant_stopped(db: Session, grant_id: str, *, stopped: bool) -> bool:
    """Stop (or resume) a grant; emits ``grant.updated``. True when it changed."""
    grant = GrantRepository(db).get_for_update(grant_id)
    if grant is None:
        return False
    if stopped:
        if grant.sync_state == "stopped":
            return False
        grant.sync_state = "stopped"
        grant.status_detail = f"Inbox {STOPPED_DETAIL}"
    else:
        if grant.sync_state != "stopped":
            return False
        grant.sync_state = "synced" if grant.initial_sync_completed_at else "syncing"
        grant.status_detail = None
    db.flush()
    events.grant(db, "grant.updated", grant)
    return True
