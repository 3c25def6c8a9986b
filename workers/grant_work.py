"""The per-grant work of the beat jobs, on a worker's IMAP sessions: a poll of one grant's
folders without IDLE, a UIDVALIDITY check of one grant, and applying a grant's folder LIST.
The tasks (:mod:`workers.tasks.beat`) hold the job locks and call these; a batch of polls or
checks reads once what all its grants need (:class:`PollBatch`, :class:`CheckBatch`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.config import get_settings
from pipeline.errors import ImapAuthError, ImapError, ImapThrottledError
from pipeline.grants.repository import GrantRepository
from pipeline.grants.state import GrantSyncState
from pipeline.imap import FolderInfo
from pipeline.limits import RateLimited
from pipeline.listener.status import idle_watched_folders_of
from pipeline.maintenance.discovery import claim_discovery, discoveries_due, unclaim_discovery
from pipeline.maintenance.looks import recent_looks_of
from pipeline.maintenance.repository import MaintenanceRepository, SweptFolder
from pipeline.maintenance.sweep import check_grant, folders_due, poll_grant
from pipeline.models import Grant
from pipeline.sync.plan import discover_folders
from workers import folder_queue
from workers.base import grant_session, skipped
from workers.resources import LimitsView, note_throttled, redis_client, release_imap, sessions
from workers.webhook_queue import kick

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollBatch:
    """What the polls of a batch need besides their IMAP sessions, read once for all its
    grants (a quiet poll's cost was mostly these reads, one by one): one transaction for the
    grants and their folders, one Redis round trip for what the listener watches, one for the
    discovery stamps, the providers' limits once. Read when the batch starts, so as old as
    the batch (at most ``workers.tasks.beat.POLL_BATCH_BUDGET_S``): a folder synced meanwhile
    is at worst synced again (nothing to do), a grant changed meanwhile is seen by the next
    interval's poll."""

    grants: dict[str, Grant]  # the active ones (valid, not stopped)
    folders: dict[str, list[SweptFolder]]
    idle_watched: dict[str, frozenset[str]]
    discovery_due: frozenset[str]
    view: LimitsView

    @classmethod
    def read(cls, grant_ids: list[str]) -> PollBatch:
        now = datetime.now(UTC)
        with sessions().begin() as db:
            grants = {
                g.id: g
                for g in GrantRepository(db).get_many(grant_ids).values()
                if g.grant_status == "valid" and g.sync_state != GrantSyncState.STOPPED
            }
            folders = MaintenanceRepository(db).sweep_candidates_of(list(grants), now)
        discovering = [g.id for g in grants.values() if g.initial_sync_completed_at is not None]
        return cls(
            grants=grants,
            folders=folders,
            idle_watched=idle_watched_folders_of(redis_client(), list(grants)),
            discovery_due=discoveries_due(
                redis_client(),
                discovering,  # the others' grant syncs discover
                interval_s=get_settings().beat.folder_discovery_interval_s,
                poll_interval_s=get_settings().beat.poll_interval_s,
            ),
            view=LimitsView(),
        )


def poll_one(grant_id: str, looked: list[str], batch: PollBatch) -> dict[str, Any]:
    """One grant's poll (its job lock held by the caller); appends the folders whose STATUS
    it saw to ``looked``. Its session is logged out at the end unless a sync of the grant
    follows (then pooled for it, ``BULK_LINGER_S``): the next poll is an interval away.

    Raises:
        RateLimited: No token or connection slot for the grant's session.
    """
    grant = batch.grants.get(grant_id)
    if grant is None:
        return {"skipped": "grant not active"}
    provider = grant.provider
    try:
        imap = grant_session(grant, view=batch.view)
    except ImapError as exc:  # RateLimited too: this poll is skipped, the next one comes
        return skipped(grant_id, exc)
    healthy = False
    to_sync: list[str] = []  # queued at the end, at most N at once (workers.folder_queue)
    listed: list[FolderInfo] | None = None
    try:
        changed = poll_grant(
            sessions(),
            imap,
            grant_id,
            now=datetime.now(UTC),
            enqueue_sync=to_sync.append,
            flag_refresh_s=get_settings().beat.flag_refresh_interval_s,
            flag_refresh_per_poll=get_settings().beat.flag_refresh_per_poll,
            idle_watched=batch.idle_watched.get(grant_id, frozenset()),
            looked=looked,
            candidates=batch.folders.get(grant_id, []),
        )
        if grant_id in batch.discovery_due and claim_discovery(
            redis_client(),
            grant_id,
            interval_s=get_settings().beat.folder_discovery_interval_s,
            poll_interval_s=get_settings().beat.poll_interval_s,
        ):
            try:  # the interval's folder discovery, on this session (no task, no login)
                listed = imap.list_folders()
            except ImapError:
                unclaim_discovery(redis_client(), grant_id)  # the next poll tries again
                raise
        healthy = True
    except ImapError as exc:
        return skipped(grant_id, exc, "folder poll failed")
    finally:
        if to_sync:
            release_imap(grant_id, imap, healthy=healthy)  # pooled for the syncs, if healthy
        else:
            imap.close()  # the slot goes back now, not after a linger
        queue_changed(grant_id, provider, to_sync)
    if listed is not None:
        apply_discovery(grant_id, provider, listed)
    return {"changed": len(changed)}


def queue_changed(grant_id: str, provider: str, folder_ids: list[str]) -> None:
    """Queue syncs of the folders a check found changed (committed), at most N at once."""
    if folder_ids:
        folder_queue.queue_folders(
            redis_client(),
            grant_id,
            provider,
            folder_ids,
            get_settings().sync.max_folder_tasks_per_grant,
            replace=False,
        )


def apply_discovery(grant_id: str, provider: str, listed: list[FolderInfo]) -> dict[str, Any]:
    """Bring the grant's folders in line with ``listed`` (its LIST): new ones announced and
    queued for sync, vanished ones removed."""
    with sessions().begin() as db:  # no IMAP I/O inside the transaction
        grant = GrantRepository(db).get_for_update(grant_id)
        if grant is None:
            return {"skipped": "grant removed"}
        changes = discover_folders(
            db, grant, listed, max_folders=get_settings().sync.max_folders_per_grant
        )
    if changes.created or changes.deleted:
        kick()  # folder.created / folder.deleted
    created = set(changes.created)
    queue_changed(grant_id, provider, [f for f in changes.selectable if f in created])
    return {"created": len(changes.created), "deleted": len(changes.deleted)}


@dataclass(frozen=True)
class CheckBatch:
    """What the UIDVALIDITY checks of a batch read once for all its grants (as
    :class:`PollBatch`): the valid grants and their folders in one transaction, the polls'
    looks and the listener's watched folders in one Redis round trip each."""

    now: datetime
    grants: dict[str, Grant]  # the valid ones
    folders: dict[str, list[SweptFolder]]
    looked: dict[str, frozenset[str]]
    idle_watched: dict[str, frozenset[str]]
    view: LimitsView

    @classmethod
    def read(cls, grant_ids: list[str]) -> CheckBatch:
        now = datetime.now(UTC)
        with sessions().begin() as db:
            grants = {
                g.id: g
                for g in GrantRepository(db).get_many(grant_ids).values()
                if g.grant_status == "valid"
            }
            folders = MaintenanceRepository(db).sweep_candidates_of(list(grants), now)
        since = now.timestamp() - get_settings().beat.uidvalidity_sweep_interval_s
        return cls(
            now=now,
            grants=grants,
            folders=folders,
            looked=recent_looks_of(redis_client(), list(grants), since),
            idle_watched=idle_watched_folders_of(redis_client(), list(grants)),
            view=LimitsView(),
        )


def check_one(grant_id: str, batch: CheckBatch) -> dict[str, Any]:
    """One grant's UIDVALIDITY check (``pipeline.maintenance.check_uidvalidity``), its job
    lock held by the caller.

    Raises:
        RateLimited: No token or connection slot for the fresh session it needs.
    """
    grant = batch.grants.get(grant_id)
    if grant is None:
        return {"skipped": "grant invalid"}
    provider, now = grant.provider, batch.now
    due = folders_due(
        batch.folders.get(grant_id, []),
        looked=batch.looked.get(grant_id, frozenset()),
        idle_watched=batch.idle_watched.get(grant_id, frozenset()),
    )
    if not due:  # every folder's UIDVALIDITY seen lately by a poll or the listener
        return {"changed": 0, "stopped": 0, "resumed": 0, "polled": 0, "asked": 0}
    try:
        imap = grant_session(grant, view=batch.view, fresh=True)
    except RateLimited:
        raise  # the caller sends the check again after the wait
    except ImapAuthError:
        return {"skipped": "grant invalid"}  # now invalid
    except ImapError as exc:  # throttling is already recorded; the next sweep looks again
        return skipped(grant_id, exc, "UIDVALIDITY check could not log in")
    healthy = False
    to_sync: list[str] = []  # queued at the end, at most N at once (workers.folder_queue)
    try:
        report = check_grant(
            sessions(),
            imap,
            grant_id,
            now=now,
            enqueue_sync=to_sync.append,
            only={f.id for f in due},
        )
        healthy = True
    except ImapThrottledError:
        note_throttled(grant)
        return {"skipped": "throttled"}
    except ImapError as exc:
        return skipped(grant_id, exc, "UIDVALIDITY check failed")
    finally:
        release_imap(grant_id, imap, healthy=healthy)
        queue_changed(grant_id, provider, to_sync)
    return {
        "changed": len(report.changed),
        "stopped": len(report.stopped),
        "resumed": len(report.resumed),
        "polled": len(report.polled),
        "asked": len(due),
    }
