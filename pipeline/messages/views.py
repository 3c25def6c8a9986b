"""Messages, folders and threads as API objects (Nylas v3 shape), for responses and webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pipeline.models import Attachment, Folder, Message


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


def deleted_message_view(message_id: str, grant_id: str) -> dict[str, Any]:
    """What a ``message.deleted`` notification carries: the id, nothing else is left."""
    return {"id": message_id, "grant_id": grant_id, "object": "message"}


def folder_view(folder: Folder, parent_id: str | None = None) -> dict[str, Any]:
    """A folder in the Nylas v3 shape (``parent_id``: the folder above it, if any)."""
    return {
        "id": folder.id,
        "grant_id": folder.grant_id,
        "object": "folder",
        "name": folder.name,
        "attributes": list(folder.attributes),
        "system_folder": folder.role is not None,
        "parent_id": parent_id,
    }
