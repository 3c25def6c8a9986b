"""A folder sync's run on a worker (task ``pipeline.sync.folder``, :mod:`workers.tasks.sync`)::

    request ──► range done? skip ──► coalesced run held? (pipeline.coalesce) ──► _busy: skip,
        │                                       one request comes back after the lock
        └──► lock taken ──► the grant's session (workers.base.grant_session)
              ──► pipeline.sync.run.sync_folder (renewing lock and slot between batches)
              ──► release ──► _follow_up: its ranges, its rest, one more run if a request
                  came meanwhile (dirty), else the grant's next waiting folder
              ──► the grant's waiting ranges on the same session (workers.chunks)

A run denied a token raises :class:`~pipeline.limits.RateLimited` (the task comes back later:
:mod:`workers.base`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from pipeline import coalesce
from pipeline.config import get_settings
from pipeline.errors import (
    GrantNotFound,
    ImapAuthError,
    ImapLimitError,
    ImapThrottledError,
)
from pipeline.folders.state import FolderState
from pipeline.grants.repository import GrantRepository
from pipeline.grants.state import GrantSyncState, grant_syncs
from pipeline.imap import ImapSession
from pipeline.limits import RateLimited
from pipeline.sync.run import SyncOutcome, sync_folder
from workers import chunks, enqueue, folder_queue
from workers.base import TRANSIENT, grant_session
from workers.resources import (
    fresh_imap_for,
    keep_alive,
    limiter_for_process,
    note_behaved,
    note_misbehaved,
    note_throttled,
    redis_client,
    release_imap,
    sessions,
)
from workers.webhook_queue import kick

log = logging.getLogger(__name__)


def _provider_of(grant_id: str) -> str:
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
        return grant.provider if grant else "generic"


# A sync whose batch the server broke off fetches it again one message at a time, with a new
# login after each failure (pipeline.sync.recovery.fetch_each): one unreadable message costs
# up to four logins in a row, more than the burst bulk sync may take (it leaves the account's
# last tokens to the listener and the API). Rescheduled instead, the task would start over,
# break on the same message and be refused again: it would never get past it. So a reopen
# waits for its token (and slot), within this bound, and only then gives up.
REOPEN_WAIT_S = 60.0


def _reopen(grant_id: str) -> ImapSession:
    """A new session for a sync whose session the server dropped (same limits as any, waited
    for up to ``REOPEN_WAIT_S``)."""
    deadline = time.monotonic() + REOPEN_WAIT_S
    while True:
        with sessions().begin() as db:
            grant = GrantRepository(db).get(grant_id)
            if grant is None:
                raise GrantNotFound(grant_id)
            try:
                return fresh_imap_for(db, grant)
            except RateLimited as exc:
                wait = exc.retry_after_s
                if time.monotonic() + wait > deadline:
                    raise
        time.sleep(wait)


def _between_batches(run: coalesce.Coalesced, imap: ImapSession) -> bool:
    """After each committed batch: renew the folder lock and the connection slot; True when
    the listener or an API request waits for a connection of the account (stop here, the rest
    continues in a new task)."""
    run.renew()
    return keep_alive(imap)


def run_folder(
    token: str, grant_id: str, folder_id: str, uid_range: tuple[int, int] | None
) -> dict[str, Any]:
    """One coalesced run of the folder (or range), ``token`` its holder's (the task's
    ``pipeline.sync.folder``; callable without Celery): skipped while
    another holds it (:func:`_busy`), else run on a session of the grant, followed up, and
    the session used for the grant's waiting ranges.

    Raises:
        RateLimited: No token or connection slot now (the task comes back later).
    """
    r = redis_client()
    started = time.monotonic()
    run = coalesce.folder_sync(r, folder_id, uid_range, get_settings().sync.lock_ttl_s)
    if uid_range is not None and chunks.is_done(r, folder_id, uid_range):
        return {"skipped": "done"}  # run on another chunk's session (workers.chunks)
    if not run.acquire(token):
        return _busy(run, grant_id, folder_id, uid_range)
    try:
        if uid_range is not None and chunks.is_done(r, folder_id, uid_range):
            return {"skipped": "done"}  # finished just before our lock
        opened = _open(grant_id)
        if isinstance(opened, dict):
            return opened
        provider, imap = opened
        healthy = False
        try:
            outcome, imap = _run_range(run, imap, grant_id, folder_id, uid_range)
            healthy = True
        except RateLimited:  # a new login for a dropped session had to wait
            raise
        except ImapThrottledError:
            _note_throttled(grant_id)
            raise
        finally:
            if not healthy:
                release_imap(grant_id, imap, healthy=False)
    finally:
        run.release(token)
    note_behaved(grant_id)
    _follow_up(run, grant_id, folder_id, provider, uid_range, outcome)
    result: dict[str, Any] = {
        "state": outcome.state,
        "stored": outcome.stored,
        "failed": outcome.failed,
    }
    more = _run_waiting_ranges(r, imap, grant_id, provider, token, started)
    if more:
        result["in_process"] = more
    return result


def _busy(
    run: coalesce.Coalesced, grant_id: str, folder_id: str, uid_range: tuple[int, int] | None
) -> dict[str, Any]:
    """Someone is syncing it now: they look again when they finish (dirty), and in case they
    died, this request comes back once their lock has lapsed (one such at a time). A range is
    looked at again sooner: another chunk's process may be running it in-process, and then
    this task only has to see it done."""
    if uid_range is not None:
        busy = run.busy(recheck_s=chunks.RECHECK_S)
    else:
        busy = run.busy(retry_grace_s=5)
    if busy.come_back:
        provider = _provider_of(grant_id)
        enqueue.sync_folder(
            grant_id, folder_id, provider, countdown=busy.wait_s, uid_range=uid_range
        )
    elif uid_range is None:
        folder_queue.queue_next(run.r, grant_id, _provider_of(grant_id))  # this slot is free
    return {"skipped": "locked"}


def _open(grant_id: str) -> tuple[str, ImapSession] | dict[str, Any]:
    """The grant's provider and a session of it, or the task's result when it may not sync.

    Raises:
        GrantNotFound: The grant is gone.
        RateLimited: No token or connection slot now.
    """
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
    if grant is None:
        raise GrantNotFound(grant_id)
    if grant.grant_status != "valid":
        return {"skipped": "grant invalid"}
    if grant.sync_state == GrantSyncState.STOPPED:
        return {"skipped": "grant stopped"}
    try:
        return grant.provider, grant_session(grant)
    except ImapAuthError:
        return {"skipped": "grant invalid"}  # now invalid


# A process ends its chunk with a healthy session and more of the grant's ranges wait: it runs
# them on that session (workers.chunks) for the rest of the chunk budget, at most this many.
MAX_RANGES_IN_PROCESS = 16


def _run_range(
    run: coalesce.Coalesced,
    imap: ImapSession,
    grant_id: str,
    folder_id: str,
    uid_range: tuple[int, int] | None,
    budget_s: float | None = None,
) -> tuple[SyncOutcome, ImapSession]:
    """One run of the folder (or range) on ``imap``, its lock held; returns its outcome and
    the session in use now (the server may have dropped ``imap``, which is then closed)."""
    outcome = sync_folder(
        sessions(),
        get_settings(),
        imap,
        grant_id,
        folder_id,
        budget_s=budget_s,
        on_batch=lambda: _between_batches(run, imap),
        uid_range=uid_range,
        range_messages=get_settings().sync.range_messages,
        reopen=lambda: _reopen(grant_id),
    )
    if outcome.replaced is not None:  # the server dropped ours mid-folder
        imap.close()
        imap = outcome.replaced
    return outcome, imap


def _follow_up(
    run: coalesce.Coalesced,
    grant_id: str,
    folder_id: str,
    provider: str,
    uid_range: tuple[int, int] | None,
    outcome: SyncOutcome,
) -> None:
    """What a run leaves to other tasks (its lock released): its ranges, its rest, one more
    run of the folder if a request came meanwhile, the grant's next folder."""
    r = run.r
    if outcome.emitted:
        kick()
    chunks.record(r, grant_id, folder_id, outcome.ranges)  # before their tasks can end
    for part in outcome.ranges:
        enqueue.sync_folder(grant_id, folder_id, provider, uid_range=part)
    if uid_range is not None and not outcome.more:
        chunks.mark_done(r, grant_id, folder_id, uid_range)
    if outcome.more:
        enqueue.sync_folder(grant_id, folder_id, provider, uid_range=uid_range)
    elif uid_range is None and run.take_rerun():
        enqueue.sync_folder(grant_id, folder_id, provider)
    elif not outcome.ranges and (uid_range is None or outcome.state == FolderState.SYNCED):
        # this folder's run is over (for a split folder: its last range): the grant's next
        # waiting folder takes the slot
        folder_queue.queue_next(r, grant_id, provider)


