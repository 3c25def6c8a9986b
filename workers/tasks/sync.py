"""The sync tasks: ids in, open a session, call a typed function in ``pipeline``.

Task names are the public contract (any Celery client may enqueue them):

- ``pipeline.grants.create(request)``: connect an account. ``request`` holds the fields of
  :class:`pipeline.grants.schemas.GrantRequest` with ``password_sealed`` (and optionally
  ``smtp_password_sealed``) instead of plaintext passwords, sealed with
  :class:`pipeline.crypto.SecretBox` — see :func:`workers.enqueue.create_grant`.
- ``pipeline.sync.grant(grant_id)``: discover folders and sync each (at most
  ``Settings.sync.max_folder_tasks_per_grant`` queued at once: :mod:`workers.folder_queue`).
- ``pipeline.sync.folder(grant_id, folder_id)``: sync one folder for a bounded time,
  continuing in a new task when work remains.

A server that breaks a bound of the IMAP client (:class:`pipeline.errors.ImapLimitError`), or
keeps a task past its soft time limit (``IMAP_PIPELINE_SYNC_TASK_TIME_LIMIT_S`` minus
``SOFT_LIMIT_MARGIN_S``, see :mod:`workers.celeryconfig`), costs its own grant: the task ends,
the reason goes on the grant's status (and its folder's), and the account backs off. That, the
retries of transient errors and the rescheduling of a run denied a token are the base classes'
(:mod:`workers.base`). A folder's run (coalesced by :class:`pipeline.coalesce.Coalesced`,
followed up, with the grant's waiting ranges) is :mod:`workers.folder_runs`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Task
from celery.signals import worker_process_shutdown
from pydantic import ValidationError

from pipeline.config import get_settings
from pipeline.crypto import SecretBox
from pipeline.errors import (
    GrantRequestInvalid,
    ImapAuthError,
    PipelineError,
)
from pipeline.grants.repository import GrantRepository
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant
from pipeline.grants.state import GrantSyncState, grant_syncs
from pipeline.sync.plan import discover_folders
from workers import enqueue, folder_queue, folder_runs
from workers.app import app
from workers.base import FolderSyncTask, GrantSyncTask, grant_session
from workers.resources import (
    close_all_imap,
    note_behaved,
    redis_client,
    sessions,
    using,
)
from workers.webhook_queue import kick

log = logging.getLogger(__name__)


@worker_process_shutdown.connect
def _close_pool(**_: Any) -> None:
    close_all_imap()


@app.task(name="pipeline.grants.create", ignore_result=False, throws=(PipelineError,))
def create_grant_task(request: dict[str, Any]) -> dict[str, Any]:
    """Connect an account from sealed credentials; enqueue its initial sync.

    Returns ``{"status": "valid", "grant_id": ...}``. A refused login, an unreachable server or
    a malformed request fails the task (FAILURE in Flower and in the result) with the
    :class:`~pipeline.errors.PipelineError` that says why; its message carries no secret.
    """
    try:
        req = _unsealed(request)
        with sessions().begin() as db:
            result = create_grant(db, get_settings(), req)
            grant_id, provider = result.grant.id, result.grant.provider
    except PipelineError as exc:
        log.warning("grant creation failed: %s", exc)
        raise
    kick()  # grant.created / grant.updated
    enqueue.sync_grant(grant_id, provider)
    return {"status": "valid", "grant_id": grant_id}


def _unsealed(request: dict[str, Any]) -> GrantRequest:
    """The grant request of ``pipeline.grants.create``'s argument, its passwords opened.

    Raises:
        GrantRequestInvalid: A field is missing or wrong (the message names it, never a value).
    """
    box = SecretBox(get_settings().encryption_key_list)
    fields = dict(request)
    fields["password"] = box.open(fields.pop("password_sealed", ""))
    if fields.get("smtp_password_sealed"):
        fields["smtp_password"] = box.open(fields.pop("smtp_password_sealed"))
    fields.pop("smtp_password_sealed", None)
    try:
        return GrantRequest.model_validate(fields)
    except ValidationError as exc:
        # never str(exc): pydantic repeats the input, the password among it
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise GrantRequestInvalid(f"The grant request is invalid: {reasons}.") from None


@app.task(name="pipeline.sync.grant", base=GrantSyncTask)
def sync_grant_task(grant_id: str) -> None:
    """Discover a grant's folders, then enqueue a sync of each (Inbox and Sent first)."""
    _sync_grant(grant_id)


def _sync_grant(grant_id: str) -> None:
    """LIST the grant's folders, record what changed, queue their syncs (Inbox, Sent and the
    other roles first; at most N at once, the rest as these finish). No transaction is open
    while the server answers.

    Raises:
        RateLimited: No token or connection slot now (the task comes back later).
    """
    with sessions().begin() as db:
        grant = GrantRepository(db).get(grant_id)
    if not grant_syncs(grant):
        return
    try:
        imap = grant_session(grant)
    except ImapAuthError:
        return  # the grant is now invalid, its grant.expired kicked
    with using(grant_id, imap):
        listed = imap.list_folders()
    with sessions().begin() as db:
        grant = GrantRepository(db).get_for_update(grant_id)
        if grant is None:
            return  # removed meanwhile
        changes = discover_folders(
            db, grant, listed, max_folders=get_settings().sync.max_folders_per_grant
        )
        if grant.sync_state == GrantSyncState.PENDING:
            grant.sync_state = GrantSyncState.SYNCING
    note_behaved(grant_id)
    kick()  # folder.created / folder.deleted
    folder_queue.queue_folders(
        redis_client(),
        grant_id,
        grant.provider,
        changes.selectable,
        get_settings().sync.max_folder_tasks_per_grant,
    )


@app.task(name="pipeline.sync.folder", bind=True, base=FolderSyncTask)
def sync_folder_task(
    self: Task, grant_id: str, folder_id: str, lo: int | None = None, hi: int | None = None
) -> dict[str, Any]:
    """Sync one folder (or the UID range ``lo``..``hi`` of its initial sync) for at most
    ``Settings.sync.chunk_budget_s``; continue in a new task if work remains."""
    uid_range = (lo, hi) if lo is not None and hi is not None else None
    return folder_runs.run_folder(
        f"{os.getpid()}:{self.request.id}", grant_id, folder_id, uid_range
    )
