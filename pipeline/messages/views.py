"""Messages as API objects (Nylas v3 shape), for responses and webhooks (a folder's view is
:mod:`pipeline.folders.views`)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from pipeline.messages.repository import MessageRepository
from pipeline.models import Attachment, Message


def unix(value: datetime | None) -> int | None:
    """Seconds since the epoch (the API's time format)."""
    return int(value.timestamp()) if value is not None else None


def attachment_view(att: Attachment) -> dict[str, Any]:
    """Attachment metadata in the Nylas v3 shape."""
    return {
        "id": att.id,
        "grant_id": att.grant_id,
        "message_id": att.message_id,
        "filename": att.filename,
        "content_type": att.content_type,
        "size": att.size,
        "content_id": att.content_id,
        "content_disposition": "inline" if att.is_inline else "attachment",
        "is_inline": att.is_inline,
    }


def message_view(
    message: Message,
    folder_ids: list[str],
    attachments: list[dict[str, Any]],
    *,
    include_headers: bool = False,
    include_body: bool = True,
    include_basic_headers: bool = False,
) -> dict[str, Any]:
    """A message in the Nylas v3 shape (``attachments`` already as :func:`attachment_view`
    dictionaries: the API builds them in SQL for whole pages)."""
    date = unix(message.date)
    view: dict[str, Any] = {
        "id": message.id,
        "grant_id": message.grant_id,
        "object": "message",
        "thread_id": message.thread_id,
        "subject": message.subject,
        "from": message.from_,
        "to": message.to,
        "cc": message.cc,
        "bcc": message.bcc,
        "reply_to": message.reply_to,
        "in_reply_to": message.in_reply_to,  # the In-Reply-To header's Message-ID
        "date": date,
        "created_at": date,
        "unread": message.unread,
        "starred": message.starred,
        "snippet": message.snippet,
        "folders": folder_ids,
        "attachments": attachments,
        "metadata": message.metadata_,
    }
    if include_body:
        view["body"] = message.body
    if include_headers:
        view["headers"] = message.headers
    elif include_basic_headers:
        view["headers"] = basic_headers(message)
    return view


def basic_headers(message: Message) -> list[dict[str, str]]:
    """Nylas' ``include_basic_headers``: only the threading headers (Message-ID, In-Reply-To,
    References), from the parsed values the message keeps in columns of their own."""
    headers = []
    if message.message_id_header:
        headers.append({"name": "Message-ID", "value": message.message_id_header})
    if message.in_reply_to:
        headers.append({"name": "In-Reply-To", "value": message.in_reply_to})
    if message.references:
        headers.append({"name": "References", "value": " ".join(message.references)})
    return headers


def stored_message_views(session: Session, message_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The stored messages of ``message_ids`` as a ``message.*`` notification carries them
    (:func:`pipeline.notifications.messages`): the body, the attachments, the folders of each
    folder's current view; an id no longer stored is left out, one given twice is shown once."""
    repo = MessageRepository(session)
    ids = list(dict.fromkeys(message_ids))
    if not ids:
        return []
    folders = repo.current_folder_ids(ids)
    return [
        message_view(
            message, folders.get(message.id, []), [attachment_view(a) for a in attachments]
        )
        for message, attachments in repo.with_attachments(ids)
    ]


def stored_message_view(session: Session, message_id: str | None) -> dict[str, Any] | None:
    """One stored message as :func:`stored_message_views` shows it; None when it is not stored
    (or ``message_id`` is None)."""
    if message_id is None:
        return None
    views = stored_message_views(session, [message_id])
    return views[0] if views else None
