"""A thread's API view (the Nylas v3 shape) computed from its messages, for the pages and single
threads Postgres does not render (:mod:`pipeline.threads.rendered` renders the others): unread or
starred if any message is, participants everyone in From/To/Cc/Bcc (the first spelling of each
address wins, ASCII letters compared without case: ``pipeline.messages.filters.participant_key``),
folders the union of its messages' folders, the latest message whole, the dates of the latest
message received and of the latest the account sent (each left out when there is none:
:data:`pipeline.threads.rendered.TOLD_ROLES` says which is which)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Row
from sqlalchemy.orm import Session

from pipeline.messages import filters as message_filters
from pipeline.messages.roles import DRAFTS_ROLE, SENT_ROLE
from pipeline.messages.views import message_view, unix
from pipeline.models import Message, Thread
from pipeline.threads import rendered as thread_rendered


def _participants(messages: list[Row[Any]]) -> list[dict[str, str]]:
    seen: dict[str, dict[str, str]] = {}
    for m in messages:
        for person in [*m.from_, *m.to, *m.cc, *m.bcc]:
            key = message_filters.participant_key(str(person.get("email", "")))
            if key and key not in seen:
                seen[key] = {"name": person.get("name", ""), "email": person.get("email", "")}
    return list(seen.values())


def _is_draft(m: Row[Any]) -> bool:
    return DRAFTS_ROLE in m.roles


def _is_sent(m: Row[Any]) -> bool:
    """Sent by the account (a draft is not): held in its Sent folder."""
    return SENT_ROLE in m.roles and not _is_draft(m)


def _latest_dates(messages: list[Row[Any]]) -> dict[str, int | None]:
    """``latest_message_received_date`` and ``latest_message_sent_date`` of a thread's
    messages (oldest first), each only where the thread has such a message."""
    received = [m for m in messages if not _is_draft(m) and not _is_sent(m)]
    sent = [m for m in messages if _is_sent(m)]
    out: dict[str, int | None] = {}
    if received:
        out["latest_message_received_date"] = unix(received[-1].date)
    if sent:
        out["latest_message_sent_date"] = unix(sent[-1].date)
    return out


def thread_view(
    thread_id: str, grant_id: str, subject: str, messages: list[Row[Any]]
) -> dict[str, Any]:
    """A thread in the Nylas v3 shape, computed from its messages (oldest first, rows as
    :func:`pipeline.threads.rendered.thread_members` reads them)."""
    latest = messages[-1] if messages else None
    thread_folders = sorted({f for m in messages for f in m.folders or ()})
    draft_ids = [m.id for m in messages if _is_draft(m)]  # a thread's drafts are not messages
    return {
        "id": thread_id,
        "grant_id": grant_id,
        "object": "thread",
        "subject": latest.subject if latest else subject,
        "snippet": latest.snippet if latest else "",
        "message_ids": [m.id for m in messages if not _is_draft(m)],
        "draft_ids": draft_ids,
        "has_drafts": bool(draft_ids),
        "participants": _participants(messages),
        "unread": any(m.unread for m in messages),
        "starred": any(m.starred for m in messages),
        "has_attachments": any(m.has_attachments for m in messages),
        "folders": thread_folders,
        "earliest_message_date": unix(messages[0].date) if messages else None,
        **_latest_dates(messages),
        "latest_draft_or_message": (
            {
                **message_view(
                    # a row with every column attribute of a message: all it reads
                    cast(Message, latest),
                    sorted(latest.folders) if latest.folders else [],
                    latest.attachments or [],
                ),
                "object": "draft" if _is_draft(latest) else "message",
            }
            if latest
            else None
        ),
    }


def thread_views(db: Session, threads: list[Thread]) -> list[dict[str, Any]]:
    """Threads in the Nylas v3 shape, computed from their messages (one query for all)."""
    members = thread_rendered.thread_members(db.connection(), [t.id for t in threads])
    return [thread_view(t.id, t.grant_id, t.subject, members.get(t.id, [])) for t in threads]
