"""Sending: ``POST /v3/grants/{grant_id}/messages/send`` (JSON, multipart with attachments, or
raw MIME: ``?type=mime`` with a ``mime`` part) and ``/v3/grants/{grant_id}/messages/schedules``.

The message is composed by :mod:`pipeline.outbound.compose` (From is the grant's address;
replies get In-Reply-To and References from the message replied to), written to the send
outbox (:mod:`pipeline.outbound.outbox`) and committed (:mod:`pipeline.outbound.sending`); a
worker sends it (:mod:`pipeline.outbound.deliver`) over a reused SMTP connection and files the
copy in Sent.

An immediate send waits for the worker's outcome (polling the row, at most
``IMAP_PIPELINE_SEND_WAIT_S``; what it came to and the answer kept for its key are decided by
:mod:`pipeline.outbound.submit`, which the route renders) and answers as before: the sent
message with its id, or the error the SMTP server caused. If the deadline passes first the
answer is ``202`` with the composed message and its ``schedule_id``
(``GET .../messages/schedules/{id}`` follows it): the row stays queued and is sent once,
whatever the client does next. A send with ``send_at`` is answered at once with its
``schedule_id``.

``Idempotency-Key`` (Nylas semantics, per grant, one hour): the same key with the same request
answers what the first one answered (``Idempotent-Response: true``), never sending again; with
another request it is a 409 ``api.invalid_idempotent_request``; while the first is still being
sent past the wait, a 409 ``api.concurrent_idempotent_request``; a key over 256 characters is a
400 ``api.invalid_idempotency_key``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.engine import Row
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from pipeline.api.deps import ApiState, Db, LiveGrant, State, ok
from pipeline.api.errors import ApiError, invalid_request, not_found, request_id_of
from pipeline.api.messages import Fields
from pipeline.models import Grant
from pipeline.outbound import submit
from pipeline.outbound.compose import (
    MAX_ATTACHMENTS,
    OutgoingAttachment,
    SendRequest,
    files_from_json,
    prepare,
    prepare_mime,
)
from pipeline.outbound.outbox import OutboxRepository

log = logging.getLogger(__name__)

router = APIRouter(tags=["messages"])

IDEMPOTENCY_KEY_MAX = 256  # Nylas: "Keys are up to 256 characters"
SCHEDULE_STATUS = {  # outbox state -> Nylas' schedule status (code, description)
    "queued": ("pending", "schedule send awaiting send at time"),
    "sending": ("pending", "schedule send in progress"),
    "sent": ("success", "schedule send succeeded"),
    "failed": ("failed", "schedule send failed"),
    "cancelled": ("cancelled", "schedule send cancelled"),
}


def _respond(
    request: Request, status: int, body: dict[str, Any], *, repeated: bool
) -> JSONResponse:
    headers = {"Idempotent-Response": "true"} if repeated else {}
    if "error" in body:
        raise ApiError(status, body["error"]["type"], body["error"]["message"], headers=headers)
    return JSONResponse(
        status_code=status,
        content={"request_id": request_id_of(request), "data": body["data"]},
        headers=headers,
    )


def schedule_view(row: Row[Any]) -> dict[str, Any]:
    """A scheduled send as ``/messages/schedules`` shows it (Nylas' shape)."""
    code, description = SCHEDULE_STATUS[row.state]
    view: dict[str, Any] = {
        "schedule_id": row.id,
        "status": {"code": code, "description": description},
    }
    if row.closed_at is not None and row.state in ("sent", "failed"):
        view["close_time"] = int(row.closed_at.timestamp())
    if row.send_at is not None:
        view["send_at"] = int(row.send_at.timestamp())
    return view


Parsed = tuple[SendRequest | None, list[tuple[OutgoingAttachment, bytes]], bytes | None]


@dataclass(frozen=True)
class FormFile:
    """One file part of a multipart body, as the SDK sends large files."""

    filename: str
    content_type: str
    content_id: str | None  # the field's name, unless it is the SDK's ``file<n>``
    content: bytes


async def read_form(form: FormData, what: str) -> tuple[str, list[FormFile]]:
    """The JSON text of ``message`` (a field or, as the SDK sends it, a file part without a
    name) and every other file part, named by its field; at most ``MAX_ATTACHMENTS``.
    ``what`` names the request in the errors ("send", "draft")."""
    raw = form.get("message")
    if isinstance(raw, UploadFile):
        raw = (await raw.read()).decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise invalid_request(f"A multipart {what} needs a `message` part with the JSON.")
    files = []
    for key, value in form.multi_items():
        if key == "message" or not isinstance(value, UploadFile):
            continue
        files.append(
            FormFile(
                filename=value.filename or key,
                content_type=value.content_type or "application/octet-stream",
                content_id=None if re.fullmatch(r"file\d+", key) else key,
                content=await value.read(),
            )
        )
    if len(files) > MAX_ATTACHMENTS:
        noun = "message" if what == "send" else what
        raise invalid_request(f"At most {MAX_ATTACHMENTS} attachments per {noun}.")
    return raw, files


async def _from_form(form: FormData) -> Parsed:
    """A multipart send (:func:`read_form`), or a raw MIME message in ``mime``
    (``send_raw_mime``)."""
    mime = form.get("mime")
    if mime is not None:
        data = await mime.read() if isinstance(mime, UploadFile) else mime.encode("utf-8")
        return None, [], data
    raw, parts = await read_form(form, "send")
    req = SendRequest.model_validate(json.loads(raw))
    files = [
        (
            OutgoingAttachment(
                filename=part.filename,
                content_type=part.content_type,
                content="",
                content_id=part.content_id,
            ),
            part.content,
        )
        for part in parts
    ]
    return req, files, None


async def _parse(request: Request) -> Parsed:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=MAX_ATTACHMENTS + 1, max_fields=MAX_ATTACHMENTS)
            try:
                return await _from_form(form)
            finally:
                await form.close()  # spooled uploads are temporary files
        req = SendRequest.model_validate(json.loads(await request.body()))
        return req, files_from_json(req), None
    except json.JSONDecodeError as exc:
        raise invalid_request("The request body is not valid JSON.") from exc
    except RecursionError as exc:  # json.loads of thousands of nested brackets
        raise invalid_request("The request body is nested too deeply.") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise invalid_request(f"Invalid request: {where}: {first['msg']}.") from exc


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX:
        raise ApiError(
            400,
            "api.invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters.",
        )
    return key


