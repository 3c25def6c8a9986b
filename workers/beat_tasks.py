"""Periodic tasks, fired by Celery beat (``beat_schedule.py``). Thin: ids in, a Redis job lock,
a session, a call into :mod:`pipeline.maintenance`.

Task names (the schedule's contract):

- ``pipeline.maintenance.sweep_uidvalidity()``: once per interval, give every valid grant a
  ``check_uidvalidity`` at its fixed offset within the interval, on the grant's provider queue.
- ``pipeline.maintenance.check_uidvalidity(grant_id)``: STATUS every folder of one grant on a
  fresh session; enqueue a sync (the runner reindexes) where UIDVALIDITY changed, and where a
  folder no listener watches (not Inbox/Sent) changed since its last sync (polling).
- ``pipeline.maintenance.discover_folders()``: once per interval, give every valid grant a
  ``discover_grant`` at its fixed offset within the interval.
- ``pipeline.maintenance.discover_grant(grant_id)``: LIST one grant's folders on a pooled
  session; folders another client made are added (``folder.created``, within the folder cap)
  and their syncs queued, vanished ones removed (``folder.deleted``).
- ``pipeline.maintenance.purge()``: the rolling retention purge, ``PURGE_BUDGET_S`` at a time.
- ``pipeline.maintenance.reconcile()``: re-enqueue stalled grants and folders; delete the
  messages that stayed in no folder past the orphan grace (``message.deleted``).

Every task is harmless run twice or overlapping itself: the planners and reconcile hold a job
lock for most of their interval ("once per interval"), purge and the per-grant check hold one
while they run, and all the work below them is idempotent.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import Task

from beat_schedule import MAINTENANCE_QUEUE
from pipeline.errors import ImapAuthError, ImapError, ImapLimitError, ImapThrottledError
from pipeline.grants.repository import GrantRepository
from pipeline.maintenance.locks import job_lock
from pipeline.maintenance.purge import PURGE_BUDGET_S, purge
from pipeline.maintenance.reconcile import finalize_quiet_orphans, reconcile
from pipeline.maintenance.sweep import check_grant, plan_sweep, poll_grant
from pipeline.presets import preset
from pipeline.ratelimit import RateLimited
from pipeline.sync.runner import discover_folders
from workers import enqueue, folder_queue
from workers.app import app
from workers.resources import (
    fresh_imap_for,
    imap_for,
    note_misbehaved,
    note_throttled,
    redis_client,
    release_imap,
    reschedule,
    sessions,
)
from workers.settings import settings
from workers.webhook_tasks import kick

log = logging.getLogger(__name__)

ONCE_PER_INTERVAL = 0.8  # a planner's lock lasts this share of its interval: a duplicate fired
# in the same interval is skipped, the next interval's run (even if early by 20 %) is not
CHECK_LOCK_TTL_S = 5 * 60  # one grant's STATUS round: bounded by the IMAP timeout per folder
PURGE_LOCK_MARGIN_S = 60  # the purge lock outlives the run's budget by this much
FOLDER_LOCK_KEY = "imap-pipeline:lock:folder:{}"  # held by pipeline.sync.folder while it runs


def _plan_per_grant(job: str, task: str, interval: float) -> dict[str, Any]:
    """Send ``task`` for every valid grant, each at its fixed offset within ``interval``
    (no thundering herd at :00); once per interval however often beat fires."""
    with job_lock(redis_client(), job, interval * ONCE_PER_INTERVAL, release=False) as taken:
        if not taken:
            return {"skipped": "already planned this interval"}
        with sessions().begin() as db:
            jobs = plan_sweep(db, interval)
        for planned in jobs:
            app.send_task(
                task,
                args=[planned.grant_id],
                queue=preset(planned.provider).queue,
                countdown=planned.countdown_s or None,
                # one that could not run before the next interval's is replaced by it
                expires=planned.countdown_s + interval,
            )
    return {"planned": len(jobs)}


@app.task(name="pipeline.maintenance.sweep_uidvalidity")
def sweep_uidvalidity_task() -> dict[str, Any]:
    """Plan this interval's UIDVALIDITY checks, spread over the interval."""
    return _plan_per_grant(
        "sweep", "pipeline.maintenance.check_uidvalidity", settings().uidvalidity_sweep_interval_s
    )


@app.task(name="pipeline.maintenance.poll_folders")
def poll_folders_task() -> dict[str, Any]:
    """Plan this interval's polls of folders without IDLE, spread over the interval."""
    return _plan_per_grant("poll", "pipeline.maintenance.poll_grant", settings().poll_interval_s)


