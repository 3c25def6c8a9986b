"""Composing a send: the request's typed shape (:class:`SendRequest`, the JSON of the Nylas v3
send and of a draft), the MIME message made of it (From is the grant's address; replies get
In-Reply-To and References from the message replied to, named by its id or its Message-ID), and
what the outbox keeps of it (:class:`Outgoing`: the bytes on the wire, the envelope, the answer's
fields when no stored copy exists, the digest an Idempotency-Key compares).

A raw MIME send (:func:`prepare_mime`) is sent as given, but for its ``Bcc`` header. Nothing
here does I/O but reading the message replied to; the send route and a draft's send
(:mod:`pipeline.drafts.service`) call it, then :mod:`pipeline.outbound.submit` writes the
outbox row (:func:`outbox_row`) that a worker sends (:mod:`pipeline.outbound.deliver`).

Errors: :class:`~pipeline.errors.InvalidRequest` for what cannot be sent as asked (its message
says why), :class:`~pipeline.errors.NotFound` for an unknown reply target.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import hashlib
import html
import json
import re
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, getaddresses, make_msgid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from pipeline.errors import InvalidRequest, NotFound
from pipeline.messages import metadata
from pipeline.messages.repository import MessageRepository
from pipeline.models import Grant, Message
from pipeline.outbound.outbox import MAX_SCHEDULE_AHEAD_S, NewSend

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
    # the engine's id, or (as Nylas documents for IMAP) the RFC 822 Message-ID
    reply_to_message_id: str | None = Field(default=None, max_length=998)
    custom_headers: list[CustomHeader] = Field(default_factory=list)
    starred: bool | None = None
    send_at: int | None = None
    use_draft: bool = False  # Nylas: keep a scheduled send in the Drafts folder meanwhile
    tracking_options: dict[str, Any] | None = None  # accepted, not supported (ignored)
    metadata: dict[str, Any] | None = None  # kept on the stored Sent copy (Postgres only)

    _subject_one_line = field_validator("subject", "reply_to_message_id")(one_line)


def _text_of(body_html: str) -> str:
    return html.unescape(_TAGS.sub("", _BREAKS.sub("\n", body_html))).strip()


def _split_type(content_type: str) -> tuple[str, str]:
    main, _, sub = content_type.strip().lower().partition("/")
    if not main or not sub or not re.fullmatch(r"[a-z0-9.+-]+", main + sub):
        return "application", "octet-stream"
    return main, sub


def reply_parent(db: Session, grant_id: str, ref: str) -> Message | None:
    """The message replied to: by the engine's id, or by its Message-ID header (with or
    without the angle brackets), as Nylas documents ``reply_to_message_id`` for IMAP."""
    messages = MessageRepository(db)
    found = messages.get(grant_id, ref)
    if found is not None:
        return found
    bare = ref.strip().strip("<>")
    if not bare:
        return None
    return messages.latest_with_header(grant_id, f"<{bare}>")


def compose(
    db: Session,
    grant: Grant,
    req: SendRequest,
    files: list[tuple[OutgoingAttachment, bytes]],
    message_id: str | None = None,
) -> EmailMessage:
    """The MIME message of a send request (``message_id``: its Message-ID, e.g. a scheduled
    draft's own, by which the worker finds it in Drafts; else a new one).

    Raises:
        InvalidRequest: The request cannot be sent as it is.
        NotFound: ``reply_to_message_id`` names no message of the grant.
    """
    if req.send_at is not None and req.send_at > time.time() + MAX_SCHEDULE_AHEAD_S:
        raise InvalidRequest("send_at must be at most 30 days ahead.")
    recipients = req.to + req.cc + req.bcc
    if not recipients:
        raise InvalidRequest("A message needs at least one recipient in to, cc or bcc.")
    if len(recipients) > MAX_RECIPIENTS:
        raise InvalidRequest(f"At most {MAX_RECIPIENTS} recipients per message.")
    if req.from_ and req.from_[0].email.lower() != grant.email.lower():
        raise InvalidRequest(f"This grant sends as {grant.email}; `from` cannot differ.")
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
    msg["Message-ID"] = message_id or make_msgid(
        domain=grant.email.rpartition("@")[2] or "localhost"
    )
    if req.reply_to_message_id:
        parent = reply_parent(db, grant.id, req.reply_to_message_id)
        if parent is None:
            raise NotFound(f"No message {req.reply_to_message_id!r} to reply to.")
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


class Outgoing(BaseModel):
    """A composed send, ready for the outbox."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    raw: bytes  # as the recipients get it: no Bcc header
    message_id: str
    recipients: list[str]
    bcc: list[dict[str, str]]
    view: dict[str, Any]  # the answer's fields when no stored copy exists
    send_at: int | None = None
    use_draft: bool = False
    digest: str  # what makes two requests "the same" for an Idempotency-Key


def _wire(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=email.policy.SMTP)  # CRLF line ends, as SMTP DATA wants


def prepare(
    db: Session,
    grant: Grant,
    req: SendRequest,
    files: list[tuple[OutgoingAttachment, bytes]],
    fields: str = "standard",
    message_id: str | None = None,
) -> Outgoing:
    """Compose a JSON/multipart send (``message_id``: see :func:`compose`).

    Raises:
        InvalidRequest: The request cannot be sent as it is.
        NotFound: ``reply_to_message_id`` names no message of the grant.
    """
    msg = compose(db, grant, req, files, message_id)
    digest = hashlib.sha256(
        json.dumps(req.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
    )
    for att, content in files:
        digest.update(att.model_dump_json(exclude={"content"}).encode())
        digest.update(hashlib.sha256(content).digest())
    view = _composed_view(grant, req, msg, fields)
    if req.metadata is not None:
        # carried in the outbox row's answer fields; the worker stores it on the Sent copy
        try:
            view["metadata"] = metadata.validated(req.metadata)
        except metadata.MetadataError as exc:
            raise InvalidRequest(str(exc)) from exc
    return Outgoing(
        raw=_wire(msg),
        message_id=str(msg["Message-ID"]),
        recipients=[r.email for r in req.to + req.cc + req.bcc],
        bcc=[{"name": r.name or "", "email": r.email} for r in req.bcc],
        view=view,
        send_at=req.send_at,
        use_draft=req.use_draft,
        digest=digest.hexdigest(),
    )


def prepare_mime(grant: Grant, raw: bytes, fields: str = "standard") -> Outgoing:
    """A raw MIME send (``send_raw_mime``): sent as given, but for a ``Bcc`` header, which is
    taken off the recipients' copy (and kept on the Sent copy); Message-ID and Date are added
    when missing. The envelope is To + Cc + Bcc.

    Raises:
        InvalidRequest: No recipients, or a From other than the grant's address.
    """
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)

    def people(name: str) -> list[dict[str, str]]:
        values = [str(v) for v in parsed.get_all(name, [])]
        return [{"name": n, "email": a} for n, a in getaddresses(values) if "@" in a]

    senders = people("From")
    if senders and senders[0]["email"].lower() != grant.email.lower():
        raise InvalidRequest(f"This grant sends as {grant.email}; the MIME's From cannot differ.")
    if not senders:
        parsed["From"] = grant.email
    to, cc, bcc = people("To"), people("Cc"), people("Bcc")
    recipients = [p["email"] for p in to + cc + bcc]
    if not recipients:
        raise InvalidRequest("The MIME message needs at least one recipient in To, Cc or Bcc.")
    if len(recipients) > MAX_RECIPIENTS:
        raise InvalidRequest(f"At most {MAX_RECIPIENTS} recipients per message.")
    del parsed["Bcc"]
    if parsed["Message-ID"] is None:
        parsed["Message-ID"] = make_msgid(domain=grant.email.rpartition("@")[2] or "localhost")
    if parsed["Date"] is None:
        parsed["Date"] = format_datetime(datetime.now(UTC))
    body_part = parsed.get_body(("html", "plain"))
    body = ""
    if body_part is not None:
        try:
            body = str(body_part.get_content())
        except (LookupError, ValueError):
            body = ""
    view = {
        "id": None,
        "grant_id": grant.id,
        "object": "message",
        "subject": str(parsed["Subject"] or ""),
        "from": [{"name": senders[0]["name"] if senders else "", "email": grant.email}],
        "to": to,
        "cc": cc,
        "bcc": bcc,
        "reply_to": people("Reply-To"),
        "body": body,
        "date": int(datetime.now(UTC).timestamp()),
        "headers": _sent_headers(parsed, fields),
        "folders": [],
        "attachments": [],
        "unread": False,
        "starred": False,
    }
    return Outgoing(
        raw=_wire(parsed),
        message_id=str(parsed["Message-ID"]),
        recipients=recipients,
        bcc=bcc,
        view=view,
        digest=hashlib.sha256(b"mime\0" + raw).hexdigest(),
    )


def files_from_json(req: SendRequest) -> list[tuple[OutgoingAttachment, bytes]]:
    files = []
    for att in req.attachments:
        try:
            content = base64.b64decode(att.content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"Attachment {att.filename!r}: content must be base64.") from exc
        files.append((att, content))
    return files


def outbox_row(grant: Grant, out: Outgoing, key: str | None, *, use_draft: bool) -> NewSend:
    """The outbox row of a send composed as ``out`` (``key``: its idempotency key)."""
    return NewSend(
        grant_id=grant.id,
        idempotency_key=key,
        request_hash=out.digest,
        send_at=datetime.fromtimestamp(out.send_at, UTC) if out.send_at is not None else None,
        use_draft=use_draft,
        mail_from=grant.email,
        recipients=out.recipients,
        bcc=out.bcc,
        message_id_header=out.message_id,
        raw=out.raw,
        request=out.view,
    )
