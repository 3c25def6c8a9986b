"""Drafts: ``/v3/grants/{grant_id}/drafts`` (list, create, find, update, send, destroy).

A draft lives on the server, in the account's Drafts folder (role ``drafts``), APPENDed with
``\\Draft`` and ``\\Seen``; Postgres holds it like any message the sync stores (a draft another
mail client saved is listed too). The server is changed first and what it holds is recorded, by
:mod:`pipeline.drafts.service`:

- create: compose (:mod:`pipeline.drafts.mime`), APPEND, fetch the copy back and store it
  through the sync's own normalizer (the next sync recognizes it, nothing is stored twice);
- update: read the server's copy, apply the fields given (a field left out keeps its value;
  ``attachments`` given replace the files), APPEND the new version with the same Message-ID,
  then expunge the old one; the row is rewritten in place, so the draft id stays the same;
- send (here): read the server's copy, send it through :func:`pipeline.outbound.submit.send_now`
  (SMTP, then the copy in Sent), then expunge the draft;
- destroy: expunge it (a draft is not moved to Trash);
- ``send_at`` (create, update): a scheduled send of the draft's content in the outbox, kept in
  Drafts meanwhile (``use_draft``); an update makes it again from the new version, destroy and
  send cancel it.

Update, send and destroy of one draft run one at a time
(:func:`pipeline.drafts.scheduling.locked`): the second starts from the server copy and row the
first left. Scheduling a draft's send is :mod:`pipeline.drafts.scheduling` too.

Bounds: the request body (the app's 25 MB cap), at most ``MAX_RECIPIENTS`` recipients and
``MAX_ATTACHMENTS`` files, and the server's copy read back under the IMAP client's literal
limit.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from dataclasses import replace
from email.utils import make_msgid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from pipeline.api import send
from pipeline.api.deps import ApiState, Db, LiveGrant, State, ok, page
from pipeline.api.errors import (
    ApiError,
    from_pipeline_error,
    invalid_request,
    not_found,
    request_id_of,
)
from pipeline.api.filters import ListFilter
from pipeline.api.messages import Fields, apply_select, parse_select
from pipeline.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from pipeline.drafts import repository, scheduling
from pipeline.drafts import service as drafts
from pipeline.drafts.mime import DraftContent, DraftFile, Person
from pipeline.errors import ImapError, RequestError
from pipeline.messages import metadata
from pipeline.messages import queries as message_queries
from pipeline.messages.views import attachment_view, message_view
from pipeline.models import Grant, Message
from pipeline.outbound import compose, submit
from pipeline.outbound.outbox import MAX_SCHEDULE_AHEAD_S, OutboxRepository

log = logging.getLogger(__name__)

router = APIRouter(tags=["drafts"])

MAX_RECIPIENTS = compose.MAX_RECIPIENTS
MAX_ATTACHMENTS = compose.MAX_ATTACHMENTS


class DraftRequest(BaseModel):
    """Body of a create or an update (the JSON, or the ``message`` part of a multipart request).

    Every field is optional; on an update a field left out keeps the draft's value.
    """

    model_config = ConfigDict(extra="forbid")

    to: list[compose.Recipient] | None = None
    cc: list[compose.Recipient] | None = None
    bcc: list[compose.Recipient] | None = None
    reply_to: list[compose.Recipient] | None = None
    from_: list[compose.Recipient] | None = Field(default=None, alias="from")
    subject: str | None = Field(default=None, max_length=998)
    body: str | None = None
    is_plaintext: bool | None = None
    attachments: list[compose.OutgoingAttachment] | None = Field(
        default=None, max_length=MAX_ATTACHMENTS
    )
    # the engine's id, or (as Nylas documents for IMAP) the RFC 822 Message-ID
    reply_to_message_id: str | None = Field(default=None, max_length=998)
    custom_headers: list[compose.CustomHeader] | None = None
    starred: bool | None = None
    send_at: int | None = None
    tracking_options: dict[str, Any] | None = None  # accepted, not supported (ignored)
    metadata: dict[str, Any] | None = None  # kept in Postgres only (pipeline.messages.metadata)

    _one_line = field_validator("subject", "reply_to_message_id")(compose.one_line)


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


# --- what a request does to a draft -----------------------------------------------------------


def _people(recipients: list[compose.Recipient]) -> list[Person]:
    return [Person(r.email, r.name or "") for r in recipients]


def _applied(
    db: Session,
    grant: Grant,
    base: DraftContent,
    req: DraftRequest,
    files: list[DraftFile] | None,
) -> DraftContent:
    """``base`` with what the request gives.

    Raises:
        ApiError: 400 for what a draft cannot hold; 404 for an unknown reply target.
    """
    if req.from_ and req.from_[0].email.lower() != grant.email.lower():
        raise invalid_request(f"This grant sends as {grant.email}; `from` cannot differ.")
    content = replace(base)
    for name in ("to", "cc", "bcc", "reply_to"):
        given = getattr(req, name)
        if given is not None:
            setattr(content, name, _people(given))
    if req.from_:
        content.from_name = req.from_[0].name or ""
    if req.subject is not None:
        content.subject = req.subject
    if req.body is not None:
        content.body = req.body
    if req.is_plaintext is not None:
        content.is_plaintext = req.is_plaintext
    if req.custom_headers is not None:
        content.headers = [(h.name, h.value) for h in req.custom_headers]
    if req.reply_to_message_id is not None:
        parent = compose.reply_parent(db, grant.id, req.reply_to_message_id)
        if parent is None:
            raise not_found(f"No message {req.reply_to_message_id!r} to reply to.")
        content.in_reply_to = parent.message_id_header
        content.references = (
            [*parent.references, parent.message_id_header] if parent.message_id_header else []
        )
    if files is not None:
        content.files = files
    if len(content.to) + len(content.cc) + len(content.bcc) > MAX_RECIPIENTS:
        raise invalid_request(f"At most {MAX_RECIPIENTS} recipients per draft.")
    if len(content.files) > MAX_ATTACHMENTS:
        raise invalid_request(f"At most {MAX_ATTACHMENTS} attachments per draft.")
    return content


def _checked_metadata(req: DraftRequest) -> dict[str, str] | None:
    """The request's metadata checked against Nylas' rules (None: not given).

    Raises:
        ApiError: 400 naming the rule broken.
    """
    if req.metadata is None:
        return None
    try:
        return metadata.validated(req.metadata)
    except metadata.MetadataError as exc:
        raise invalid_request(str(exc)) from exc


def _check_send_at(req: DraftRequest) -> None:
    """A draft's ``send_at``: in the future, at most 30 days ahead (as a send's).

    Raises:
        ApiError: 400 otherwise.
    """
    if req.send_at is None:
        return
    if req.send_at <= time.time():
        raise invalid_request("send_at must be in the future (Unix seconds).")
    if req.send_at > time.time() + MAX_SCHEDULE_AHEAD_S:
        raise invalid_request("send_at must be at most 30 days ahead.")


def create_scheduled(
    db: Session,
    api: ApiState,
    grant: Grant,
    content: DraftContent,
    *,
    starred: bool,
    pairs: dict[str, str] | None,
    send_at: int | None,
) -> Message:
    """:func:`pipeline.drafts.service.append`, then its send at ``send_at`` when given (checked
    first: a draft that could not be sent is refused before it is saved)."""
    if send_at is not None:
        scheduling.scheduled_send(
            db, grant, content, pairs, send_at, make_msgid(domain=drafts.domain_of(grant))
        )
    draft = drafts.append(db, api, grant, content, starred=starred, pairs=pairs)
    if send_at is not None and draft.message_id_header:
        scheduling.schedule(
            db,
            api,
            grant,
            scheduling.scheduled_send(db, grant, content, pairs, send_at, draft.message_id_header),
        )
    return draft


def update_draft(
    db: Session,
    api: ApiState,
    grant: Grant,
    draft: Message,
    req: DraftRequest,
    files: list[DraftFile] | None,
) -> Message:
    """Replace the server's copy by one with the request applied (same Message-ID), then
    rewrite the draft's row in place: its id stays. One change of a draft at a time."""
    _applied(db, grant, DraftContent(), req, files)  # refuse a bad request before waiting
    _check_send_at(req)
    with scheduling.locked(api.sessions, db, grant, draft) as current:
        return _update(db, api, grant, current, req, files)