@app.task(name="pipeline.maintenance.poll_grant", bind=True)
def poll_grant_task(self: Task, grant_id: str) -> dict[str, Any]:
    """STATUS a grant's folders without IDLE on a pooled session; sync those that changed."""
    with job_lock(redis_client(), f"poll:{grant_id}", CHECK_LOCK_TTL_S) as taken:
        if not taken:
            return {"skipped": "a poll of this grant is running"}
        with sessions().begin() as db:
            grant = GrantRepository(db).get(grant_id)
            if grant is None or grant.grant_status != "valid" or grant.sync_state == "stopped":
                return {"skipped": "grant not active"}
            provider = grant.provider
            try:
                imap = imap_for(db, grant)
            except RateLimited as exc:
                reschedule(self, exc)
                return {"skipped": "rate limited"}
            except ImapLimitError as exc:
                note_misbehaved(grant_id, exc)
                return {"skipped": type(exc).__name__}
            except ImapError as exc:  # an auth failure marks the grant invalid (committed)
                return {"skipped": type(exc).__name__}
        healthy = False
        to_sync: list[str] = []  # queued at the end, at most N at once (workers.folder_queue)
        try:
            changed = poll_grant(
                sessions(), imap, grant_id, now=datetime.now(UTC), enqueue_sync=to_sync.append
            )
            healthy = True
        except ImapLimitError as exc:
            note_misbehaved(grant_id, exc)
            return {"skipped": type(exc).__name__}
        except ImapError as exc:
            log.warning("folder poll failed: %s", exc)
            return {"skipped": type(exc).__name__}
        finally:
            release_imap(grant_id, imap, healthy=healthy)
            _queue(grant_id, provider, to_sync)
    return {"changed": len(changed)}


def _queue(grant_id: str, provider: str, folder_ids: list[str]) -> None:
    """Queue syncs of the folders a check found changed (committed), at most N at once."""
    if folder_ids:
        folder_queue.queue_folders(
            redis_client(),
            grant_id,
            provider,
            folder_ids,
            settings().max_folder_tasks_per_grant,
            replace=False,
        )


@app.task(name="pipeline.maintenance.discover_folders")
def discover_folders_task() -> dict[str, Any]:
    """Plan this interval's folder discoveries, spread over the interval."""
    return _plan_per_grant(
        "discover",
        "pipeline.maintenance.discover_grant",
        settings().folder_discovery_interval_s,
    )


@app.task(name="pipeline.maintenance.discover_grant", bind=True)
def discover_grant_task(self: Task, grant_id: str) -> dict[str, Any]:
    """LIST a grant's folders; add (and sync) new ones, remove vanished ones."""
    with job_lock(redis_client(), f"discover:{grant_id}", CHECK_LOCK_TTL_S) as taken:
        if not taken:
            return {"skipped": "a discovery of this grant is running"}
        with sessions().begin() as db:
            grant = GrantRepository(db).get(grant_id)
            if grant is None or grant.grant_status != "valid" or grant.sync_state == "stopped":
                return {"skipped": "grant not active"}
            if grant.initial_sync_completed_at is None:
                return {"skipped": "initial sync running"}  # its grant sync discovers
            provider = grant.provider
            try:
                imap = imap_for(db, grant)
            except RateLimited as exc:
                reschedule(self, exc)
                return {"skipped": "rate limited"}
            except ImapLimitError as exc:
                note_misbehaved(grant_id, exc)
                return {"skipped": type(exc).__name__}
            except ImapError as exc:  # an auth failure marks the grant invalid (committed)
                return {"skipped": type(exc).__name__}
        healthy = False
        try:
            listed = imap.list_folders()
            healthy = True
        except ImapLimitError as exc:
            note_misbehaved(grant_id, exc)
            return {"skipped": type(exc).__name__}
        except ImapError as exc:
            log.warning("folder discovery failed: %s", exc)
            return {"skipped": type(exc).__name__}
        finally:
            release_imap(grant_id, imap, healthy=healthy)
        with sessions().begin() as db:  # no IMAP I/O inside the transaction
            grant = GrantRepository(db).get_for_update(grant_id)
            if grant is None:
                return {"skipped": "grant removed"}
            changes = discover_folders(
                db, grant, listed, max_folders=settings().max_folders_per_grant
            )
    if changes.created or changes.deleted:
        kick()  # folder.created / folder.deleted
    created = set(changes.created)
    _queue(grant_id, provider, [f for f in changes.selectable if f in created])
    return {"created": len(changes.created), "deleted": len(changes.deleted)}


