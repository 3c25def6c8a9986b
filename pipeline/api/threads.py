"""Threads: list, get, update (every message, on the server first) and delete (to Trash).

A thread's view is computed from its messages (:mod:`pipeline.threads.views`), or rendered by
Postgres for a list page with every field (:mod:`pipeline.threads.rendered`). Lists are newest
first by the latest message, keyset-paginated (:mod:`pipeline.threads.queries`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from pipeline.api.deps import (
    ApiState,
    Db,
    GrantPath,
    LiveGrant,
    State,
    json_page,
    notify_after_commit,
    ok,
    page_json,
    page_json_rendered,
    page_reads,
)
from pipeline.api.errors import not_found, request_id_of
from pipeline.api.filters import MAX_UNIX_S, FilterParams, from_unix, message_filter, target_folder
from pipeline.api.messages import apply_select, checked_page, parse_select
from pipeline.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from pipeline.api.params import openapi_parameters
from pipeline.messages import service as message_service
from pipeline.messages.placements import PlacementRepository
from pipeline.models import Grant, Message, Thread
from pipeline.threads import queries as thread_queries
from pipeline.threads.views import thread_view, thread_views

router = APIRouter(tags=["threads"])
# The list, a client's most frequent call, on a router of its own that the app matches first
# (pipeline.api.app): matching a path walks the included routers in order, and reaching this
# route past all the others was a fifth of the API process's CPU per page
lists = APIRouter(tags=["threads"])


class _ThreadPage(BaseModel):
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
    page_token: Annotated[str | None, Field(max_length=512)] = None
    latest_message_before: Annotated[int | None, Field(ge=0, le=MAX_UNIX_S)] = None
    latest_message_after: Annotated[int | None, Field(ge=0, le=MAX_UNIX_S)] = None
    select: Annotated[str | None, Field(max_length=1000)] = None
    earliest_message_date: Annotated[int | None, Field(ge=0, le=MAX_UNIX_S)] = None
    # the SDK's ListThreadsQueryParams has it (Nylas' reference does not): that one thread
    thread_id: Annotated[str | None, Field(max_length=64)] = None


class ThreadListParams(FilterParams, _ThreadPage):
    """The query parameters of ``GET /threads``: its own (first), then the shared filters."""


@lists.get(
    "/grants/{grant_id}/threads",
    summary="List threads",
    response_model=dict[str, Any],
    openapi_extra={"parameters": openapi_parameters(ThreadListParams)},
)
async def list_threads(request: Request, grant_id: GrantPath) -> Response:
    """A page of threads that have a message matching every filter, most recent first;
    ``earliest_message_date``: only threads whose first message is at or after that time."""
    return await json_page(request, grant_id, ThreadListParams, thread_page)


def thread_page(
    api: ApiState,
    request_id: str,
    grant_id: str,
    params: ThreadListParams | RequestValidationError,
) -> bytes:
    """The page ``GET /threads`` answers, as JSON: the threads and their messages in one
    statement, with the grant's check and that of the folders of ``in`` when it can
    (:func:`~pipeline.api.messages.checked_page`).

    Raises:
        ApiError: 404 for an unknown grant or folder, 401 for an expired grant, 400 for a bad
            parameter or page token.
        RequestValidationError: A parameter did not validate.
    """
    with page_reads(api) as (conn, orm):

        def read(
            live_id: str, params: ThreadListParams, grant_status: bool, fold: bool
        ) -> list[thread_queries.ThreadPage]:
            flt = message_filter(
                conn, api, live_id, params, lambda: orm(live_id), fold_folders=fold
            )
            if params.thread_id is not None:
                flt = replace(flt, thread_id=params.thread_id)
            criteria = thread_queries.ThreadCriteria(
                live_id,
                flt,
                params.limit + 1,
                decode_cursor(params.page_token) if params.page_token is not None else None,
                latest_before=from_unix(params.latest_message_before),
                latest_after=from_unix(params.latest_message_after),
                earliest_from=from_unix(params.earliest_message_date),
            )
            return thread_queries.list_threads(
                conn, criteria, as_json=params.select is None, grant_status=grant_status
            )

        _, params, threads = checked_page(conn, grant_id, params, read)
    limit = params.limit
    # a page with every field is rendered by Postgres (thread_rendered.thread_json_select)
    rendered = params.select is None
    next_cursor = None
    if len(threads) > limit:
        last = threads[limit - 1]
        next_cursor = encode_cursor(last.latest_message_at, last.id)
    if rendered:
        return page_json_rendered(
            request_id, [t.json or "null" for t in threads[:limit]], next_cursor
        )
    selected = parse_select(params.select)
    data = [
        apply_select(thread_view(t.id, t.grant_id, t.subject, t.messages), selected)
        for t in threads[:limit]
    ]
    return page_json(request_id, data, next_cursor)


def path_thread(db: Session, grant: Grant, thread_id: str) -> Thread:
    """The grant's thread named in the path, or a 404."""
    thread = thread_queries.get_thread(db, grant.id, thread_id)
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
    return thread_queries.messages_of_threads(db, [thread.id]).get(thread.id, [])


@router.put("/grants/{grant_id}/threads/{thread_id}", summary="Update every message of a thread")
def update_thread(
    request: Request, db: Db, api: State, grant: LiveGrant, thread_id: str, body: ThreadUpdate
) -> dict[str, Any]:
    """Mark read/unread, star/unstar or move all the thread's messages (server first)."""
    folder = target_folder(db, grant, body.folders)
    for message in _thread_messages(db, grant, thread_id):
        if not PlacementRepository(db).locations(message.id):
            continue  # a copy no folder holds any more: nothing to change on the server
        message_service.update_message(
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
        if PlacementRepository(db).locations(message.id):
            message_service.delete_message(db, api, grant, message)
    db.commit()
    notify_after_commit(api)
    return {"request_id": request_id_of(request)}
