"""What every change emits: the notifications (webhook events) of the application, written to
the webhook outbox (:mod:`pipeline.webhooks.outbox`) in the caller's transaction, so they are
sent only if the change commits.

One function per object family, whoever makes the change. The object is rendered by its own
package and handed in, so this module sits below every domain package (it imports only the
webhook outbox and payloads, never folders, grants or messages) and any of them may emit:

- :func:`messages` (``message.created`` / ``message.updated``; the objects are
  :func:`pipeline.messages.views.stored_message_views`) and :func:`messages_deleted`
  (``message.deleted``: the id, nothing else is left): the sync (:mod:`pipeline.sync`), the
  write-back of changes made through the API (:mod:`pipeline.messages.service`), a sent
  message's copy (:mod:`pipeline.outbound.sent_copy`);
- :func:`folder` (``folder.created`` / ``updated`` / ``deleted``; the object is
  :func:`pipeline.folders.views.stored_folder_view`): folder discovery, a reindex switch,
  folders created, renamed or deleted through the API (:mod:`pipeline.folders.service`);
- :func:`grant` (``grant.created`` / ``updated`` / ``expired`` / ``deleted`` /
  ``imap_sync_completed``; the object, the fields Nylas sends for the type, is
  :func:`pipeline.webhooks.payloads.grant_notification`, built here from the row): grant
  sign-in and removal (:mod:`pipeline.grants.service`), the UIDVALIDITY stop rule
  (:mod:`pipeline.maintenance.sweep`), the end of a grant's initial sync;
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

from pipeline.models import Grant
from pipeline.webhooks.outbox import emit
from pipeline.webhooks.payloads import grant_notification

SILENT_AFTER = timedelta(hours=72)  # mail found after a longer outage is synced silently


def messages(session: Session, grant_id: str, type_: str, objects: Iterable[dict[str, Any]]) -> int:
    """Emit ``message.created`` / ``message.updated``, one per message object (as
    :func:`pipeline.messages.views.stored_message_views` renders them); returns how many."""
    count = 0
    for obj in objects:
        emit(session, grant_id=grant_id, type=type_, obj=obj, subject_id=obj["id"])
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
            obj=deleted_message(message_id, grant_id),
            subject_id=message_id,
        )
        count += 1
    return count


def deleted_message(message_id: str, grant_id: str) -> dict[str, Any]:
    """What a ``message.deleted`` notification carries: the id, nothing else is left."""
    return {"id": message_id, "grant_id": grant_id, "object": "message"}


def folder(session: Session, type_: str, obj: dict[str, Any]) -> int:
    """Emit ``folder.created`` / ``folder.updated`` / ``folder.deleted`` for a folder object (as
    :func:`pipeline.folders.views.stored_folder_view` renders it)."""
    emit(session, grant_id=obj["grant_id"], type=type_, obj=obj, subject_id=obj["id"])
    return 1


def grant(session: Session, type_: str, row: Grant, *, reauthenticated: bool = False) -> int:
    """Emit a ``grant.*`` notification (``reauthenticated``: a ``grant.updated`` for a sign-in)."""
    obj = grant_notification(type_, row, reauthenticated=reauthenticated)
    emit(session, grant_id=row.id, type=type_, obj=obj, subject_id=row.id)
    return 1


def send_result(
    db: Session,
    row: Row[Any],
    *,
    message: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    """Emit ``message.send_success`` (no ``error``) or ``message.send_failed`` for a scheduled
    send (Nylas sends them only for messages sent with ``send_at``), in the caller's
    transaction. The object is the stored Sent copy (``message``, as
    :func:`pipeline.messages.views.stored_message_view` renders it) or else the message as
    composed, with ``schedule_id``, ``send_at`` and ``use_draft`` (when true); a success's
    object has no ``body``, as Nylas leaves it out (``snippet`` stays)."""
    if row.send_at is None:
        return
    obj = dict(message) if message is not None else dict(row.request or {})
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