def _update(
    db: Session,
    api: ApiState,
    grant: Grant,
    draft: Message,
    req: DraftRequest,
    files: list[DraftFile] | None,
) -> Message:
    drafts.location(db, draft)  # a draft no longer there is answered first
    message_id = draft.message_id_header or make_msgid(domain=drafts.domain_of(grant))
    starred = draft.starred if req.starred is None else req.starred
    _applied(db, grant, DraftContent(), req, files)  # refuse a bad request before any IMAP
    content = drafts.replace(
        db,
        api,
        grant,
        draft,
        lambda base: _applied(db, grant, base, req, files),
        message_id=message_id,
        starred=starred,
        pairs=_checked_metadata(req),
    )
    # A scheduled draft goes as it now is: its send is made again from the new version, at
    # the time given or the one it had.
    send_at = scheduling.unschedule(db, grant, message_id)
    send_at = req.send_at if req.send_at is not None else send_at
    if send_at is not None:
        try:
            out = scheduling.scheduled_send(
                db, grant, content, draft.metadata_, send_at, message_id
            )
        except RequestError as exc:
            db.commit()  # the old schedule stays cancelled: it held the old version
            refused = from_pipeline_error(exc)
            raise ApiError(
                refused.status,
                refused.type,
                f"The draft was saved, but cannot be sent as it now is ({refused.message}); its "
                "scheduled send is cancelled.",
            ) from exc
        scheduling.schedule(db, api, grant, out)
    db.commit()
    return draft