@app.task(name="pipeline.maintenance.check_uidvalidity", bind=True)
def check_uidvalidity_task(self: Task, grant_id: str) -> dict[str, Any]:
    """Compare every folder's UIDVALIDITY on the server with ours; act on changes."""
    with job_lock(redis_client(), f"sweep:{grant_id}", CHECK_LOCK_TTL_S) as taken:
        if not taken:
            return {"skipped": "a check of this grant is running"}
        with sessions().begin() as db:
            grant = GrantRepository(db).get(grant_id)
            if grant is None or grant.grant_status != "valid":
                return {"skipped": "grant invalid"}
            provider = grant.provider
            try:
                imap = fresh_imap_for(db, grant)
            except RateLimited as exc:
                reschedule(self, exc)
                return {"skipped": "rate limited"}
            except ImapAuthError:
                return {"skipped": "grant invalid"}  # now invalid (committed with this block)
            except ImapLimitError as exc:
                note_misbehaved(grant_id, exc)
                return {"skipped": type(exc).__name__}
            except ImapError as exc:
                # throttling is already recorded; the next sweep looks again
                log.warning("UIDVALIDITY check could not log in: %s", exc)
                return {"skipped": type(exc).__name__}
        healthy = False
        to_sync: list[str] = []  # queued at the end, at most N at once (workers.folder_queue)
        try:
            report = check_grant(
                sessions(), imap, grant_id, now=datetime.now(UTC), enqueue_sync=to_sync.append
            )
            healthy = True
        except ImapThrottledError:
            with sessions().begin() as db:
                grant = GrantRepository(db).get(grant_id)
                if grant is not None:
                    note_throttled(grant)
            return {"skipped": "throttled"}
        except ImapLimitError as exc:
            note_misbehaved(grant_id, exc)
            return {"skipped": type(exc).__name__}
        except ImapError as exc:
            log.warning("UIDVALIDITY check failed: %s", exc)
            return {"skipped": type(exc).__name__}
        finally:
            release_imap(grant_id, imap, healthy=healthy)
            _queue(grant_id, provider, to_sync)
    return {
        "changed": len(report.changed),
        "stopped": len(report.stopped),
        "resumed": len(report.resumed),
        "polled": len(report.polled),
    }


@app.task(name="pipeline.maintenance.purge")
def purge_task() -> dict[str, Any]:
    """Purge mail past the retention window; continue in a new task if time ran out."""
    with job_lock(redis_client(), "purge", PURGE_BUDGET_S + PURGE_LOCK_MARGIN_S) as taken:
        if not taken:
            return {"skipped": "a purge is running"}
        result = purge(sessions(), retention_days=settings().retention_days, now=datetime.now(UTC))
    if not result.complete:
        app.send_task("pipeline.maintenance.purge", queue=MAINTENANCE_QUEUE)
    return {
        "messages": result.messages,
        "threads": result.threads,
        "sync_failures": result.sync_failures,
        "complete": result.complete,
    }


@app.task(name="pipeline.maintenance.reconcile")
def reconcile_task() -> dict[str, Any]:
    """Re-enqueue grants and folders whose work was lost; finish the deletes of quiet grants."""
    r = redis_client()
    ttl = settings().reconcile_interval_s * ONCE_PER_INTERVAL
    with job_lock(r, "reconcile", ttl, release=False) as taken:
        if not taken:
            return {"skipped": "already ran this interval"}
        grants: list[tuple[str, str]] = []
        folders: list[tuple[str, str, str]] = []
        with sessions().begin() as db:
            report = reconcile(
                db,
                now=datetime.now(UTC),
                enqueue_grant=lambda g, p: grants.append((g, p)),
                enqueue_folder=lambda g, f, p: folders.append((g, f, p)),
                folder_busy=lambda f: bool(r.exists(FOLDER_LOCK_KEY.format(f))),
                per_grant=settings().max_folder_tasks_per_grant,
            )
        for grant_id, provider in grants:  # after the read transaction, like any enqueue
            enqueue.sync_grant(grant_id, provider)
        for grant_id, folder_id, provider in folders:
            enqueue.sync_folder(grant_id, folder_id, provider)
        now = datetime.now(UTC)
        orphans = finalize_quiet_orphans(sessions(), now=now, grace_s=settings().orphan_grace_s)
    if orphans.messages:
        kick()  # message.deleted
    return {
        "grants": len(report.grants),
        "folders": len(report.folders),
        "busy": report.busy,
        "deleted": orphans.messages,
    }
