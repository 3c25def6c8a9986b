"""Messages: ``GET /v3/grants/{grant_id}/messages`` and ``.../messages/{message_id}``.

Lists are newest first and keyset-paginated (see :mod:`pipeline.api.pagination`); every filter
is served by an index (see :mod:`pipeline.api.queries`); the filters threads share are read by
:mod:`pipeline.api.filters`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from pipeline.api import queries, writeback
from pipeline.api.deps import Db, LiveGrant, State, notify_after_commit, ok, page
from pipeline.api.errors import not_found, request_id_of
from pipeline.api.filters import ListFilter, Timestamp, from_unix, target_folder
from pipeline.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from pipeline.messages.views import attachment_view, message_view
from pipeline.models import Grant, Message

router = APIRouter(tags=["messages"])

ALWAYS_SELECTED = ("id", "grant_id", "object")  # the SDK needs these to build its objects

Fields = Literal["standard", "include_headers", "include_basic_headers", "include_tracking_options"]


def parse_select(select: str | None) -> set[str] | None:
    """The fields a ``select`` parameter keeps (None: all)."""
    if not select:
        return None
    return {f.strip() for f in select.split(",") if f.strip()} | set(ALWAYS_SELECTED)


def apply_select(view: dict[str, Any], selected: set[str] | None) -> dict[str, Any]:
    """Only the selected fields of a view."""
    if selected is None:
        return view
    return {k: v for k, v in view.items() if k in selected}


def message_views(
    db: Session,
    rows: list[Message],
    *,
    include_headers: bool,
    selected: set[str] | None,
    include_basic_headers: bool = False,
) -> list[dict[str, Any]]:
    """Views of some messages, with their folders and attachments (two more queries)."""
    ids = [m.id for m in rows]
    folders = queries.folder_ids_of(db, ids)
    attachments = queries.attachments_of(db, ids)
    return [
        apply_select(
            message_view(
                m,
                folders.get(m.id, []),
                [attachment_view(a) for a in attachments.get(m.id, [])],
                include_headers=include_headers,
                include_basic_headers=include_basic_headers,
            ),
            selected,
        )
        for m in rows
    ]


@router.get("/grants/{grant_id}/messages", summary="List messages")
def list_messages(
    request: Request,
    db: Db,
    grant: LiveGrant,
    shared: ListFilter,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
    thread_id: Annotated[str | None, Query(max_length=64)] = None,
    received_before: Timestamp = None,
    received_after: Timestamp = None,
    fields: Fields = "standard",
    select: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """A page of the grant's messages, newest first, with the given filters."""
    flt = replace(
        shared,
        thread_id=thread_id,
        received_before=from_unix(received_before),
        received_after=from_unix(received_after),
    )
    after = decode_cursor(page_token) if page_token is not None else None
    include_headers = fields == "include_headers"
    rows = queries.list_messages(
        db, grant.id, flt, limit + 1, after, include_headers=include_headers
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1].message
        next_cursor = encode_cursor(last.date, last.id)
    selected = parse_select(select)
    data = [
        apply_select(
            message_view(
                row.message,
                row.folder_ids,
                row.attachments,
                include_headers=include_headers,
                include_basic_headers=fields == "include_basic_headers",
            ),
            selected,
        )
        for row in rows[:limit]
    ]
    return page(request, data, next_cursor)


def path_message(db: Session, grant: Grant, message_id: str) -> Message:
    """The grant's message named in the path, or a 404."""
    message = queries.get_message(db, grant.id, message_id)
    if message is None:
        raise not_found(f"No message {message_id!r} in this grant.")
    return message


@router.get("/grants/{grant_id}/messages/{message_id}", summary="Get a message")
def get_message(
    request: Request,
    db: Db,
    grant: LiveGrant,
    message_id: str,
    fields: Fields = "standard",
    select: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """One message with its folders and attachments."""
    message = path_message(db, grant, message_id)
    (view,) = message_views(
        db,
        [message],
        include_headers=fields == "include_headers",
        include_basic_headers=fields == "include_basic_headers",
        selected=parse_select(select),
    )
    return ok(request, view)


class MessageUpdate(BaseModel):
    """Body of ``PUT /v3/grants/{grant_id}/messages/{message_id}``."""

    model_config = ConfigDict(extra="forbid")

    unread: bool | None = None
    starred: bool | None = None
    folders: list[str] | None = Field(
        default=None, description="Exactly one folder id (or name): the message moves there."
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="Accepted for SDK compatibility; not stored."
    )


@router.put("/grants/{grant_id}/messages/{message_id}", summary="Update a message")
def update_message(
    request: Request, db: Db, api: State, grant: LiveGrant, message_id: str, body: MessageUpdate
) -> dict[str, Any]:
    """Mark read/unread, star/unstar (IMAP STORE) and move (IMAP MOVE) a message.

    The server is changed first; Postgres records what the server accepted.
    """
    message = path_message(db, grant, message_id)
    folder = target_folder(db, grant, body.folders)
    writeback.update_message(
        db, api, grant, message, unread=body.unread, starred=body.starred, folder=folder
    )
    db.commit()
    notify_after_commit(api)
    (view,) = message_views(db, [message], include_headers=False, selected=None)
    return ok(request, view)


@router.delete("/grants/{grant_id}/messages/{message_id}", summary="Delete a message")
def delete_message(
    request: Request,
    db: Db,
    api: State,
    grant: LiveGrant,
    message_id: str,
    hard_delete: bool = False,
) -> dict[str, Any]:
    """Move the message to the account's Trash folder; with ``hard_delete=true``, or when the
    account has no Trash folder, delete it from the server at once (irreversible)."""
    message = path_message(db, grant, message_id)
    writeback.delete_message(db, api, grant, message, hard=hard_delete)
    db.commit()
    notify_after_commit(api)
    return {"request_id": request_id_of(request)}
