"""Drafts: ``/v3/grants/{grant_id}/drafts`` (list, create, find, update, send, destroy).

A draft lives on the server, in the account's Drafts folder (role ``drafts``), APPENDed with
``\\Draft`` and ``\\Seen``; Postgres holds it like any message the sync stores (a draft another
mail client saved is listed too). The routes parse a request (JSON, or multipart/form-data for
large files) and render drafts in Nylas' shape; what a change does, step by step (create,
update, send, destroy; ``send_at`` as a scheduled send kept in Drafts; one change of a draft at
a time), is :mod:`pipeline.drafts.service`.

Bounds: the request body (the app's 25 MB cap), at most ``MAX_RECIPIENTS`` recipients and
``MAX_ATTACHMENTS`` files (:mod:`pipeline.drafts.schemas`), and the server's copy read back
under the IMAP client's literal limit.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import replace
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from pipeline.api import send
from pipeline.api.deps import Db, LiveGrant, State, ok, page
from pipeline.api.errors import invalid_request, not_found, request_id_of
from pipeline.api.filters import ListFilter
from pipeline.api.messages import Fields, apply_select, parse_select
from pipeline.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from pipeline.drafts import repository
from pipeline.drafts import service as drafts
from pipeline.drafts.mime import DraftFile
from pipeline.drafts.schemas import MAX_ATTACHMENTS, DraftRequest
from pipeline.messages import queries as message_queries
from pipeline.messages.views import attachment_view, message_view
from pipeline.models import Grant, Message
from pipeline.outbound import compose
from pipeline.outbound.outbox import OutboxRepository

log = logging.getLogger(__name__)

router = APIRouter(tags=["drafts"])


# --- parsing ----------------------------------------------------------------------------------


def _json_files(req: DraftRequest) -> list[DraftFile] | None:
    if req.attachments is None:
        return None
    files = []
    for att in req.attachments:
        try:
            content = base64.b64decode(att.content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid_request(f"Attachment {att.filename!r}: content must be base64.") from exc
        files.append(_file(att, content))
    return files


def _file(att: compose.OutgoingAttachment, content: bytes) -> DraftFile:
    return DraftFile(
        filename=att.filename,
        content_type=att.content_type,
        content=content,
        content_id=att.content_id,
        inline=att.is_inline or att.content_disposition == "inline",
    )


async def _from_form(form: FormData) -> tuple[DraftRequest, list[DraftFile]]:
    """A multipart body, as the SDK sends large files (:func:`send.read_form`)."""
    raw, parts = await send.read_form(form, "draft")
    req = DraftRequest.model_validate(json.loads(raw))
    files = [
        DraftFile(
            filename=part.filename,
            content_type=part.content_type,
            content=part.content,
            content_id=part.content_id,
        )
        for part in parts
    ]
    return req, files


async def _parse(request: Request) -> tuple[DraftRequest, list[DraftFile] | None]:
    """The request and its files (None: the request does not touch the files)."""
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=MAX_ATTACHMENTS + 1, max_fields=MAX_ATTACHMENTS)
            try:
                return await _from_form(form)
            finally:
                await form.close()
        body = await request.body()
        req = DraftRequest.model_validate(json.loads(body) if body.strip() else {})
        return req, _json_files(req)
    except json.JSONDecodeError as exc:
        raise invalid_request("The request body is not valid JSON.") from exc
    except RecursionError as exc:
        raise invalid_request("The request body is nested too deeply.") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise invalid_request(f"Invalid request: {where}: {first['msg']}.") from exc


# --- views and routes -------------------------------------------------------------------------


def draft_views(
    db: Session, rows: list[Message], selected: set[str] | None = None
) -> list[dict[str, Any]]:
    """Drafts in the Nylas v3 shape: a message's fields with ``object: "draft"``."""
    ids = [m.id for m in rows]
    folders = message_queries.folder_ids_of(db, ids)
    attachments = message_queries.attachments_of(db, ids)
    grant_ids = {m.grant_id for m in rows}
    headers = [m.message_id_header for m in rows if m.message_id_header]
    scheduled = (
        OutboxRepository(db).draft_schedules(next(iter(grant_ids)), headers)
        if len(grant_ids) == 1
        else {}
    )
    views = []
    for m in rows:
        view = {
            **message_view(
                m, folders.get(m.id, []), [attachment_view(a) for a in attachments.get(m.id, [])]
            ),
            "object": "draft",
        }
        schedule = scheduled.get(m.message_id_header or "")
        if schedule is not None:  # Nylas' message fields of a scheduled send
            view["schedule_id"] = schedule.id
            view["send_at"] = int(schedule.send_at.timestamp())
        views.append(apply_select(view, selected))
    return views


