"""Sending: ``POST /v3/grants/{grant_id}/messages/send`` (JSON, or multipart with attachments).

The message is composed here (From is the grant's address; replies get In-Reply-To and
References from the message replied to), sent over SMTP (implicit TLS or STARTTLS, certificate
checked like IMAP's), then appended to the Sent folder unless the provider files sent mail by
itself. The appended copy is stored straight away through the sync engine's own normalizer, so
the answer carries the message's id and the next sync recognizes it by identity instead of
storing it twice.

SMTP is not yet under the shared per-account limits of :mod:`pipeline.ratelimit` (those count
IMAP); providers' own sending limits apply.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import logging
import re
import smtplib
import socket
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from pipeline.api import queries, writeback
from pipeline.api.deps import ApiState, Db, LiveGrant, State, notify_after_commit, ok
from pipeline.api.errors import ApiError, invalid_request, not_found
from pipeline.api.limits import take_login
from pipeline.api.messages import Fields, message_views
from pipeline.config import Settings
from pipeline.errors import ImapConnectError, ImapError
from pipeline.grants.service import SMTP_UNREACHABLE, checked_address, grant_secrets
from pipeline.models import Grant
from pipeline.presets import preset
from pipeline.sync import events
from pipeline.sync.store import parse_batch, write_batch

log = logging.getLogger(__name__)

router = APIRouter(tags=["messages"])

SMTP_TIMEOUT_S = 60.0  # every SMTP command; a hung server fails the request, never hangs it
MAX_RECIPIENTS = 100  # to + cc + bcc of one message
MAX_ATTACHMENTS = 50
_LINE_BREAKS = ("\r", "\n", "\x00")  # a header value holding one would start another header
_TAGS = re.compile(r"<[^>]+>")
_BREAKS = re.compile(r"(?i)<br\s*/?>|</p>|</div>|</li>")


def one_line(value: str | None) -> str | None:
    """A header field's value as given, refused when it holds CR, LF or NUL.

    Raises:
        ValueError: The value would break the header it goes into (a 400, never a 500).
    """
    if value is not None and any(c in value for c in _LINE_BREAKS):
        raise ValueError("must be a single line: CR, LF and NUL are not allowed in headers")
    return value


class Recipient(BaseModel):
    """``{"name", "email"}``."""

    model_config = ConfigDict(extra="ignore")

    email: str = Field(min_length=3, max_length=320)
    name: str | None = Field(default=None, max_length=256)

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if "@" not in value or any(c in value for c in "\r\n<>, "):
            raise ValueError("must be an email address such as alice@example.com")
        return value

    _name_one_line = field_validator("name")(one_line)


class OutgoingAttachment(BaseModel):
    """An attachment in a JSON send request (``content`` is base64)."""

    model_config = ConfigDict(extra="ignore")

    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field(default="application/octet-stream", max_length=255)
    content: str
    content_id: str | None = Field(default=None, max_length=255)
    is_inline: bool = False
    content_disposition: str | None = None

    _one_line = field_validator("filename", "content_type", "content_id", "content_disposition")(
        one_line
    )


class CustomHeader(BaseModel):
    """An extra header (``X-…`` headers only)."""

    name: str = Field(pattern=r"^[Xx]-[A-Za-z0-9-]{1,64}$")
    value: str = Field(max_length=998)

    _value_one_line = field_validator("value")(one_line)


class SendRequest(BaseModel):
    """Body of a send (the JSON, or the ``message`` part of a multipart request)."""

    model_config = ConfigDict(extra="forbid")

    to: list[Recipient] = Field(default_factory=list)
    cc: list[Recipient] = Field(default_factory=list)
    bcc: list[Recipient] = Field(default_factory=list)
    reply_to: list[Recipient] = Field(default_factory=list)
    from_: list[Recipient] | None = Field(default=None, alias="from")
    subject: str = Field(default="", max_length=998)
    body: str = ""
    is_plaintext: bool = False
    attachments: list[OutgoingAttachment] = Field(default_factory=list)
    reply_to_message_id: str | None = Field(default=None, max_length=64)
    custom_headers: list[CustomHeader] = Field(default_factory=list)
    starred: bool | None = None
    send_at: int | None = None
    tracking_options: dict[str, Any] | None = None  # accepted, not supported (ignored)
    metadata: dict[str, Any] | None = None  # accepted, not stored

    _subject_one_line = field_validator("subject")(one_line)


def _text_of(body_html: str) -> str:
    return html.unescape(_TAGS.sub("", _BREAKS.sub("\n", body_html))).strip()


def _split_type(content_type: str) -> tuple[str, str]:
    main, _, sub = content_type.strip().lower().partition("/")
    if not main or not sub or not re.fullmatch(r"[a-z0-9.+-]+", main + sub):
        return "application", "octet-stream"
    return main, sub


def compose(
    db: Session, grant: Grant, req: SendRequest, files: list[tuple[OutgoingAttachment, bytes]]
) -> EmailMessage:
    """The MIME message of a send request.

    Raises:
        ApiError: 400 for a request that cannot be sent, 404 for an unknown reply target.
    """
    if req.send_at is not None:
        raise invalid_request("Scheduled sending (send_at) is not supported by this server.")
    recipients = req.to + req.cc + req.bcc
    if not recipients:
        raise invalid_request("A message needs at least one recipient in to, cc or bcc.")
    if len(recipients) > MAX_RECIPIENTS:
        raise invalid_request(f"At most {MAX_RECIPIENTS} recipients per message.")
    if req.from_ and req.from_[0].email.lower() != grant.email.lower():
        raise invalid_request(f"This grant sends as {grant.email}; `from` cannot differ.")
    msg = EmailMessage()
    name = req.from_[0].name if req.from_ else None
    msg["From"] = formataddr((name or "", grant.email))
    if req.to:
        msg["To"] = ", ".join(formataddr((r.name or "", r.email)) for r in req.to)
    if req.cc:
        msg["Cc"] = ", ".join(formataddr((r.name or "", r.email)) for r in req.cc)
    if req.reply_to:
        msg["Reply-To"] = ", ".join(formataddr((r.name or "", r.email)) for r in req.reply_to)
    msg["Subject"] = req.subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=grant.email.rpartition("@")[2] or "localhost")
    if req.reply_to_message_id:
        parent = queries.get_message(db, grant.id, req.reply_to_message_id)
        if parent is None:
            raise not_found(f"No message {req.reply_to_message_id!r} to reply to.")
        if parent.message_id_header:
            msg["In-Reply-To"] = parent.message_id_header
            msg["References"] = " ".join([*parent.references, parent.message_id_header])
    for header in req.custom_headers:
        msg[header.name] = header.value
    if req.is_plaintext:
        msg.set_content(req.body)
    else:
        msg.set_content(_text_of(req.body) or " ")
        msg.add_alternative(req.body or "<p></p>", subtype="html")
    for att, content in files:
        main, sub = _split_type(att.content_type)
        inline = att.is_inline or att.content_disposition == "inline"
        msg.add_attachment(
            content,
            maintype=main,
            subtype=sub,
            filename=att.filename,
            cid=f"<{att.content_id}>" if att.content_id else None,
            disposition="inline" if inline else "attachment",
        )
    return msg


def _smtp_context(grant: Grant, settings: Settings) -> ssl.SSLContext:
    if not grant.verify_tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    cafile = str(settings.imap_ca_file) if settings.imap_ca_file else None
    return ssl.create_default_context(cafile=cafile)


class _PinnedSmtp(smtplib.SMTP):
    """smtplib's client, connecting to an address checked by pipeline.netguard (no second
    lookup); STARTTLS verifies the certificate for the host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self._address = address
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._address, port), timeout, self.source_address)


