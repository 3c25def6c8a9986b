"""Periodic tasks, fired by Celery beat (``beat_schedule.py``). Thin: ids in, a Redis job lock,
a session, a call into :mod:`pipeline.maintenance` (the per-grant polls, checks and discoveries
on a worker's IMAP sessions are :mod:`workers.grant_work`).

Task names (the schedule's contract):

- ``pipeline.maintenance.sweep_uidvalidity()``: once per interval, give every valid grant a
  check at its fixed offset within the interval, on the grant's provider queue: grants whose
  offsets fall within ``POLL_BATCH_S`` share a ``check_grants`` task (like polls).
- ``pipeline.maintenance.check_grants(grant_ids)``: ``check_uidvalidity``'s work for each.
- ``pipeline.maintenance.check_uidvalidity(grant_id)``: STATUS the folders of one grant whose
  UIDVALIDITY no poll and no listener saw within the interval (and those with changes counted
  or a retry due) on a fresh session, none (no session) when there are none; enqueue a sync
  (the folder's run reindexes it, :mod:`pipeline.sync.run`) where UIDVALIDITY changed, and
  where a folder no listener watches (not Inbox/Sent) changed since its last sync.
- ``pipeline.maintenance.discover_folders()``: once per interval, give every valid grant a
  ``discover_grant`` at its fixed offset within the interval, but for the grants whose polls
  run their discovery (:mod:`pipeline.maintenance.discovery`).
- ``pipeline.maintenance.discover_grant(grant_id)``: LIST one grant's folders on a pooled
  session; folders another client made are added (``folder.created``, within the folder cap)
  and their syncs queued, vanished ones removed (``folder.deleted``). Nothing when a poll of
  the grant ran the discovery lately: the poll whose grant's discovery is due sends the same
  LIST on its own session (an idle grant's discovery costs one LIST, no task or login).
- ``pipeline.maintenance.purge()``: the rolling retention purge, ``PURGE_BUDGET_S`` at a time.
- ``pipeline.maintenance.reconcile()``: re-enqueue stalled grants and folders; delete the
  messages that stayed in no folder past the orphan grace (``message.deleted``).

Every task is harmless run twice or overlapping itself: the planners and reconcile hold a job
lock for most of their interval ("once per interval"), purge and the per-grant check hold one
while they run, and all the work below them is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from celery import Task

from beat_schedule import MAINTENANCE_QUEUE
from pipeline.config import get_settings
from pipeline.errors import ImapError
from pipeline.grants.repository import GrantRepository
from pipeline.grants.state import grant_syncs
from pipeline.limits import RateLimited
from pipeline.maintenance.discovery import (
    discovered_since,
)
from pipeline.maintenance.locks import job_lock, job_locks
from pipeline.maintenance.looks import record_looks
from pipeline.maintenance.purge import PURGE_BUDGET_S, purge
from pipeline.maintenance.reconcile import finalize_quiet_orphans, reconcile
from pipeline.maintenance.sweep import (
    batch_jobs,
    plan_sweep,
)
from pipeline.presets import preset
from pipeline.redis import folder_lock_key
from workers import enqueue, grant_work
from workers.app import app
from workers.base import PipelineTask, grant_session, reschedule_countdown, skipped
from workers.resources import (
    redis_client,
    sessions,
    using,
)
from workers.webhook_queue import kick

log = logging.getLogger(__name__)

ONCE_PER_INTERVAL = 0.8  # a planner's lock lasts this share of its interval: a duplicate fired
# in the same interval is skipped, the next interval's run (even if early by 20 %) is not
CHECK_LOCK_TTL_S = 5 * 60  # one grant's STATUS round: bounded by the IMAP timeout per folder
# Polls of grants whose offsets fall within POLL_BATCH_S share one task, at most POLL_BATCH_MAX
# grants: a task dispatch costs about as much CPU as a quiet grant's poll (benchmarked in
# tests/benchmarks/steady_state.py). A batch stops after POLL_BATCH_BUDGET_S (slow servers):
# the grants left are polled in the next interval.
POLL_BATCH_S = 5.0
POLL_BATCH_MAX = 50
POLL_BATCH_BUDGET_S = 45.0
PURGE_LOCK_MARGIN_S = 60  # the purge lock outlives the run's budget by this much


def _plan_per_grant(
    job: str,
    task: str,
    interval: float,
    covered: Callable[[list[str]], Collection[str]] = lambda grant_ids: (),
) -> dict[str, Any]:
    """Send ``task`` for every valid grant, each at its fixed offset within ``interval``
    (no thundering herd at :00); once per interval however often beat fires. Grants in
    ``covered(grant ids)`` are left out (their work is done elsewhere)."""
    with job_lock(redis_client(), job, interval * ONCE_PER_INTERVAL, release=False) as taken:
        if not taken:
            return {"skipped": "already planned this interval"}
        with sessions().begin() as db:
            jobs = plan_sweep(db, interval)
        done = covered([j.grant_id for j in jobs])
        jobs = [j for j in jobs if j.grant_id not in done]
        for planned in jobs:
            app.send_task(
                task,
                args=[planned.grant_id],
                queue=preset(planned.provider).queue,
                countdown=planned.countdown_s or None,
                # one that could not run before the next interval's is replaced by it
                expires=planned.countdown_s + interval,
            )
    return {"planned": len(jobs), **({"covered": len(done)} if done else {})}


def _plan_batches(job: str, task: str, interval: float) -> dict[str, Any]:
    """Send ``task`` for every valid grant, once per interval however often beat fires: grants
    whose offsets within ``interval`` fall in the same ``POLL_BATCH_S`` share one task (at most
    ``POLL_BATCH_MAX`` grants, its argument), sent at that offset."""
    with job_lock(redis_client(), job, interval * ONCE_PER_INTERVAL, release=False) as taken:
        if not taken:
            return {"skipped": "already planned this interval"}
        with sessions().begin() as db:
            jobs = plan_sweep(db, interval)
        batches = batch_jobs(jobs, POLL_BATCH_S, POLL_BATCH_MAX)
        for countdown_s, provider, grant_ids in batches:
            app.send_task(
                task,
                args=[grant_ids],
                queue=preset(provider).queue,
                countdown=countdown_s or None,
                expires=countdown_s + interval,  # replaced by the next interval's
            )
    return {"planned": len(jobs), "tasks": len(batches)}


@app.task(name="pipeline.maintenance.sweep_uidvalidity")
def sweep_uidvalidity_task() -> dict[str, Any]:
    """Plan this interval's UIDVALIDITY checks, spread over the interval in ``check_grants``
    batches, as polls are: an idle grant's check opens no session, and its task dispatch was
    most of what it cost."""
    interval = get_settings().beat.uidvalidity_sweep_interval_s
    return _plan_batches("sweep", "pipeline.maintenance.check_grants", interval)


@app.task(name="pipeline.maintenance.poll_folders")
def poll_folders_task() -> dict[str, Any]:
    """Plan this interval's polls of folders without IDLE, spread over the interval in
    ``poll_grants`` batches."""
    return _plan_batches(
        "poll", "pipeline.maintenance.poll_grants", get_settings().beat.poll_interval_s
    )


@app.task(name="pipeline.maintenance.poll_grants")
def poll_grants_task(grant_ids: list[str]) -> dict[str, Any]:
    """Poll several grants one after another (:func:`poll_grant_task`'s work for each): one
    task per batch instead of one per grant, so a thousand idle grants do not cost a thousand
    task dispatches a minute, and what every poll reads is read once for the batch
    (:class:`workers.grant_work.PollBatch`). A grant that is rate limited waits for the next
    interval; the batch stops after ``POLL_BATCH_BUDGET_S`` (slow servers), leaving the rest
    to it too."""
    started, started_at = time.monotonic(), time.time()
    changed = skipped = 0
    looks: dict[str, list[str]] = {}
    with job_locks(redis_client(), [_poll_lock(g) for g in grant_ids], CHECK_LOCK_TTL_S) as taken:
        batch = grant_work.PollBatch.read([g for g in grant_ids if _poll_lock(g) in taken])
        for index, grant_id in enumerate(grant_ids):
            if time.monotonic() - started > POLL_BATCH_BUDGET_S:
                log.warning(
                    "poll batch over its budget; %d grants left to the next interval",
                    len(grant_ids) - index,
                )
                skipped += len(grant_ids) - index
                break
            if _poll_lock(grant_id) not in taken:
                skipped += 1  # a poll of this grant is running
                continue
            try:
                result = grant_work.poll_one(grant_id, looks.setdefault(grant_id, []), batch)
            except RateLimited:
                skipped += 1
                continue
            changed += int(result.get("changed", 0))
            skipped += "skipped" in result
    _record_looks(looks, at=started_at)  # no later than they happened
    return {"grants": len(grant_ids), "changed": changed, "skipped": skipped}


@app.task(name="pipeline.maintenance.poll_grant", base=PipelineTask)
def poll_grant_task(grant_id: str) -> dict[str, Any]:
    """STATUS a grant's folders without IDLE on a new session; sync those that changed."""
    looked: list[str] = []
    started_at = time.time()
    with job_locks(redis_client(), [_poll_lock(grant_id)], CHECK_LOCK_TTL_S) as taken:
        if not taken:
            return {"skipped": "a poll of this grant is running"}
        try:
            return grant_work.poll_one(grant_id, looked, grant_work.PollBatch.read([grant_id]))
        finally:
            _record_looks({grant_id: looked}, at=started_at)


def _poll_lock(grant_id: str) -> str:
    """The job lock a poll of ``grant_id`` holds (no two polls of a grant at once)."""
    return f"poll:{grant_id}"


def _record_looks(looks: dict[str, list[str]], *, at: float) -> None:
    """Tell the sweep which folders' UIDVALIDITY the polls saw (one round trip)."""
    if any(looks.values()):
        interval = get_settings().beat.uidvalidity_sweep_interval_s
        record_looks(redis_client(), looks, interval_s=interval, at=at)


def _polls_discovered(grant_ids: list[str]) -> frozenset[str]:
    """The grants whose folder discovery a poll ran lately: within the interval and one poll
    interval more (their next poll runs the next one, :mod:`pipeline.maintenance.discovery`)."""
    since = (
        time.time()
        - get_settings().beat.folder_discovery_interval_s
        - get_settings().beat.poll_interval_s
    )
    return discovered_since(redis_client(), grant_ids, since)


@app.task(name="pipeline.maintenance.discover_folders")
def discover_folders_task() -> dict[str, Any]:
    """Plan this interval's folder discoveries, spread over the interval; grants whose polls
    run their discovery (on the poll's session) are left to them."""
    return _plan_per_grant(
        "discover",
        "pipeline.maintenance.discover_grant",
        get_settings().beat.folder_discovery_interval_s,
        covered=_polls_discovered,
    )


@app.task(name="pipeline.maintenance.discover_grant", base=PipelineTask)
def discover_grant_task(grant_id: str) -> dict[str, Any]:
    """LIST a grant's folders; add (and sync) new ones, remove vanished ones. Nothing (no
    session) when a poll of the grant ran its discovery lately."""
    if _polls_discovered([grant_id]):
        return {"skipped": "discovered by a poll"}
    with job_lock(redis_client(), f"discover:{grant_id}", CHECK_LOCK_TTL_S) as taken:
        if not taken:
            return {"skipped": "a discovery of this grant is running"}
        with sessions().begin() as db:
            grant = GrantRepository(db).get(grant_id)
        if not grant_syncs(grant):
            return {"skipped": "grant not active"}
        if grant.initial_sync_completed_at is None:
            return {"skipped": "initial sync running"}  # its grant sync discovers
        try:
            imap = grant_session(grant)
        except RateLimited:
            raise  # the task comes back later (workers.base)
        except ImapError as exc:
            return skipped(grant_id, exc)
        try:
            with using(grant_id, imap):
                listed = imap.list_folders()
        except ImapError as exc:
            return skipped(grant_id, exc, "folder discovery failed")
        return grant_work.apply_discovery(grant_id, grant.provider, listed)


@app.task(name="pipeline.maintenance.check_grants", bind=True)
def check_grants_task(self: Task, grant_ids: list[str]) -> dict[str, Any]:
    """Check several grants one after another (:func:`check_uidvalidity_task`'s work for
    each): one task per batch, what every check reads read once for the batch
    (:class:`workers.grant_work.CheckBatch`). A grant that is rate limited gets a
    ``check_uidvalidity`` task of its own after the wait; after ``POLL_BATCH_BUDGET_S`` (slow
    servers) the grants left go on in a new batch, so every grant is checked within its
    interval. Both are sent once the batch's job locks are released, so they do not find them
    taken."""
    started = time.monotonic()
    queue = (self.request.delivery_info or {}).get("routing_key")  # the provider's
    asked = changed = 0
    left: list[str] = []
    limited: list[tuple[str, float]] = []
    with job_locks(redis_client(), [_check_lock(g) for g in grant_ids], CHECK_LOCK_TTL_S) as taken:
        batch = grant_work.CheckBatch.read([g for g in grant_ids if _check_lock(g) in taken])
        for index, grant_id in enumerate(grant_ids):
            if time.monotonic() - started > POLL_BATCH_BUDGET_S:
                left = grant_ids[index:]
                break
            if _check_lock(grant_id) not in taken:
                continue  # a check of this grant is running
            try:
                result = grant_work.check_one(grant_id, batch)
            except RateLimited as exc:
                limited.append((grant_id, exc.retry_after_s))
                continue
            asked += int(result.get("asked", 0))
            changed += int(result.get("changed", 0))
    if left:
        log.warning("check batch over its budget; %d grants go on in a new one", len(left))
        app.send_task("pipeline.maintenance.check_grants", args=[left], queue=queue)
    for grant_id, retry_after_s in limited:
        app.send_task(
            "pipeline.maintenance.check_uidvalidity",
            args=[grant_id],
            queue=queue,
            countdown=reschedule_countdown(retry_after_s, jitter=False),
        )
    return {"grants": len(grant_ids), "asked": asked, "changed": changed}


@app.task(name="pipeline.maintenance.check_uidvalidity", base=PipelineTask)
def check_uidvalidity_task(grant_id: str) -> dict[str, Any]:
    """Compare every folder's UIDVALIDITY on the server with ours; act on changes. Folders a
    poll or the listener saw within the interval are not asked again (``due_for_check``); when
    none is left, no session is opened at all."""
    with job_locks(redis_client(), [_check_lock(grant_id)], CHECK_LOCK_TTL_S) as taken:
        if not taken:
            return {"skipped": "a check of this grant is running"}
        return grant_work.check_one(grant_id, grant_work.CheckBatch.read([grant_id]))


def _check_lock(grant_id: str) -> str:
    """The job lock a UIDVALIDITY check of ``grant_id`` holds."""
    return f"sweep:{grant_id}"


@app.task(name="pipeline.maintenance.purge")
def purge_task() -> dict[str, Any]:
    """Purge mail past the retention window; continue in a new task if time ran out."""
    with job_lock(redis_client(), "purge", PURGE_BUDGET_S + PURGE_LOCK_MARGIN_S) as taken:
        if not taken:
            return {"skipped": "a purge is running"}
        result = purge(
            sessions(), retention_days=get_settings().sync.retention_days, now=datetime.now(UTC)
        )
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
    ttl = get_settings().beat.reconcile_interval_s * ONCE_PER_INTERVAL
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
                folder_busy=lambda f: bool(r.exists(folder_lock_key(f))),  # a sync runs now
                per_grant=get_settings().sync.max_folder_tasks_per_grant,
            )
        for grant_id, provider in grants:  # after the read transaction, like any enqueue
            enqueue.sync_grant(grant_id, provider)
        for grant_id, folder_id, provider in folders:
            enqueue.sync_folder(grant_id, folder_id, provider)
        now = datetime.now(UTC)
        orphans = finalize_quiet_orphans(
            sessions(), now=now, grace_s=get_settings().sync.orphan_grace_s
        )
    if orphans.messages:
        kick()  # message.deleted
    return {
        "grants": len(report.grants),
        "folders": len(report.folders),
        "busy": report.busy,
        "deleted": orphans.messages,
    }
