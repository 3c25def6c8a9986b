"""A draft as MIME: composed for the Drafts folder, and read back from it.

:func:`compose` writes what a draft request holds (recipients, Bcc included: a draft keeps
them, as mail clients' drafts do; subject; the body as HTML with a text alternative, or plain
text; ``X-`` headers; the threading headers of a reply; files) as one message with a stable
Message-ID. :func:`read` takes a draft from the server apart again into the same
:class:`DraftContent`, whoever wrote it (this API, Thunderbird, a webmail), so that an update
keeps what it does not change and a send sends what the draft holds.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.headerregistry import AddressHeader
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, formataddr

MAX_PARTS = 500  # MIME leaves looked at in a draft read back; a bigger one is not a draft
X_HEADER = re.compile(r"^[Xx]-[A-Za-z0-9-]{1,64}$")  # custom headers a draft carries over
_TAGS = re.compile(r"<[^>]+>")
_BREAKS = re.compile(r"(?i)<br\s*/?>|</p>|</div>|</li>")
_TYPE = re.compile(r"[a-z0-9.+-]+")


@dataclass(frozen=True)
class Person:
    """A name and an address."""

    email: str
    name: str = ""


@dataclass(frozen=True)
class DraftFile:
    """A file of a draft, with its bytes."""

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False


@dataclass
class DraftContent:
    """What a draft says, independent of its MIME form."""

    to: list[Person] = field(default_factory=list)
    cc: list[Person] = field(default_factory=list)
    bcc: list[Person] = field(default_factory=list)
    reply_to: list[Person] = field(default_factory=list)
    from_name: str = ""
    subject: str = ""
    body: str = ""
    is_plaintext: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)  # X- headers
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    files: list[DraftFile] = field(default_factory=list)


def text_of(body_html: str) -> str:
    """A plain-text rendering of an HTML body (the text alternative)."""
    return html.unescape(_TAGS.sub("", _BREAKS.sub("\n", body_html))).strip()


def _split_type(content_type: str) -> tuple[str, str]:
    main, _, sub = content_type.strip().lower().partition("/")
    if not main or not sub or not _TYPE.fullmatch(main + sub):
        return "application", "octet-stream"
    return main, sub


def _addresses(people: list[Person]) -> str:
    return ", ".join(formataddr((p.name, p.email)) for p in people)


def compose(content: DraftContent, *, sender: str, message_id: str, when: datetime) -> EmailMessage:
    """The MIME form of a draft (From is ``sender``, the grant's address)."""
    msg = EmailMessage()
    msg["From"] = formataddr((content.from_name, sender))
    for name, people in (
        ("To", content.to),
        ("Cc", content.cc),
        ("Bcc", content.bcc),
        ("Reply-To", content.reply_to),
    ):
        if people:
            msg[name] = _addresses(people)
    msg["Subject"] = content.subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = message_id
    if content.in_reply_to:
        msg["In-Reply-To"] = content.in_reply_to
    if content.references:
        msg["References"] = " ".join(content.references)
    for name, value in content.headers:
        msg[name] = value
    if content.is_plaintext:
        msg.set_content(content.body)
    else:
        msg.set_content(text_of(content.body) or " ")
        msg.add_alternative(content.body or "<p></p>", subtype="html")
    for f in content.files:
        main, sub = _split_type(f.content_type)
        msg.add_attachment(
            f.content,
            maintype=main,
            subtype=sub,
            filename=f.filename,
            cid=f"<{f.content_id}>" if f.content_id else None,
            disposition="inline" if f.inline else "attachment",
        )
    return msg


def _people(msg: Message, name: str) -> list[Person]:
    out: list[Person] = []
    for header in msg.get_all(name, []):
        if not isinstance(header, AddressHeader):
            continue
        for address in header.addresses:
            if address.addr_spec and "@" in address.addr_spec:
                out.append(Person(address.addr_spec, address.display_name or ""))
    return out


def _is_file(part: Message) -> bool:
    disposition = part.get_content_disposition()
    if disposition == "attachment" or part.get_filename():
        return True
    return part.get_content_maintype() != "text" or disposition == "inline"


def read(raw: bytes) -> DraftContent:
    """A draft from the server, taken apart (the body is the HTML part when there is one,
    else the plain-text one; every other leaf part is a file).

    Raises:
        ValueError: The draft has more than :data:`MAX_PARTS` parts.
    """
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    body_part = msg.get_body(preferencelist=("html", "plain"))
    content = DraftContent(
        to=_people(msg, "To"),
        cc=_people(msg, "Cc"),
        bcc=_people(msg, "Bcc"),
        reply_to=_people(msg, "Reply-To"),
        subject=" ".join(str(msg.get("Subject", "")).split()),
        in_reply_to=str(msg["In-Reply-To"]).strip() if msg["In-Reply-To"] else None,
        references=str(msg.get("References", "")).split(),
    )
    senders = msg.get_all("From", [])
    if senders and isinstance(senders[0], AddressHeader) and senders[0].addresses:
        content.from_name = senders[0].addresses[0].display_name or ""
    content.headers = [
        (name, " ".join(str(value).split())) for name, value in msg.items() if X_HEADER.match(name)
    ]
    if body_part is not None:
        try:
            text = body_part.get_content()
        except (LookupError, ValueError):  # a charset Python does not know, broken encoding
            payload = body_part.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        content.is_plaintext = body_part.get_content_subtype() != "html"
        content.body = text if isinstance(text, str) else ""
        if not content.is_plaintext and content.body.endswith("\n"):
            content.body = content.body[:-1]  # the line end MIME adds, not the writer's
    leaves = 0
    for part in msg.walk():
        if part.is_multipart():
            continue
        leaves += 1
        if leaves > MAX_PARTS:
            raise ValueError(f"a draft of more than {MAX_PARTS} parts")
        if part is body_part or not _is_file(part):
            continue
        if part.get_content_type() in ("text/plain", "text/html") and not part.get_filename():
            continue  # the body's other alternative
        payload = part.get_payload(decode=True)
        content_id = str(part.get("Content-ID", "")).strip().strip("<>") or None
        content.files.append(
            DraftFile(
                filename=part.get_filename() or "attachment",
                content_type=part.get_content_type(),
                content=payload if isinstance(payload, bytes) else b"",
                content_id=content_id,
                inline=part.get_content_disposition() == "inline",
            )
        )
    return content