class _PinnedSmtpSsl(smtplib.SMTP_SSL):
    """Implicit TLS to a checked address; SNI and the certificate check use the host name."""

    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        self._address = address
        self._hostname = host  # set before super() connects
        super().__init__(host, port, timeout=timeout, context=context)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((self._address, port), timeout, self.source_address)
        wrapped: socket.socket = self.context.wrap_socket(sock, server_hostname=self._hostname)
        return wrapped


def smtp_send(grant: Grant, settings: Settings, msg: EmailMessage, recipients: list[str]) -> None:
    """Hand the message to the grant's SMTP server.

    Raises:
        ApiError: 400 when no SMTP server is configured, the login or a recipient is refused;
            504 when the server cannot be reached or fails mid-way.
    """
    if not grant.smtp_host or not grant.smtp_port:
        raise invalid_request(
            "This grant has no SMTP server: set settings.smtp_host and smtp_port "
            "(PATCH /v3/grants/{id})."
        )
    secrets = grant_secrets(grant, settings)
    password = secrets.get("smtp_password") or secrets["imap_password"]
    username = grant.smtp_username or grant.imap_username
    where = f"{grant.smtp_host}:{grant.smtp_port}"
    ctx = _smtp_context(grant, settings)
    # Only an explicit opt-in stores "plain" (GrantRequest.resolve); any other value means TLS.
    tls = grant.smtp_tls if grant.smtp_tls in ("ssl", "plain") else "starttls"
    try:
        address = str(
            checked_address(
                grant.smtp_host, grant.smtp_port, settings.mail_address_policy, SMTP_UNREACHABLE
            )
        )
    except ImapConnectError as exc:
        raise invalid_request(str(exc)) from exc
    try:
        server: smtplib.SMTP
        if tls == "ssl":
            server = _PinnedSmtpSsl(
                grant.smtp_host, grant.smtp_port, address, SMTP_TIMEOUT_S, context=ctx
            )
        else:
            server = _PinnedSmtp(grant.smtp_host, grant.smtp_port, address, SMTP_TIMEOUT_S)
        with server:
            server.ehlo()
            if tls == "starttls":
                if not server.has_extn("starttls"):
                    raise ApiError(
                        504,
                        "provider_error",
                        f"The SMTP server {where} does not offer STARTTLS, and the password is "
                        "not sent in the clear. Give the server's TLS port (settings.smtp_port, "
                        "smtp_tls), or plaintext explicitly for a trusted network.",
                    )
                server.starttls(context=ctx)
                server.ehlo()
            if server.has_extn("auth"):
                server.login(username, password)
            server.send_message(msg, from_addr=grant.email, to_addrs=recipients)
    except smtplib.SMTPAuthenticationError as exc:
        raise ApiError(
            401,
            "unauthorized",
            f"{where} refused the SMTP login for {username!r} ({exc.smtp_code}). Check the "
            "SMTP username and password (many providers need an app password).",
        ) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        refused = ", ".join(sorted(exc.recipients))
        raise invalid_request(f"{where} refused the recipient(s) {refused}.") from exc
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        error = exc.smtp_error
        detail = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        raise invalid_request(f"{where} refused the message ({exc.smtp_code} {detail}).") from exc
    except ssl.SSLError as exc:
        raise ApiError(
            504, "provider_error", f"TLS with the SMTP server {where} failed ({exc.reason})."
        ) from exc
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise ApiError(
            504,
            "provider_error",
            f"The SMTP server {where} could not take the message ({type(exc).__name__}).",
        ) from exc


