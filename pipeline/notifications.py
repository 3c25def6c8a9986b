"""What every change emits: the notifications (webhook events) of the application, written to
the webhook outbox (:mod:`pipeline.webhooks.outbox`) in the caller's transaction, so they are
sent only if the change commits.

One payload builder per object, whoever makes the change:

- :func:`messages` (``message.created`` / ``message.updated``) and :func:`messages_deleted`
  (``message.deleted``): the sync (:mod:`pipeline.sync`), the write-back of changes made through
  the API (:mod:`pipeline.messages.service`), a sent message's copy
  (:mod:`pipeline.outbound.sent_copy`);
- :func:`folder` (``folder.created`` / ``updated`` / ``deleted``): folder discovery, a reindex
  switch, folders created, renamed or deleted through the API (:mod:`pipeline.folders.service`);
- :func:`grant` (``grant.created`` / ``updated`` / ``expired`` / ``deleted`` /
  ``imap_sync_completed``): grant sign-in and removal (:mod:`pipeline.grants.service`), the
  UIDVALIDITY stop rule (:mod:`pipeline.maintenance.sweep`), the end of a grant's initial sync;
- :func:`send_result` (``message.send_success`` / ``message.send_failed``): the outcome of a
  scheduled send (:mod:`pipeline.outbound.deliver`, :mod:`pipeline.outbound.sent_copy`).

Rules (Nylas v3 semantics): nothing for mail found by the initial (historical) sync or by a
reindex, nothing for mail that arrived while a grant was out of service for more than
``SILENT_AFTER``; ``message.created`` for new mail, ``message.updated`` for flag changes and
moves (a message keeps its id), ``message.deleted`` only for mail that is really gone. The
callers apply these rules; this module only builds and writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from pipeline.folders.repository import FolderRepository
from pipeline.grants.views import grant_notification
from pipeline.messages.repository import MessageRepository
from pipeline.messages.views import (
    attachment_view,
    deleted_message_view,
    folder_view,
    message_view,
)
from pipeline.models import Folder, Grant
from pipeline.webhooks.outbox import emit

SILENT_AFTER = timedelta(hours=72)  # mail found after a longer outage is synced silently


def messages(session: Session, grant_id: str, type_: str, message_ids: Iterable[str]) -> int:
    """Emit ``message.created`` / ``message.updated`` for messages; returns how many."""
    repo = MessageRepository(session)
    ids = list(dict.fromkeys(message_ids))
    if not ids:
        return 0
    folders = repo.current_folder_ids(ids)
    count = 0
    for message, attachments in repo.with_attachments(ids):
        emit(
            session,
            grant_id=grant_id,
            type=type_,
            obj=message_view(
                message, folders.get(message.id, []), [attachment_view(a) for a in attachments]
            ),
            subject_id=message.id,
        )
        count += 1
    return count


def messages_deleted(session: Session, grant_id: str, message_ids: Iterable[str]) -> int:
    """Emit ``message.deleted``; returns how many."""
    count = 0
    for message_id in dict.fromkeys(message_ids):
        emit(
            session,
            grant_id=grant_id,
            type="message.deleted",
            obj=deleted_message_view(message_id, grant_id),
            subject_id=message_id,
        )
        count += 1
    return count


def folder(session: Session, type_: str, row: Folder) -> int:
    """Emit ``folder.created`` / ``folder.updated`` / ``folder.deleted``."""
    obj = folder_view(row, _parent_id(session, row))
    emit(session, grant_id=row.grant_id, type=type_, obj=obj, subject_id=row.id)
    return 1


def _parent_id(session: Session, row: Folder) -> str | None:
    """The id of the folder above ``row`` by the server's hierarchy delimiter, as the API
    shows it (``pipeline.api.folders``), or None at the top level."""
    if not row.delimiter or row.delimiter not in row.name:
        return None
    parent = FolderRepository(session).by_name(row.grant_id, row.name.rsplit(row.delimiter, 1)[0])
    return parent.id if parent is not None else None


def grant(session: Session, type_: str, row: Grant, *, reauthenticated: bool = False) -> int:
    """Emit a ``grant.*`` notification (``reauthenticated``: a ``grant.updated`` for a sign-in)."""
    obj = grant_notification(type_, row, reauthenticated=reauthenticated)
    emit(session, grant_id=row.id, type=type_, obj=obj, subject_id=row.id)
    return 1


def send_result(
    db: Session,
    row: Row[Any],
    *,
    message_id: str | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    """Emit ``message.send_success`` (no ``error``) or ``message.send_failed`` for a scheduled
    send (Nylas sends them only for messages sent with ``send_at``), in the caller's
    transaction. The object is the stored Sent copy (``message_id``) or else the message as
    composed, with ``schedule_id``, ``send_at`` and ``use_draft`` (when true); a success's
    object has no ``body``, as Nylas leaves it out (``snippet`` stays)."""
    if row.send_at is None:
        return
    obj: dict[str, Any] | None = None
    if message_id is not None:
        repo = MessageRepository(db)
        folders = repo.current_folder_ids([message_id])
        for message, attachments in repo.with_attachments([message_id]):
            obj = message_view(
                message, folders.get(message.id, []), [attachment_view(a) for a in attachments]
            )
    if obj is None:
        obj = dict(row.request or {})
    obj.update(object="message", grant_id=row.grant_id, schedule_id=row.id)
    obj["send_at"] = int(row.send_at.timestamp())
    if row.use_draft:
        obj["use_draft"] = True
    data: dict[str, Any] = {"grant_id": row.grant_id}
    if error is None:
        obj.pop("body", None)
        type_ = "message.send_success"
    else:
        type_ = "message.send_failed"
        reason = str(error.get("message", "The send failed."))
        data["reason"] = reason
        data["error"] = {
            "type": str(error.get("type", "api_error")),
            "message": reason,
            "status_code": int(error.get("status", 500)),
        }
    emit(db, grant_id=row.grant_id, type=type_, obj=obj, subject_id=row.id, data=data)
