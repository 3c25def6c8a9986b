"""The five-minute UIDVALIDITY sweep and the stop rule for misconfigured servers.

Every ``SWEEP_INTERVAL_S`` the planner (:func:`plan_sweep`) gives each valid grant a check at a
fixed offset within the interval (a hash of its id), so checks are spread evenly instead of a
thundering herd at :00, and each grant is checked once per interval. A check
(:func:`check_grant`) asks ``STATUS`` of the folders that were synced at least once and are
due (:func:`due_for_check`), on a fresh session (a pooled one would only repeat what the last
sync saw), and compares::

    server == stored                 -> fine; consecutive-change count back to 0
    server != stored, == last swept  -> the same change, still waiting for its reindex:
                                        enqueue the sync again, count unchanged
    server != stored, != last swept  -> a new change: count + 1, enqueue the folder's sync
                                        (the folder sync reindexes, keeping ids)
    count reaches UIDVALIDITY_STOP_AFTER
                                     -> folder ``stopped`` ("stopped: UIDVALIDITY changes on
                                        every session"), retried after a long back-off; if it
                                        is the Inbox the whole grant is stopped, and
                                        ``grant.updated`` is emitted

Due are the folders whose UIDVALIDITY nobody saw within the interval, and those whose look
matters anyway: stopped ones whose retry is due, and ones with changes counted (only a fresh
session seeing the stored value resets the count). Seen are the folders the minute's poll
looked at (its STATUS carries UIDVALIDITY and counts a change; the poll records its looks in
Redis, :mod:`pipeline.maintenance.looks`) and Inbox and Sent while a live listener holds them in
IDLE (a session left open keeps its folder's UIDVALIDITY; a (re)connect's EXAMINE that differs
publishes an event, whose sync counts the change). So an idle grant's check asks nothing and
opens no session: its IMAP commands are the poll's STATUS and the IDLE renewals (issue 11).

The same STATUS also polls the folders no listener watches (every role but Inbox and Sent): a
``synced`` folder whose UIDNEXT or HIGHESTMODSEQ differs from what its last sync stored gets a
sync enqueued. A server without CONDSTORE (Courier-IMAP) gives no HIGHESTMODSEQ, so::

    MESSAGES differs from the last sync's     -> an expunge: sync
    UNSEEN differs from the last sync's       -> a \\Seen change: sync
    nothing differs, last sync >= the flag    -> maybe another flag (\\Flagged, ...): a flag
    refresh interval ago                         refresh (a sync), at most N folders of a grant
                                                 per poll, oldest first (the poll only)

Inbox and Sent are the listener's: the poll skips them while the listener reports them in
IDLE, and looks at them when their last sync is ``IDLE_SAFETY_NET_S`` old and they changed
(as a check does when it asks them), so an event lost with the listener's lease or status (a
listener crash, a Redis flush) costs minutes, not mail.

The counts are those of a STATUS the sync sent just before its SELECT (never newer than what
it read). A quiet folder costs one STATUS per poll on every server, and a whole grant one
``LIST "" "*" RETURN (STATUS ...)`` where the server has LIST-STATUS (RFC 5819: Dovecot,
Cyrus); the flag refresh is the only extra, bounded by its interval and its cap.

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

An empty folder costs nothing to renumber: a new UIDVALIDITY of a folder the server reports
empty (STATUS MESSAGES or SELECT EXISTS 0) and that holds no message of ours is taken at once
(the old numbering's marks dropped), neither counted nor announced (``folder.updated``), and a
stopped one resumes at its retry. Courier-IMAP keeps no uid db for an empty folder until a
read-write SELECT, so each of its sessions numbers an empty INBOX afresh (by the clock): such a
grant was stopped after five sessions.
Enqueueing is a callback run after the commit.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum

from sqlalchemy.orm import Session, sessionmaker

from pipeline import notifications
from pipeline.errors import ImapFolderError
from pipeline.folders.state import FolderState
from pipeline.grants.repository import GrantRepository
from pipeline.grants.state import GrantSyncState
from pipeline.imap import FolderStatus, ImapSession, SelectInfo
from pipeline.maintenance.repository import MaintenanceRepository, SweptFolder

log = logging.getLogger(__name__)

UIDVALIDITY_STOP_AFTER = 5  # as Nylas and its predecessor: 5 resyncs in a row, then stop
STOPPED_DETAIL = "stopped: UIDVALIDITY changes on every session"
STOPPED_RETRY_S = 6 * 60 * 60  # a misconfigured server is rarely fixed within hours
STOPPED_RETRY_MAX_S = 48 * 60 * 60  # but keep looking at least every two days
IDLE_ROLES = frozenset({"inbox", "sent"})  # the listener watches these; the sweep polls the rest
# Without CONDSTORE a folder's flags are re-read at most this often, a few folders per poll
# (the defaults of Settings.beat.flag_refresh_interval_s / flag_refresh_per_poll).
FLAG_REFRESH_S = 10 * 60
FLAG_REFRESH_PER_POLL = 2
# A watched folder (Inbox, Sent) that changed but was not synced for this long is synced by the
# poll too: the listener's event was lost (a Redis flush, a listener crash mid-enqueue).
IDLE_SAFETY_NET_S = 2 * 60

Status = FolderStatus | SelectInfo  # a look at a folder: a STATUS, or a sync's SELECT


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
    adopted: list[str] = field(default_factory=list)  # empty folders renumbered (not counted)
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


def batch_jobs(
    jobs: list[SweepJob], window_s: float, max_size: int
) -> list[tuple[float, str, list[str]]]:
    """Group jobs whose offsets fall in the same ``window_s`` (and whose grants share a
    provider, hence a queue), at most ``max_size`` a group: ``(countdown_s, provider,
    grant_ids)``, the countdown being the group's earliest offset."""
    groups: dict[tuple[int, str], list[SweepJob]] = {}
    for job in sorted(jobs, key=lambda j: j.countdown_s):
        groups.setdefault((int(job.countdown_s // window_s), job.provider), []).append(job)
    out: list[tuple[float, str, list[str]]] = []
    for (_, provider), members in groups.items():
        for start in range(0, len(members), max_size):
            part = members[start : start + max_size]
            out.append((part[0].countdown_s, provider, [j.grant_id for j in part]))
    return sorted(out)


def retry_delay_s(changes: int) -> float:
    """Back-off of a stopped folder after ``changes`` consecutive changes."""
    doublings = max(changes - UIDVALIDITY_STOP_AFTER, 0)
    return min(math.ldexp(STOPPED_RETRY_S, min(doublings, 16)), STOPPED_RETRY_MAX_S)


def due_for_check(
    db: Session,
    grant_id: str,
    now: datetime,
    *,
    looked: Collection[str],
    idle_watched: Collection[str],
) -> list[SweptFolder]:
    """The folders a grant's check must STATUS on a fresh session: a stopped one whose retry is
    due, one with changes counted (only a fresh session's look at the stored value resets the
    count), and one whose UIDVALIDITY nobody saw within the interval. Seen are the folders a
    poll looked at (``looked``: their STATUS carried UIDVALIDITY, and a change counted) and
    Inbox and Sent while a listener holds them in IDLE (``idle_watched``: a session that stays
    open keeps its folder's UIDVALIDITY; its (re)connect's EXAMINE publishes a change, whose
    sync counts it). Never commits."""
    candidates = MaintenanceRepository(db).sweep_candidates(grant_id, now)
    return folders_due(candidates, looked=looked, idle_watched=idle_watched)


def folders_due(
    candidates: Sequence[SweptFolder], *, looked: Collection[str], idle_watched: Collection[str]
) -> list[SweptFolder]:
    """:func:`due_for_check` of a grant's ``candidates`` as a batch of checks read them for
    all its grants (:meth:`MaintenanceRepository.sweep_candidates_of`)."""
    return [
        folder
        for folder in candidates
        if folder.state == FolderState.STOPPED
        or folder.changes
        or not (folder.id in looked or (folder.role in IDLE_ROLES and folder.id in idle_watched))
    ]


def check_grant(
    sessions: sessionmaker[Session],
    imap: ImapSession,
    grant_id: str,
    *,
    now: datetime,
    enqueue_sync: Callable[[str], object],
    only: Collection[str] | None = None,
) -> SweepReport:
    """STATUS every swept folder of ``grant_id`` (of ``only`` folder ids, when given) on
    ``imap`` and act on what changed.

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
        if only is not None and candidate.id not in only:
            continue
        try:
            status = imap.status(candidate.raw_name)
        except ImapFolderError:
            report.gone.append(candidate.id)  # folder discovery removes it
            continue
        with sessions.begin() as db:
            repo = MaintenanceRepository(db)
            folder = repo.lock_folder(candidate.id)
            if folder is None:
                continue
            action = _decide(db, repo, grant_id, folder, status, now, report)
        if action:
            to_sync.append(folder.id)
        elif folder.id in report.adopted:
            continue  # an empty folder renumbered: nothing there to sync
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
    flag_refresh_s: float = FLAG_REFRESH_S,
    flag_refresh_per_poll: int = FLAG_REFRESH_PER_POLL,
    idle_watched: Collection[str] = frozenset(),
    looked: list[str] | None = None,
    candidates: Sequence[SweptFolder] | None = None,
) -> list[str]:
    """STATUS the folders no listener watches (one LIST-STATUS for all of them where the server
    has it) and enqueue a sync of those that changed.

    Cheaper and more frequent than :func:`check_grant`: it reuses a pooled session and writes
    only when a folder's UIDVALIDITY changed: the change counts for the stop rule
    (:func:`count_seen_uidvalidity`), and the folder is synced (which reindexes it) unless the
    rule stopped it. Inbox and Sent are the listener's: not looked at while the listener
    reports them in IDLE (``idle_watched``, :func:`pipeline.listener.status.idle_watched_folders`),
    else looked at once their last sync is ``IDLE_SAFETY_NET_S`` old, so a lost event (a
    listener down, a Redis flush) costs minutes, not mail; the sweep looks in any case.
    Without CONDSTORE, at most ``flag_refresh_per_poll`` unchanged unwatched folders whose last
    sync is ``flag_refresh_s`` old are synced too (oldest first), to re-read their flags.
    The ids of the folders whose STATUS (and so UIDVALIDITY) it saw are appended to
    ``looked`` (the sweep need not ask them again: :func:`due_for_check`). ``candidates``:
    the grant's folders as a batch of polls read them for all its grants at once
    (:meth:`MaintenanceRepository.sweep_candidates_of`), else read here.

    Returns:
        The ids of the folders whose sync was enqueued.

    Raises:
        ImapError: The session failed; the next poll looks again.
    """
    if candidates is None:
        with sessions.begin() as db:
            candidates = MaintenanceRepository(db).sweep_candidates(grant_id, now)
    asked = _to_poll(candidates, now, idle_watched)
    # one LIST-STATUS where the server has it, else a STATUS each; a folder gone is left out
    # (folder discovery removes it)
    statuses = imap.statuses([f.raw_name for f in asked]) if asked else {}
    changed: list[str] = []
    stale: list[SweptFolder] = []  # flags not re-read for long, on a server without CONDSTORE
    for folder in asked:
        status = statuses.get(folder.raw_name)
        if status is None:
            continue
        watched = folder.role in IDLE_ROLES
        if looked is not None:
            looked.append(folder.id)
        if status.uidvalidity != folder.uidvalidity:
            if status.uidvalidity != folder.swept_uidvalidity or status.messages == 0:
                with sessions.begin() as db:
                    seen = count_seen_uidvalidity(db, grant_id, folder.id, now, status=status)
                if seen is Seen.STOPPED:
                    continue  # stopped by the rule
                if seen is Seen.ADOPTED:
                    continue  # an empty folder renumbered: recorded, nothing to sync
            changed.append(folder.id)
        elif _moved_on(folder, status):
            changed.append(folder.id)
        elif not watched and _flags_unseen(folder, status, now, flag_refresh_s):
            # (IDLE reports a watched folder's flag changes: FETCH, handled by the listener)
            stale.append(folder)
    oldest_first = sorted(stale, key=lambda f: f.last_synced_at or datetime.min.replace(tzinfo=UTC))
    changed.extend(f.id for f in oldest_first[:flag_refresh_per_poll])
    for folder_id in changed:
        enqueue_sync(folder_id)
    return changed


def _to_poll(
    candidates: Sequence[SweptFolder], now: datetime, idle_watched: Collection[str]
) -> list[SweptFolder]:
    """The synced folders a poll asks STATUS of: not Inbox and Sent while the listener has
    them in IDLE or synced them less than ``IDLE_SAFETY_NET_S`` ago."""
    asked: list[SweptFolder] = []
    for folder in candidates:
        if folder.state != FolderState.SYNCED:
            continue
        watched = folder.role in IDLE_ROLES
        if watched and folder.id in idle_watched:
            continue  # in IDLE now: its changes come as the listener's events
        if watched and (
            folder.last_synced_at is None
            or (now - folder.last_synced_at).total_seconds() < IDLE_SAFETY_NET_S
        ):
            continue  # the listener's business, unless its event may have been lost
        asked.append(folder)
    return asked


def _moved_on(folder: SweptFolder, status: FolderStatus) -> bool:
    """Whether STATUS shows a change since the folder's last sync (any role)."""
    if status.uidnext != folder.uidnext:
        return True
    if status.highestmodseq is not None and folder.highestmodseq is not None:
        return status.highestmodseq != folder.highestmodseq
    # No CONDSTORE: an expunge lowers MESSAGES, a \Seen change moves UNSEEN (the counts of a
    # STATUS the last sync sent before its SELECT; NULL before that sync: not compared).
    if folder.status_messages is not None and status.messages != folder.status_messages:
        return True
    return (
        folder.status_unseen is not None
        and status.unseen is not None
        and status.unseen != folder.status_unseen
    )


def _flags_unseen(
    folder: SweptFolder, status: FolderStatus, now: datetime, refresh_s: float
) -> bool:
    """Whether a folder's flag changes are invisible to STATUS (no HIGHESTMODSEQ on either
    side) and its flags were last read ``refresh_s`` ago or more."""
    if status.highestmodseq is not None and folder.highestmodseq is not None:
        return False
    last = folder.last_synced_at
    return last is None or (now - last).total_seconds() >= refresh_s


def _poll_due(folder: SweptFolder, status: FolderStatus, now: datetime) -> bool:
    """Whether a synced folder changed since its last sync: any folder no listener watches, and
    Inbox and Sent once their last sync is ``IDLE_SAFETY_NET_S`` old (a listener's event lost
    while the poll trusted it). The flag refresh of servers without CONDSTORE is the poll's
    alone (its cap holds per poll)."""
    if folder.state != FolderState.SYNCED:
        return False
    if folder.role in IDLE_ROLES and (
        folder.last_synced_at is None
        or (now - folder.last_synced_at).total_seconds() < IDLE_SAFETY_NET_S
    ):
        return False
    if status.uidvalidity != folder.uidvalidity:
        return False  # a UIDVALIDITY matter: the sweep's rule decides
    return _moved_on(folder, status)


def _decide(
    db: Session,
    repo: MaintenanceRepository,
    grant_id: str,
    folder: SweptFolder,
    status: FolderStatus,
    now: datetime,
    report: SweepReport,
) -> bool:
    """Apply the rule to one folder (inside its row lock); True when its sync is due."""
    seen = status.uidvalidity
    if folder.state == FolderState.STOPPED:
        if seen == folder.swept_uidvalidity or _adopt_if_empty(repo, folder, status):
            # the server kept its value, or the folder is empty (a new number costs nothing;
            # also heals an empty Courier folder stopped before this rule knew of them)
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
    if _adopt_if_empty(repo, folder, status):
        report.adopted.append(folder.id)
        return False
    return _count_change(db, repo, grant_id, folder, seen, now, report)


def _adopt_if_empty(repo: MaintenanceRepository, folder: SweptFolder, status: Status) -> bool:
    """A new UIDVALIDITY of a folder the server reports empty and we hold nothing of: nothing to
    drop, nothing to reindex, so it is taken at once, without counting for the stop rule and
    without ``folder.updated`` (Courier-IMAP keeps no uid db for an empty folder until a
    read-write SELECT: every session gives it a new UIDVALIDITY). True when taken."""
    exists = status.messages if isinstance(status, FolderStatus) else status.exists
    if exists != 0 or status.uidvalidity == folder.uidvalidity or repo.holds_messages(folder.id):
        return False
    repo.adopt_uidvalidity(folder.id, status.uidvalidity, uidnext=status.uidnext, messages=0)
    log.info(
        "an empty folder has a new UIDVALIDITY; taken without a reindex",
        extra={"folder_id": folder.id},
    )
    return True


class Seen(Enum):
    """What :func:`count_seen_uidvalidity` made of a UIDVALIDITY."""

    SYNC = "sync"  # the stored value, or a counted change: the folder may be synced
    ADOPTED = "adopted"  # an empty folder's new value, taken as the stored one (not counted)
    STOPPED = "stopped"  # the folder is stopped, now or already


def count_seen_uidvalidity(
    db: Session, grant_id: str, folder_id: str, now: datetime, *, status: Status
) -> Seen:
    """Apply the stop rule to the UIDVALIDITY a poll's STATUS or a folder sync's SELECT saw.
    Never commits.

    A value other than the stored one and the last one seen counts one change (the folder's
    row is locked meanwhile); at ``UIDVALIDITY_STOP_AFTER`` the folder is stopped (and, for the
    Inbox, the grant, with ``grant.updated``). The stored value is remembered as the last seen,
    never resets the count (see the module docstring). A new value of a folder the server
    reports empty and we hold nothing of is taken at once, uncounted (:func:`_adopt_if_empty`).
    """
    seen = status.uidvalidity
    repo = MaintenanceRepository(db)
    folder = repo.lock_folder(folder_id)
    if folder is None:
        return Seen.SYNC  # never synced: nothing to compare with yet
    if folder.state == FolderState.STOPPED:
        return Seen.STOPPED
    if seen == folder.uidvalidity:
        repo.note_seen(folder_id, seen)
        return Seen.SYNC
    if _adopt_if_empty(repo, folder, status):
        return Seen.ADOPTED
    if _count_change(db, repo, grant_id, folder, seen, now, SweepReport.empty()):
        return Seen.SYNC
    return Seen.STOPPED


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
        if grant.sync_state == GrantSyncState.STOPPED:
            return False
        grant.sync_state = GrantSyncState.STOPPED
        grant.status_detail = f"Inbox {STOPPED_DETAIL}"
    else:
        if grant.sync_state != GrantSyncState.STOPPED:
            return False
        grant.sync_state = (
            GrantSyncState.SYNCED if grant.initial_sync_completed_at else GrantSyncState.SYNCING
        )
        grant.status_detail = None
    db.flush()
    notifications.grant(db, "grant.updated", grant)
    return True