@router.post(
    "/grants/{grant_id}/messages/send",
    summary="Send a message",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "multipart/form-data": {"schema": {"type": "object"}},
            },
        }
    },
    response_model=None,
)
async def send_message(
    request: Request, db: Db, api: State, grant: LiveGrant, fields: Fields = "standard"
) -> JSONResponse:
    """Queue the send in the outbox; answer once a worker sent it (see the module docstring)."""
    key = _idempotency_key(request)
    req, files, raw = await _parse(request)
    if raw is not None:
        out = prepare_mime(grant, raw, fields)
    else:
        assert req is not None
        out = await run_in_threadpool(prepare, db, grant, req, files, fields)
    submitted = await run_in_threadpool(submit.submit, db, api, grant, out, key)
    outcome = submit.scheduled(submitted) or await _wait(api, grant, submitted, fields)
    if outcome.kind is submit.Kind.IN_PROGRESS:
        raise ApiError(
            409,
            "api.concurrent_idempotent_request",
            "A request with this Idempotency-Key is still being sent; retry shortly for its "
            "answer.",
        )
    assert outcome.answer is not None
    if outcome.kind is submit.Kind.PENDING:
        return JSONResponse(
            status_code=202,
            content={"request_id": request_id_of(request), "data": outcome.answer["data"]},
        )
    return _respond(request, outcome.status, outcome.answer, repeated=outcome.repeated)


async def _wait(
    api: ApiState, grant: Grant, submitted: submit.Submitted, fields: str
) -> submit.Outcome:
    """:func:`pipeline.outbound.submit.submit_and_wait`'s wait (the same
    :class:`~pipeline.outbound.submit.Wait`), without blocking the loop."""
    wait = submit.Wait(submitted, api.settings.api.send_wait_s)
    while True:
        looked = await run_in_threadpool(submit.look, api.sessions, grant.id, submitted, fields)
        step = wait.after(looked)
        if not isinstance(step, float):
            return step
        await asyncio.sleep(step)


@router.get("/grants/{grant_id}/messages/schedules", summary="List scheduled messages")
def list_schedules(request: Request, db: Db, grant: LiveGrant) -> dict[str, Any]:
    """The grant's scheduled sends (pending, sent, failed, cancelled; kept 72 hours)."""
    rows = OutboxRepository(db).scheduled(grant.id)
    return {"request_id": request_id_of(request), "data": [schedule_view(r) for r in rows]}


@router.get("/grants/{grant_id}/messages/schedules/{schedule_id}", summary="A scheduled message")
def get_schedule(request: Request, db: Db, grant: LiveGrant, schedule_id: str) -> dict[str, Any]:
    """One scheduled (or immediate, by the ``schedule_id`` of a 202) send."""
    row = OutboxRepository(db).get(grant.id, schedule_id)
    if row is None:
        raise not_found(f"No scheduled message {schedule_id!r}.")
    return ok(request, schedule_view(row))


@router.delete(
    "/grants/{grant_id}/messages/schedules/{schedule_id}",
    summary="Cancel a scheduled message",
    status_code=202,
)
def cancel_schedule(request: Request, db: Db, grant: LiveGrant, schedule_id: str) -> dict[str, Any]:
    """Cancel a send that has not started; it is then never sent."""
    repo = OutboxRepository(db)
    row = repo.get(grant.id, schedule_id)
    if row is None:
        raise not_found(f"No scheduled message {schedule_id!r}.")
    if not repo.cancel(grant.id, schedule_id):
        code = SCHEDULE_STATUS[row.state][0]
        raise invalid_request(
            f"Scheduled message {schedule_id} cannot be cancelled: its status is {code!r}."
        )
    db.commit()
    return ok(request, {"message": "Scheduled message cancelled: it will not be sent."})
