"""Thin Celery tasks: ids in, open a session, call a typed function in ``pipeline``.

Task names are the public contract (any Celery client may enqueue them):

- ``pipeline.grants.create(request)``: connect an account. ``request`` holds the fields of
  :class:`pipeline.grants.schemas.GrantRequest` with ``password_sealed`` (and optionally
  ``smtp_password_sealed``) instead of plaintext passwords, sealed with
  :class:`pipeline.crypto.SecretBox` — see :func:`workers.enqueue.create_grant`.
- ``pipeline.sync.grant(grant_id)``: discover folders and sync each (at most
  ``max_folder_tasks_per_grant`` queued at once: :mod:`workers.folder_queue`).
- ``pipeline.sync.folder(grant_id, folder_id)``: sync one folder for a bounded time,
  continuing in a new task when work remains.

A server that breaks a bound of the IMAP client (:class:`pipeline.errors.ImapLimitError`), or
keeps a task past its soft time limit (``IMAP_PIPELINE_SYNC_TASK_TIME_LIMIT_S`` minus
``SOFT_LIMIT_MARGIN_S``, see :mod:`workers.celeryconfig`), costs its own grant: the task ends,
the reason goes on the grant's status (and its folder's), and the account backs off.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown
from pydantic import ValidationError

from pipeline.crypto import SecretBox
from pipeline.errors import (
    GrantNotFound,
    GrantRequestInvalid,
    ImapAuthError,
    ImapConnectError,
    ImapLimitError,
    ImapProtocolError,
    ImapThrottledError,
    PipelineError,
)
from pipeline.grants.repository import GrantRepository
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant
from pipeline.imap import ImapSession
from pipeline.ratelimit import RateLimited
from pipeline.sync.runner import discover_folders, sync_folder
from workers import enqueue, folder_queue
from workers.app import app
from workers.resources import (
    close_all_imap,
    fresh_imap_for,
    imap_for,
    note_behaved,
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

RETRY_BACKOFF_MAX_S = 600  # stays far below the broker's visibility timeout
TRANSIENT = (ImapConnectError, ImapProtocolError, ImapThrottledError)


def _limit_problem(exc: ImapLimitError | SoftTimeLimitExceeded) -> ImapLimitError | str:
    if isinstance(exc, ImapLimitError):
        return exc
    from workers.celeryconfig import SOFT_LIMIT_MARGIN_S  # loaded: this runs in a worker

    limit = settings().sync_task_time_limit_s
    return (
        f"a sync task of this grant was stopped {SOFT_LIMIT_MARGIN_S} s before its time limit "
        f"of {limit:g} s (the server answers too slowly); if it is trusted, raise "
        "IMAP_PIPELINE_SYNC_TASK_TIME_LIMIT_S."
    )


@worker_process_shutdown.connect
def _close_pool(**_: Any) -> None:
    close_all_imap()


def _provider_of(grant_id: str) -> str:
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
        return grant.provider if grant else "generic"


def _reopen(grant_id: str) -> ImapSession:
    """A new session for a sync whose session the server dropped (same limits as any)."""
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
        if grant is None:
            raise GrantNotFound(grant_id)
        return fresh_imap_for(db, grant)


@app.task(name="pipeline.grants.create", ignore_result=False, throws=(PipelineError,))
def create_grant_task(request: dict[str, Any]) -> dict[str, Any]:
    """Connect an account from sealed credentials; enqueue its initial sync.

    Returns ``{"status": "valid", "grant_id": ...}``. A refused login, an unreachable server or
    a malformed request fails the task (FAILURE in Flower and in the result) with the
    :class:`~pipeline.errors.PipelineError` that says why; its message carries no secret.
    """
    box = SecretBox(settings().encryption_key_list)
    fields = dict(request)
    try:
        fields["password"] = box.open(fields.pop("password_sealed", ""))
        if fields.get("smtp_password_sealed"):
            fields["smtp_password"] = box.open(fields.pop("smtp_password_sealed"))
        fields.pop("smtp_password_sealed", None)
        try:
            req = GrantRequest.model_validate(fields)
        except ValidationError as exc:
            # never str(exc): pydantic repeats the input, the password among it
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise GrantRequestInvalid(f"The grant request is invalid: {reasons}.") from None
        with sessions().begin() as db:
            result = create_grant(db, settings(), req)
            grant_id, provider = result.grant.id, result.grant.provider
    except PipelineError as exc:
        log.warning("grant creation failed: %s", exc)
        raise
    kick()  # grant.created / grant.updated
    enqueue.sync_grant(grant_id, provider)
    return {"status": "valid", "grant_id": grant_id}


@app.task(
    name="pipeline.sync.grant",
    bind=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_S,
    max_retries=8,
)
def sync_grant_task(self: Task, grant_id: str) -> None:
    """Discover a grant's folders, then enqueue a sync of each (Inbox and Sent first)."""
    try:
        _sync_grant(self, grant_id)
    except (ImapLimitError, SoftTimeLimitExceeded) as exc:
        note_misbehaved(grant_id, _limit_problem(exc))