def _files_from_json(req: SendRequest) -> list[tuple[OutgoingAttachment, bytes]]:
    files = []
    for att in req.attachments:
        try:
            content = base64.b64decode(att.content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid_request(f"Attachment {att.filename!r}: content must be base64.") from exc
        files.append((att, content))
    return files


def _store_sent(
    db: Session, api: ApiState, grant: Grant, msg: EmailMessage, raw: bytes
) -> str | None:
    """Append to Sent and store the copy; returns the stored message's id (None if not)."""
    sent = queries.folder_by_role(db, grant.id, "sent")
    if sent is None or preset(grant.provider).stores_sent_mail:
        return None
    message_id = str(msg["Message-ID"])
    try:
        with writeback.grant_imap(db, api, grant, ops=4) as imap:
            imap.append(sent.raw_name, raw, flags=["\\Seen"], when=datetime.now(UTC))
            info = imap.select(sent.raw_name, readonly=True)
            uids = imap.search_uids("HEADER", "Message-ID", f'"{message_id}"')
            fetched = list(imap.fetch_messages(uids[-1:])) if uids else []
    except (ImapError, ApiError) as exc:
        # The mail went out; only the Sent copy is missing. The answer still succeeds.
        log.warning(
            "sent, but not filed in Sent: %s", type(exc).__name__, extra={"grant_id": grant.id}
        )
        return None
    items, failures = parse_batch(fetched)
    result = write_batch(
        db,
        grant_id=grant.id,
        folder_id=sent.id,
        uidvalidity=info.uidvalidity,
        items=items,
        failures=failures,
    )
    ids = result.new_message_ids or result.existing_message_ids
    events.messages(db, grant.id, "message.created", result.new_message_ids)
    return ids[0] if ids else None


BASIC_HEADER_NAMES = ("Message-ID", "In-Reply-To", "References")  # include_basic_headers


def _sent_headers(msg: EmailMessage, fields: str) -> list[dict[str, str]]:
    """The ``headers`` of a composed message: all of them for ``include_headers``, the
    threading ones otherwise (``include_basic_headers``, and the default answer)."""
    names = None if fields == "include_headers" else BASIC_HEADER_NAMES
    return [
        {"name": name, "value": str(value)}
        for name, value in msg.items()
        if names is None or name in names
    ]


def _composed_view(
    grant: Grant, req: SendRequest, msg: EmailMessage, fields: str = "standard"
) -> dict[str, Any]:
    """The answer when no stored copy exists (the provider files sent mail itself)."""

    def people(rs: list[Recipient]) -> list[dict[str, str]]:
        return [{"name": r.name or "", "email": r.email} for r in rs]

    return {
        "id": None,
        "grant_id": grant.id,
        "object": "message",
        "subject": req.subject,
        "from": [{"name": req.from_[0].name or "" if req.from_ else "", "email": grant.email}],
        "to": people(req.to),
        "cc": people(req.cc),
        "bcc": people(req.bcc),
        "reply_to": people(req.reply_to),
        "body": req.body,
        "date": int(datetime.now(UTC).timestamp()),
        "headers": _sent_headers(msg, fields),
        "folders": [],
        "attachments": [],
        "unread": False,
        "starred": False,
    }


def send_now(
    db: Session,
    api: ApiState,
    grant: Grant,
    req: SendRequest,
    files: list[tuple[OutgoingAttachment, bytes]],
    fields: str = "standard",
) -> dict[str, Any]:
    """Compose, send over SMTP, file in Sent; the API view of the sent message (``fields``:
    ``include_headers`` / ``include_basic_headers`` add its headers, as on a read)."""
    msg = compose(db, grant, req, files)
    recipients = [r.email for r in req.to + req.cc + req.bcc]
    # SMTP logins count against the account's login budget, as its IMAP logins do
    take_login(api, grant.provider, grant.imap_host, grant.id, "SMTP logins")
    smtp_send(grant, api.settings, msg, recipients)
    log.info("message sent", extra={"grant_id": grant.id, "recipients": len(recipients)})
    stored_id = _store_sent(db, api, grant, msg, msg.as_bytes())
    db.commit()
    notify_after_commit(api)
    if stored_id is None:
        return _composed_view(grant, req, msg, fields)
    message = queries.get_message(db, grant.id, stored_id)
    assert message is not None
    (view,) = message_views(
        db,
        [message],
        include_headers=fields == "include_headers",
        include_basic_headers=fields == "include_basic_headers",
        selected=None,
    )
    return view


async def _from_form(form: FormData) -> tuple[SendRequest, list[tuple[OutgoingAttachment, bytes]]]:
    """A multipart send: the JSON in ``message`` (a field or, as the SDK sends it, a file part
    without a name), every other file part an attachment named by its field."""
    raw = form.get("message")
    if isinstance(raw, UploadFile):
        raw = (await raw.read()).decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise invalid_request("A multipart send needs a `message` part with the JSON.")
    req = SendRequest.model_validate(json.loads(raw))
    files = []
    for key, value in form.multi_items():
        if key == "message" or not isinstance(value, UploadFile):
            continue
        files.append(
            (
                OutgoingAttachment(
                    filename=value.filename or key,
                    content_type=value.content_type or "application/octet-stream",
                    content="",
                    content_id=None if re.fullmatch(r"file\d+", key) else key,
                ),
                await value.read(),
            )
        )
    if len(files) > MAX_ATTACHMENTS:
        raise invalid_request(f"At most {MAX_ATTACHMENTS} attachments per message.")
    return req, files


async def _parse(request: Request) -> tuple[SendRequest, list[tuple[OutgoingAttachment, bytes]]]:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=MAX_ATTACHMENTS + 1, max_fields=MAX_ATTACHMENTS)
            try:
                return await _from_form(form)
            finally:
                await form.close()  # spooled uploads are temporary files
        req = SendRequest.model_validate(json.loads(await request.body()))
        return req, _files_from_json(req)
    except json.JSONDecodeError as exc:
        raise invalid_request("The request body is not valid JSON.") from exc
    except RecursionError as exc:  # json.loads of thousands of nested brackets
        raise invalid_request("The request body is nested too deeply.") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise invalid_request(f"Invalid request: {where}: {first['msg']}.") from exc


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
)
async def send_message(
    request: Request, db: Db, api: State, grant: LiveGrant, fields: Fields = "standard"
) -> dict[str, Any]:
    """Send over SMTP, then file a copy in Sent; answers with the sent message."""
    req, files = await _parse(request)
    view = await run_in_threadpool(send_now, db, api, grant, req, files, fields)
    return ok(request, view)