def path_draft(db: Session, grant: Grant, draft_id: str) -> Message:
    """The grant's draft named in the path, or a 404."""
    draft = repository.get_draft(db, grant.id, draft_id)
    if draft is None:
        raise not_found(f"No draft {draft_id!r} in this grant.")
    return draft


def _draft_view(db: Session, grant: Grant, draft_id: str) -> dict[str, Any]:
    """The draft named in the path, read again, in its view (or a 404)."""
    (view,) = draft_views(db, [path_draft(db, grant, draft_id)])
    return view


_BODY_DOC = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "multipart/form-data": {"schema": {"type": "object"}},
        },
    }
}


@router.get("/grants/{grant_id}/drafts", summary="List drafts")
def list_drafts(
    request: Request,
    db: Db,
    grant: LiveGrant,
    shared: ListFilter,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
    thread_id: Annotated[str | None, Query(max_length=64)] = None,
    select: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """The drafts in the account's Drafts folder, newest first, with the given filters."""
    drafts_ids = [f.id for f in repository.drafts_folders(db, grant.id)]
    wanted = (
        drafts_ids
        if shared.folder_ids is None
        else [f for f in shared.folder_ids if f in drafts_ids]
    )
    if not wanted:
        return page(request, [], None)
    flt = replace(shared, folder_ids=wanted, thread_id=thread_id)
    after = decode_cursor(page_token) if page_token is not None else None
    rows = message_queries.list_message_objects(db, grant.id, flt, limit + 1, after)
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last.date, last.id)
    data = draft_views(db, rows[:limit], parse_select(select))
    return page(request, data, next_cursor)


@router.get("/grants/{grant_id}/drafts/{draft_id}", summary="Get a draft")
def get_draft(
    request: Request,
    db: Db,
    grant: LiveGrant,
    draft_id: str,
    select: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """One draft."""
    (view,) = draft_views(db, [path_draft(db, grant, draft_id)], parse_select(select))
    return ok(request, view)


@router.post("/grants/{grant_id}/drafts", summary="Create a draft", openapi_extra=_BODY_DOC)
async def create(request: Request, db: Db, api: State, grant: LiveGrant) -> dict[str, Any]:
    """Save a new draft in the Drafts folder (JSON, or multipart/form-data for large files)."""
    req, files = await _parse(request)
    draft = await run_in_threadpool(drafts.create, db, api, grant, req, files)
    log.info("draft created", extra={"grant_id": grant.id, "request_id": request_id_of(request)})
    (view,) = await run_in_threadpool(draft_views, db, [draft])
    return ok(request, view)


@router.put(
    "/grants/{grant_id}/drafts/{draft_id}", summary="Update a draft", openapi_extra=_BODY_DOC
)
async def update(
    request: Request, db: Db, api: State, grant: LiveGrant, draft_id: str
) -> dict[str, Any]:
    """Replace the draft on the server with the fields given applied; its id stays."""
    draft = await run_in_threadpool(path_draft, db, grant, draft_id)
    req, files = await _parse(request)
    await run_in_threadpool(drafts.update, db, api, grant, draft, req, files)
    view = await run_in_threadpool(_draft_view, db, grant, draft_id)
    return ok(request, view)


@router.post("/grants/{grant_id}/drafts/{draft_id}", summary="Send a draft")
async def send_it(
    request: Request,
    db: Db,
    api: State,
    grant: LiveGrant,
    draft_id: str,
    fields: Fields = "standard",
) -> dict[str, Any]:
    """Send the draft (SMTP, then the copy in Sent) and remove it from Drafts; answers with
    the sent message."""
    draft = await run_in_threadpool(path_draft, db, grant, draft_id)
    view = await run_in_threadpool(
        partial(drafts.send, fields=fields, wait_s=api.settings.api.send_wait_s),
        db,
        api,
        grant,
        draft,
    )
    return ok(request, view)


@router.delete("/grants/{grant_id}/drafts/{draft_id}", summary="Delete a draft")
def destroy(
    request: Request, db: Db, api: State, grant: LiveGrant, draft_id: str
) -> dict[str, Any]:
    """Delete the draft from the server for good (drafts do not go to Trash)."""
    drafts.remove(db, api, grant, path_draft(db, grant, draft_id))
    return {"request_id": request_id_of(request)}
