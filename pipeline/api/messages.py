"""Messages: ``GET /v3/grants/{grant_id}/messages`` and ``.../messages/{message_id}``.

Lists are newest first and keyset-paginated (see :mod:`pipeline.api.pagination`); every filter
is served by an index (see :mod:`pipeline.messages.queries`); the filters threads share are read by
:mod:`pipeline.api.filters`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal, TypeVar, cast

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from pipeline.api.deps import (
    ApiState,
    Db,
    GrantPath,
    LiveGrant,
    Orm,
    State,
    check_folded_grant,
    folded_grant_id,
    json_page,
    live_grant_id,
    notify_after_commit,
    ok,
    page_json,
    page_json_rendered,
    page_reads,
)
from pipeline.api.errors import ApiError, invalid_request, not_found, request_id_of
from pipeline.api.filters import (
    MAX_UNIX_S,
    FilterParams,
    folded_folder_ids,
    from_unix,
    message_filter,
    resolve_folders,
    target_folder,
)
from pipeline.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from pipeline.api.params import openapi_parameters
from pipeline.api.rawmime import raw_mime_views
from pipeline.api.search import needs_server
from pipeline.drafts import repository as drafts_repository
from pipeline.messages import metadata
from pipeline.messages import queries as message_queries
from pipeline.messages import service as message_service
from pipeline.messages.repository import MessageRepository
from pipeline.messages.views import attachment_view, message_view
from pipeline.models import Grant, Message

router = APIRouter(tags=["messages"])
# The list, a client's most frequent call, on a router of its own that the app matches first
# (pipeline.api.app): matching a path walks the included routers in order, and reaching this
# route past all the others was a fifth of the API process's CPU per page
lists = APIRouter(tags=["messages"])

ALWAYS_SELECTED = ("id", "grant_id", "object")  # the SDK needs these to build its objects

Fields = Literal[
    "standard", "include_headers", "include_basic_headers", "include_tracking_options", "raw_mime"
]


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
    folders = message_queries.folder_ids_of(db, ids)
    attachments = message_queries.attachments_of(db, ids)
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


class _MessagePage(BaseModel):
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
    page_token: Annotated[str | None, Field(max_length=512)] = None
    thread_id: Annotated[str | None, Field(max_length=64)] = None
    received_before: Annotated[int | None, Field(ge=0, le=MAX_UNIX_S)] = None
    received_after: Annotated[int | None, Field(ge=0, le=MAX_UNIX_S)] = None
    fields: Fields = "standard"
    select: Annotated[str | None, Field(max_length=1000)] = None


class MessageListParams(FilterParams, _MessagePage):
    """The query parameters of ``GET /messages``: its own (first), then the shared filters."""


@lists.get(
    "/grants/{grant_id}/messages",
    summary="List messages",
    response_model=dict[str, Any],
    openapi_extra={"parameters": openapi_parameters(MessageListParams)},
)
async def list_messages(request: Request, grant_id: GrantPath) -> Response:
    """A page of the grant's messages, newest first, with the given filters."""
    # A client walks this list more than anything else: the parameters are read at once
    # (pipeline.api.params) and the page is made in one threadpool call (message_page).
    return await json_page(request, grant_id, MessageListParams, message_page)


def message_page(
    api: ApiState,
    request_id: str,
    grant_id: str,
    params: MessageListParams | RequestValidationError,
) -> bytes:
    """The page ``GET /messages`` answers, as JSON: the grant and the folders of ``in`` found
    with plain statements, the page read in one.

    Raises:
        ApiError: 404 for an unknown grant or folder, 401 for an expired grant, 400 for a bad
            parameter or page token.
        RequestValidationError: A parameter did not validate.
    """
    # raw_mime logs in to the server, and a refused login marks the grant invalid (committed)
    writes = not isinstance(params, RequestValidationError) and params.fields == "raw_mime"
    # A standard page with every field is rendered by Postgres (message_queries.message_json)
    rendered = (
        not isinstance(params, RequestValidationError)
        and params.fields == "standard"
        and params.select is None
    )
    with page_reads(api, writes=writes) as (conn, orm):

        def read(
            live_id: str, params: MessageListParams, grant_status: bool, fold: bool
        ) -> Sequence[Row[Any]]:
            return _page_rows(
                conn,
                api,
                live_id,
                params,
                orm,
                grant_status=grant_status,
                as_json=rendered,
                fold=fold,
            )

        # the grant's check rides on the page when nothing before it may write (raw_mime)
        live_id, params, rows = checked_page(conn, grant_id, params, read, fold_grant=not writes)
        fields, limit = params.fields, params.limit
        include_headers = fields == "include_headers"
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(last.date, last.id)
        if fields == "raw_mime":  # fetched from the server, as Nylas fetches it from the provider
            db, grant = orm(live_id)
            raw = raw_mime_views(db, api, grant, [cast(Message, row) for row in rows[:limit]])
            return page_json(request_id, raw, next_cursor)
    if rendered:
        return page_json_rendered(request_id, [row.json for row in rows[:limit]], next_cursor)
    selected = parse_select(params.select)
    data = [
        apply_select(
            message_view(
                # a row with every column attribute of a message (LISTED_ATTRIBUTES):
                # all that message_view reads, without the cost of ORM objects
                cast(Message, row),
                sorted(row.folders) if row.folders else [],
                row.attachments or [],
                include_headers=include_headers,
                include_basic_headers=fields == "include_basic_headers",
            ),
            selected,
        )
        for row in rows[:limit]
    ]
    return page_json(request_id, data, next_cursor)


PageParams = TypeVar("PageParams", bound=FilterParams)
PageRows = TypeVar("PageRows", bound=Sequence[Any])


