"""Threads: list, get, update (every message, on the server first) and delete (to Trash).

A thread's flags and lists are computed from its messages: unread or starred if any message is,
participants are everyone in From/To/Cc/Bcc (first spelling of each address wins), folders the
union of its messages' folders. Lists are newest first by the latest message, keyset-paginated.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from pipeline.api import queries, writeback
from pipeline.api.deps import Db, LiveGrant, State, notify_after_commit, ok, page
from pipeline.api.errors import invalid_request, not_found, request_id_of
from pipeline.api.filters import ListFilter, Timestamp, from_unix, target_folder
from pipeline.api.messages import apply_select, parse_select
from pipeline.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from pipeline.messages.views import attachment_view, message_view, unix
from pipeline.models import Grant, Message, Thread

router = APIRouter(tags=["threads"])


def _participants(messages: list[Message]) -> list[dict[str, str]]:
    seen: dict[str, dict[str, str]] = {}
    for m in messages:
        for person in [*m.from_, *m.to, *m.cc, *m.bcc]:
            key = str(person.get("email", "")).lower()
            if key and key not in seen:
                seen[key] = {"name": person.get("name", ""), "email": person.get("email", "")}
    return list(seen.values())


def thread_views(db: Session, threads: list[Thread]) -> list[dict[str, Any]]:
    """Threads in the Nylas v3 shape, computed from their messages."""
    ids = [t.id for t in threads]
    members = queries.messages_of_threads(db, ids)
    all_ids = [m.id for ms in members.values() for m in ms]
    folders = queries.folder_ids_of(db, all_ids)
    latest_ids = [ms[-1].id for ms in members.values() if ms]
    attachments = queries.attachments_of(db, latest_ids)
    views = []
    for t in threads:
        messages = members.get(t.id, [])
        latest = messages[-1] if messages else None
        thread_folders = sorted({f for m in messages for f in folders.get(m.id, [])})
        views.append(
            {
                "id": t.id,
                "grant_id": t.grant_id,
                "object": "thread",
                "subject": latest.subject if latest else t.subject,
                "snippet": latest.snippet if latest else "",
                "message_ids": [m.id for m in messages],
                "draft_ids": [],
                "has_drafts": False,
                "participants": _participants(messages),
                "unread": any(m.unread for m in messages),
                "starred": any(m.starred for m in messages),
                "has_attachments": any(m.has_attachments for m in messages),
                "folders": thread_folders,
                "earliest_message_date": unix(messages[0].date) if messages else None,
                "latest_message_received_date": unix(latest.date) if latest else None,
                "latest_message_sent_date": unix(latest.date) if latest else None,
                "latest_draft_or_message": (
                    message_view(
                        latest,
                        folders.get(latest.id, []),
                        [attachment_view(a) for a in attachments.get(latest.id, [])],
                    )
                    if latest
                    else None
                ),
            }
        )
    return views


@router.get("/grants/{grant_id}/threads", summary="List threads")
def list_threads(
    request: Request,
    db: Db,
    grant: LiveGrant,
    flt: ListFilter,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
    latest_message_before: Timestamp = None,
    latest_message_after: Timestamp = None,
    select: Annotated[str | None, Query(max_length=1000)] = None,
    earliest_message_date: Timestamp = None,
) -> dict[str, Any]:
    """A page of threads that have a message matching every filter, most recent first."""
    if earliest_message_date is not None:
        raise invalid_request(
            "earliest_message_date is not supported as a filter here: use "
            "latest_message_before / latest_message_after (each thread's "
            "earliest_message_date is in its object)."
        )
    after = decode_cursor(page_token) if page_token is not None else None
    rows = queries.list_threads(
        db,
        grant.id,
        flt,
        limit + 1,
        after,
        latest_before=from_unix(latest_message_before),
        latest_after=from_unix(latest_message_after),
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        assert last.latest_message_at is not None  # the query only returns dated threads
        next_cursor = encode_cursor(last.latest_message_at, last.id)
    selected = parse_select(select)
    data = [apply_select(v, selected) for v in thread_views(db, rows[:limit])]
    return page(request, data, next_cursor)


def path_thread(db: Session, grant: Grant, thread_id: str) -> Thread:
    """The grant's thread named in the path, or a 404."""
    thread = queries.get_thread(db, grant.id, thread_id)
    if thread is None:
        raise not_found(f"No thread {thread_id!r} in this grant.")
    return thread


@router.get("/grants/{grant_id}/threads/{thread_id}", summary="Get a thread")
def get_thread(request: Request, db: Db, grant: LiveGrant, thread_id: str) -> dict[str, Any]:
    """One thread with its message ids, participants and latest message."""
    (view,) = thread_views(db, [path_thread(db, grant, thread_id)])
    return ok(request, view)


class ThreadUpdate(BaseModel):
    """Body of ``PUT /v3/grants/{grant_id}/threads/{thread_id}``: applied to every message."""

    model_config = ConfigDict(extra="forbid")

    unread: bool | None = None
    starred: bool | None = None
    folders: list[str] | None = Field(default=None, description="Exactly one folder id or name.")


def _thread_messages(db: Session, grant: Grant, thread_id: str) -> list[Message]:
    thread = path_thread(db, grant, thread_id)
    return queries.messages_of_threads(db, [thread.id]).get(thread.id, [])


@router.put("/grants/{grant_id}/threads/{thread_id}", summary="Update every message of a thread")
def update_thread(
    request: Request, db: Db, api: State, grant: LiveGrant, thread_id: str, body: ThreadUpdate
) -> dict[str, Any]:
    """Mark read/unread, star/unstar or move all the thread's messages (server first)."""
    folder = target_folder(db, grant, body.folders)
    for message in _thread_messages(db, grant, thread_id):
        if not queries.locations_of(db, message.id):
            continue  # a copy no folder holds any more: nothing to change on the server
        writeback.update_message(
            db, api, grant, message, unread=body.unread, starred=body.starred, folder=folder
        )
    db.commit()
    notify_after_commit(api)
    (view,) = thread_views(db, [path_thread(db, grant, thread_id)])
    return ok(request, view)


@router.delete("/grants/{grant_id}/threads/{thread_id}", summary="Move a thread to Trash")
def delete_thread(
    request: Request, db: Db, api: State, grant: LiveGrant, thread_id: str
) -> dict[str, Any]:
    """Move every message of the thread to the account's Trash folder (delete them where the
    account has none)."""
    for message in _thread_messages(db, grant, thread_id):
        if queries.locations_of(db, message.id):
            writeback.delete_message(db, api, grant, message)
    db.commit()
    notify_after_commit(api)
    return {"request_id": request_id_of(request)}