def _sync_grant(self: Task, grant_id: str) -> None:
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
        if grant is None or grant.grant_status != "valid" or grant.sync_state == "stopped":
            return
        provider = grant.provider
        try:
            imap = imap_for(db, grant)
        except RateLimited as exc:
            reschedule(self, exc)  # no token or connection slot now: come back, don't wait
            return
        except ImapAuthError:
            imap = None  # the grant is now invalid and grant.expired is in the outbox
        if imap is not None:
            try:
                changes = discover_folders(
                    db, grant, imap.list_folders(), max_folders=settings().max_folders_per_grant
                )
            except BaseException:  # a bound, a time limit, the database: never leak it
                release_imap(grant_id, imap, healthy=False)
                raise
            release_imap(grant_id, imap, healthy=True)
            note_behaved(grant_id)
            if grant.sync_state == "pending":
                grant.sync_state = "syncing"
    kick()
    if imap is None:
        return
    # Inbox, Sent and the other roles first; at most N at once, the rest as these finish
    folder_queue.queue_folders(
        redis_client(),
        grant_id,
        provider,
        changes.selectable,
        settings().max_folder_tasks_per_grant,
    )


@app.task(
    name="pipeline.sync.folder",
    bind=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_S,
    max_retries=8,
)
def sync_folder_task(
    self: Task, grant_id: str, folder_id: str, lo: int | None = None, hi: int | None = None
) -> dict[str, Any]:
    """Sync one folder (or the UID range ``lo``..``hi`` of its initial sync) for at most
    ``sync_chunk_budget_s``; continue in a new task if work remains."""
    try:
        return _sync_folder(self, grant_id, folder_id, lo, hi)
    except (ImapLimitError, SoftTimeLimitExceeded) as exc:
        problem = _limit_problem(exc)
        note_misbehaved(grant_id, problem, folder_id)
        return {"limited": getattr(problem, "bound", "time limit")}


def _sync_folder(
    self: Task, grant_id: str, folder_id: str, lo: int | None, hi: int | None
) -> dict[str, Any]:
    r = redis_client()
    uid_range = (lo, hi) if lo is not None and hi is not None else None
    lock_key = f"imap-pipeline:lock:folder:{folder_id}" + (f":{lo}-{hi}" if uid_range else "")
    dirty_key = f"imap-pipeline:dirty:folder:{folder_id}"
    token = f"{os.getpid()}:{self.request.id}"
    lock_ttl = settings().sync_lock_ttl_s
    if not r.set(lock_key, token, nx=True, ex=lock_ttl):
        # Someone is syncing it now: make sure they look again when they finish, and in case
        # they died, come back once their lock has lapsed (one such retry at a time).
        r.set(dirty_key, "1", ex=lock_ttl * 10)
        wait = max(int(r.ttl(lock_key)), 1) + 1
        if r.set(lock_key.replace(":lock:", ":retry:"), "1", nx=True, ex=wait + 5):
            enqueue.sync_folder(
                grant_id, folder_id, _provider_of(grant_id), countdown=wait, uid_range=uid_range
            )
        elif uid_range is None:
            folder_queue.queue_next(r, grant_id, _provider_of(grant_id))  # this slot is free
        return {"skipped": "locked"}
    try:
        with sessions().begin() as db:
            grant = GrantRepository(db).get(grant_id)
            if grant is None:
                raise GrantNotFound(grant_id)
            if grant.grant_status != "valid":
                return {"skipped": "grant invalid"}
            if grant.sync_state == "stopped":
                return {"skipped": "grant stopped"}
            provider = grant.provider
            try:
                imap = imap_for(db, grant)
            except RateLimited as exc:
                limited: RateLimited | None = exc
                expired = False
            except ImapAuthError:
                limited, expired = None, True
            else:
                limited, expired = None, False
        if limited is not None:
            reschedule(self, limited)
            return {"rescheduled": round(limited.retry_after_s, 2)}
        if expired:
            kick()  # grant.expired
            return {"skipped": "grant invalid"}
        healthy = False
        try:
            outcome = sync_folder(
                sessions(),
                settings(),
                imap,
                grant_id,
                folder_id,
                on_batch=lambda: r.expire(lock_key, lock_ttl),
                uid_range=uid_range,
                range_messages=settings().sync_range_messages,
                reopen=lambda: _reopen(grant_id),
            )
            if outcome.replaced is not None:  # the server dropped ours mid-folder
                imap.close()
                imap = outcome.replaced
            healthy = True
        except RateLimited as exc:  # a new login for a dropped session had to wait
            reschedule(self, exc)
            return {"rescheduled": round(exc.retry_after_s, 2)}
        except ImapThrottledError:
            with sessions().begin() as db:
                throttled = GrantRepository(db).get(grant_id)
                if throttled is not None:
                    note_throttled(throttled)  # back the account off, for every worker
            raise
        finally:
            release_imap(grant_id, imap, healthy=healthy)
    finally:
        if r.get(lock_key) == token.encode():
            r.delete(lock_key)
    note_behaved(grant_id)
    if outcome.emitted:
        kick()
    for part in outcome.ranges:
        enqueue.sync_folder(grant_id, folder_id, provider, uid_range=part)
    if outcome.more:
        enqueue.sync_folder(grant_id, folder_id, provider, uid_range=uid_range)
    elif uid_range is None and r.getdel(dirty_key):
        enqueue.sync_folder(grant_id, folder_id, provider)
    elif not outcome.ranges and (uid_range is None or outcome.state == "synced"):
        # this folder's run is over (for a split folder: its last range): the grant's next
        # waiting folder takes the slot
        folder_queue.queue_next(r, grant_id, provider)
    return {"state": outcome.state, "stored": outcome.stored, "failed": outcome.failed}