def _run_waiting_ranges(
    r: redis.Redis[bytes],
    imap: ImapSession,
    grant_id: str,
    provider: str,
    token: str,
    started: float,
) -> int:
    """Run the grant's waiting ranges on ``imap`` while the chunk budget lasts and nobody of a
    higher priority wants a connection of the account; then give the session back. Returns
    how many ranges ran. A range that fails here stays waiting: its own task runs it."""
    budget = get_settings().sync.chunk_budget_s
    lock_ttl = get_settings().sync.lock_ttl_s
    ran = 0
    healthy = True
    try:
        while ran < MAX_RANGES_IN_PROCESS and time.monotonic() - started < budget:
            if keep_alive(imap):
                break  # the listener or an API request waits: give the session back now
            claimed = chunks.claim(r, grant_id, token, lock_ttl)
            if claimed is None:
                break
            folder_id, uid_range = claimed
            run = coalesce.folder_sync(r, folder_id, uid_range, lock_ttl)  # claimed: held
            if not _may_continue(grant_id):
                run.release(token)
                break
            healthy = False
            try:
                outcome, imap = _run_range(
                    run,
                    imap,
                    grant_id,
                    folder_id,
                    uid_range,
                    budget_s=max(budget - (time.monotonic() - started), 1.0),
                )
                healthy = True
            except ImapLimitError as exc:
                note_misbehaved(grant_id, exc, folder_id)
                break
            except (RateLimited, *TRANSIENT) as exc:
                if isinstance(exc, ImapThrottledError):
                    _note_throttled(grant_id)
                log.warning(
                    "a waiting range failed in-process; its own task runs it",
                    extra={
                        "grant_id": grant_id,
                        "folder_id": folder_id,
                        "error": type(exc).__name__,
                    },
                )
                break
            finally:
                run.release(token)
            ran += 1
            _follow_up(run, grant_id, folder_id, provider, uid_range, outcome)
            if outcome.more:
                break  # budget spent or pre-empted: the rest is queued
    finally:
        release_imap(grant_id, imap, healthy=healthy)
    return ran


def _may_continue(grant_id: str) -> bool:
    """The grant still syncs and may spend one more operation token."""
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
        if not grant_syncs(grant):
            return False
        wait = limiter_for_process().try_ops(grant.provider, grant.imap_host, grant.id)
    return wait <= 0


def _note_throttled(grant_id: str) -> None:
    with sessions().begin() as db:
        throttled = GrantRepository(db).get(grant_id)
        if throttled is not None:
            note_throttled(throttled)  # back the account off, for every worker