def checked_page(
    conn: Connection,
    grant_id: str,
    params: PageParams | RequestValidationError,
    read: Callable[[str, PageParams, bool, bool], PageRows],
    *,
    fold_grant: bool = True,
) -> tuple[str, PageParams, PageRows]:
    """The grant's id, the parameters and the rows of a list page (messages or threads) whose
    checks ride on its statement where they can: ``read(grant_id, params, grant_status,
    fold)`` reads the page, its rows with the grant's ``grant_status`` when asked (the grant
    named by its id, ``fold_grant`` and no search the server answers, which may write:
    :func:`~pipeline.api.deps.folded_grant_id`) and, with ``fold``, a ``folders_found`` count
    for the folders ``in`` names by id (:func:`~pipeline.api.filters.folded_folder_ids`), not
    looked up first. When a check fails or the page is empty, the grant and the folders are
    looked up as without it (a 404, a 401), and the page read again if the folders were other
    than taken.

    Raises:
        ApiError: 404 for an unknown grant or folder, 401 for an expired grant, 400 for a bad
            parameter or page token.
        RequestValidationError: A parameter did not validate.
    """
    folded = (
        folded_grant_id(grant_id)
        if fold_grant
        and not isinstance(params, RequestValidationError)
        and not needs_server(params.search_query_native)
        else None
    )
    if folded is None:
        live_id = live_grant_id(conn, grant_id)
        if isinstance(params, RequestValidationError):
            raise params
    else:
        live_id = folded
    assert not isinstance(params, RequestValidationError)
    try:
        rows = read(live_id, params, folded is not None, True)
    except (ApiError, DBAPIError):
        if folded is not None:  # an unknown or expired grant answers first, as before
            live_grant_id(conn, grant_id)
        raise
    if folded is not None:
        check_folded_grant(conn, grant_id, rows[0].grant_status if rows else None)
    unchecked = folded_folder_ids(params)  # checked by the page statement
    if unchecked is not None and not (rows and rows[0].folders_found == len(unchecked)):
        # a folder of `in` is not the grant's, or the page is empty: look them up (a 404
        # for an unknown one), and read the page again if that found other folders (an
        # id-shaped folder name)
        resolved = resolve_folders(conn, live_id, params.in_)
        if set(resolved or ()) != set(unchecked):
            rows = read(live_id, params, False, False)
    return live_id, params, rows


def _page_rows(
    conn: Connection,
    api: ApiState,
    grant_id: str,
    params: MessageListParams,
    orm: Orm,
    *,
    grant_status: bool,
    as_json: bool,
    fold: bool = True,
) -> Sequence[Row[Any]]:
    """The rows of the page (one more than the limit when there is a next page); ``fold``:
    the folders of ``in`` given by id are checked by the page statement (see
    :func:`~pipeline.api.filters.folded_folder_ids`), not looked up first."""
    shared = message_filter(conn, api, grant_id, params, lambda: orm(grant_id), fold_folders=fold)
    flt = replace(
        shared,
        thread_id=params.thread_id,
        received_before=from_unix(params.received_before),
        received_after=from_unix(params.received_after),
    )
    if flt.folder_ids is None:  # drafts are listed by /drafts, as Nylas does (unless `in`)
        flt.not_in_role = drafts_repository.DRAFTS_ROLE
    after = decode_cursor(params.page_token) if params.page_token is not None else None
    return message_queries.list_messages(
        conn,
        grant_id,
        flt,
        params.limit + 1,
        after,
        include_headers=params.fields == "include_headers",
        grant_status=grant_status,
        as_json=as_json,
    )


def path_message(db: Session, grant: Grant, message_id: str) -> Message:
    """The grant's message named in the path, or a 404."""
    message = MessageRepository(db).get(grant.id, message_id)
    if message is None:
        raise not_found(f"No message {message_id!r} in this grant.")
    return message


@router.get("/grants/{grant_id}/messages/{message_id}", summary="Get a message")
def get_message(
    request: Request,
    db: Db,
    api: State,
    grant: LiveGrant,
    message_id: str,
    fields: Fields = "standard",
    select: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """One message with its folders and attachments (``fields=raw_mime``: its raw bytes)."""
    message = path_message(db, grant, message_id)
    if fields == "raw_mime":
        (raw,) = raw_mime_views(db, api, grant, [message])
        if raw["raw_mime"] is None:
            raise not_found("This message is no longer in any folder on the server.")
        return ok(request, raw)
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
        default=None,
        description="Key-value pairs (strings) kept with the message; replaces what it had.",
    )


@router.put("/grants/{grant_id}/messages/{message_id}", summary="Update a message")
def update_message(
    request: Request, db: Db, api: State, grant: LiveGrant, message_id: str, body: MessageUpdate
) -> dict[str, Any]:
    """Mark read/unread, star/unstar (IMAP STORE) and move (IMAP MOVE) a message; set its
    metadata (Postgres only, the whole object replaced).

    The server is changed first; Postgres records what the server accepted.
    """
    message = path_message(db, grant, message_id)
    folder = target_folder(db, grant, body.folders)
    if body.metadata is not None:
        # Postgres only; first, so a message.updated of the same request carries it (Nylas
        # sends no notification for a metadata change alone)
        try:
            message.metadata_ = metadata.validated(body.metadata)
        except metadata.MetadataError as exc:
            raise invalid_request(str(exc)) from exc
    message_service.update_message(
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
    message_service.delete_message(db, api, grant, message, hard=hard_delete)
    db.commit()
    notify_after_commit(api)
    return {"request_id": request_id_of(request)}