def send_draft(
    db: Session, api: ApiState, grant: Grant, draft: Message, fields: str
) -> dict[str, Any]:
    """Send what the server's copy of the draft holds, then expunge the draft (while no other
    change of it runs: an update meanwhile waits, then finds it gone)."""
    with scheduling.locked(api.sessions, db, grant, draft) as current:
        return _send(db, api, grant, current, fields)


def _send(db: Session, api: ApiState, grant: Grant, draft: Message, fields: str) -> dict[str, Any]:
    where = drafts.location(db, draft)
    if scheduling.unschedule(db, grant, draft.message_id_header) is not None:
        db.commit()  # sent now instead of then
    content = drafts.read(db, api, grant, where)
    req, files = scheduling.send_request(db, grant, content, draft.metadata_)
    # One send per version of a draft: a retry (after a 504 while the worker was still at it,
    # or when the draft could not be removed) gets the first send's answer, never a second mail.
    key = f"draft:{draft.id}:{draft.header_hash}"
    try:
        out = compose.prepare(db, grant, req, files, fields)
        view = submit.send_now(
            db, api, grant, out, key, wait_s=api.settings.send_wait_s, fields=fields
        )
    except RequestError:  # what compose refused, or the send failed with
        db.rollback()
        if OutboxRepository(db).release_key(grant.id, key):  # refused for certain: may retry
            db.commit()
        raise
    try:
        _remove(db, api, grant, draft)
    except (ImapError, RequestError) as exc:
        # The mail went out; only the draft is left behind (DELETE removes it).
        log.warning(
            "draft sent, but not removed from Drafts: %s",
            type(exc).__name__,
            extra={"grant_id": grant.id},
        )
    return view


def remove_draft(db: Session, api: ApiState, grant: Grant, draft: Message) -> None:
    """Expunge every copy of the draft and forget it (one change of a draft at a time)."""
    with scheduling.locked(api.sessions, db, grant, draft) as current:
        _remove(db, api, grant, current)


def _remove(db: Session, api: ApiState, grant: Grant, draft: Message) -> None:
    scheduling.unschedule(db, grant, draft.message_id_header)  # a deleted draft is not sent later
    drafts.expunge(db, api, grant, draft)
    db.commit()


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
    content = _applied(db, grant, DraftContent(), req, files)
    pairs = _checked_metadata(req)
    _check_send_at(req)
    draft = await run_in_threadpool(
        create_scheduled,
        db,
        api,
        grant,
        content,
        starred=bool(req.starred),
        pairs=pairs,
        send_at=req.send_at,
    )
    log.info("draft created", extra={"grant_id": grant.id, "request_id": request_id_of(request)})
    (view,) = draft_views(db, [draft])
    return ok(request, view)


@router.put(
    "/grants/{grant_id}/drafts/{draft_id}", summary="Update a draft", openapi_extra=_BODY_DOC
)
async def update(
    request: Request, db: Db, api: State, grant: LiveGrant, draft_id: str
) -> dict[str, Any]:
    """Replace the draft on the server with the fields given applied; its id stays."""
    draft = path_draft(db, grant, draft_id)
    req, files = await _parse(request)
    await run_in_threadpool(update_draft, db, api, grant, draft, req, files)
    (view,) = draft_views(db, [path_draft(db, grant, draft_id)])
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
    draft = path_draft(db, grant, draft_id)
    view = await run_in_threadpool(send_draft, db, api, grant, draft, fields)
    return ok(request, view)


@router.delete("/grants/{grant_id}/drafts/{draft_id}", summary="Delete a draft")
def destroy(
    request: Request, db: Db, api: State, grant: LiveGrant, draft_id: str
) -> dict[str, Any]:
    """Delete the draft from the server for good (drafts do not go to Trash)."""
    remove_draft(db, api, grant, path_draft(db, grant, draft_id))
    return {"request_id": request_id_of(request)}
