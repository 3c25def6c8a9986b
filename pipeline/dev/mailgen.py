"""Realistic, reproducible mailboxes for the demo, tests and benchmarks.

:func:`generate` yields messages in the order they arrived (oldest first); the same ``seed``
and ``now`` always give the same bytes. The mix:

- bodies: plain text, HTML only, multipart/alternative, and multipart/mixed with one or two
  binary attachments (PDF-, PNG- and JPEG-like, sizes spread log-uniformly over
  ``attachment_sizes``) in exactly ``attachment_fraction`` of the messages;
- threads: replies with ``In-Reply-To``/``References`` and ``Re:`` subjects;
- languages: English, German, French, Russian and Japanese, with subjects and names RFC 2047
  encoded in utf-8, iso-8859-1, koi8-r and iso-2022-jp, and bodies in those charsets with
  quoted-printable, base64, 8bit or 7bit transfer encodings;
- flags: most older mail ``\\Seen``, some ``\\Flagged`` and ``\\Answered``, drafts ``\\Draft``;
- about 3 % without a Message-ID; exactly ``old_fraction`` older than ``retention_days``.

The people, subjects and sentences come from :mod:`pipeline.dev.mailgen_locales`; the
messages go into a server through :mod:`pipeline.dev.seed`.
"""

from __future__ import annotations

import base64
import math
import random
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.charset import BASE64, QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import compat32
from email.utils import format_datetime, formataddr
from typing import cast

from pipeline.dev.mailgen_locales import (
    DOMAINS,
    LOCALES,
    SPAM_DOMAINS,
    SPAM_SUBJECTS,
    ZONES,
    Locale,
)

__all__ = [
    "DEFAULT_FOLDERS",
    "GeneratedMessage",
    "generate",
]

DEFAULT_FOLDERS: Mapping[str, float] = {
    "INBOX": 0.52,
    "Sent": 0.15,
    "Archive": 0.12,
    "Reçus": 0.07,
    "Junk": 0.06,
    "Entwürfe/Privat": 0.05,
    "Drafts": 0.03,
}
DEFAULT_RETENTION_DAYS = 90
OLD_SPAN_DAYS = 3 * 365  # old mail is spread over the three years before the window
RECENT_MARGIN_S = 6 * 3600  # keep "recent" and "old" mail clear of the window's edges
MISSING_MESSAGE_ID_RATE = 0.03
REPLY_RATE = 0.3
THREAD_POOL_SIZE = 40  # replies pick a parent among the last this many messages
SECOND_ATTACHMENT_RATE = 0.15
FLAGGED_RATE = 0.05
# body kinds of messages without attachments, and their weights
BODY_KINDS: Mapping[str, float] = {"plain": 0.4, "html": 0.15, "alternative": 0.45}
_KIND_NAMES, _KIND_WEIGHTS = list(BODY_KINDS), list(BODY_KINDS.values())
_WIRE = compat32.clone(linesep="\r\n")


@dataclass(frozen=True)
class GeneratedMessage:
    """One generated message and where it goes.

    Attributes:
        folder: Folder name as clients see it (UTF-8, ``/`` between levels).
        internaldate: When the server received it (aware, UTC, whole seconds).
        flags: IMAP system flags, e.g. ``("\\\\Seen",)``.
        raw: The RFC 5322 message, CRLF line endings.
        message_id: Its Message-ID header, or None when it has none.
        kind: ``plain``, ``html``, ``alternative`` or ``mixed`` (has attachments).
    """

    folder: str
    internaldate: datetime
    flags: tuple[str, ...]
    raw: bytes
    message_id: str | None = None
    kind: str = "plain"


@dataclass
class _Sent:
    message_id: str
    subject: str
    references: tuple[str, ...]
    locale: Locale
    contact: tuple[str, str]
    internaldate: datetime


def generate(
    count: int,
    *,
    seed: int,
    now: datetime,
    old_fraction: float = 0.1,
    attachment_fraction: float = 0.1,
    attachment_sizes: tuple[int, int] = (100_000, 5_000_000),
    folders: Mapping[str, float] = DEFAULT_FOLDERS,
    owner: str = "demo@localhost",
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> Iterator[GeneratedMessage]:
    """Yield ``count`` realistic messages, oldest first; the same arguments give the same bytes.

    Args:
        count: How many messages.
        seed: Seed of the random choices.
        now: The moment "now" (timezone-aware); every INTERNALDATE is before it.
        old_fraction: Share of messages older than ``retention_days`` (exact, rounded).
        attachment_fraction: Share of messages with attachments (exact, rounded).
        attachment_sizes: Smallest and largest attachment, in bytes before encoding.
        folders: Folder names and their weights.
        owner: The mailbox owner's address (sender of Sent and Drafts, recipient of the rest).
        retention_days: The sync window the old messages fall outside of.

    Raises:
        ValueError: an argument is out of range.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if count < 0 or not 0 <= old_fraction <= 1 or not 0 <= attachment_fraction <= 1:
        raise ValueError("count >= 0 and fractions within [0, 1] please")
    low, high = attachment_sizes
    if not 0 < low <= high:
        raise ValueError("attachment_sizes must be (smallest, largest) with 0 < smallest")
    if not folders or any(w < 0 for w in folders.values()) or sum(folders.values()) <= 0:
        raise ValueError("folders needs at least one positive weight")
    rng = random.Random(seed)
    builder = _Builder(rng, owner)
    names, weights = list(folders), list(folders.values())
    for internaldate, with_attachments in _timeline(
        rng, count, now, old_fraction, attachment_fraction, retention_days
    ):
        folder = rng.choices(names, weights)[0]
        yield builder.message(folder, internaldate, with_attachments, (low, high), now)


def _timeline(
    rng: random.Random,
    count: int,
    now: datetime,
    old_fraction: float,
    attachment_fraction: float,
    retention_days: int,
) -> list[tuple[datetime, bool]]:
    now_s = math.floor(now.timestamp())
    window_s = retention_days * 86400
    old_count = round(count * old_fraction)
    recent = [
        rng.uniform(now_s - window_s + RECENT_MARGIN_S, now_s - 60)
        for _ in range(count - old_count)
    ]
    old = [
        rng.uniform(now_s - window_s - OLD_SPAN_DAYS * 86400, now_s - window_s - RECENT_MARGIN_S)
        for _ in range(old_count)
    ]
    stamps = sorted(math.floor(t) for t in recent + old)
    with_attachments = set(rng.sample(range(count), round(count * attachment_fraction)))
    return [(datetime.fromtimestamp(t, UTC), i in with_attachments) for i, t in enumerate(stamps)]


class _Builder:
    """Builds one message at a time, remembering recent ones to reply to."""

    def __init__(self, rng: random.Random, owner: str) -> None:
        self.rng = rng
        self.owner = owner
        self.owner_name = owner.partition("@")[0].replace(".", " ").title()
        self.pool: list[_Sent] = []
        self.counter = 0
        # attachments are serialized as placeholders and spliced in afterwards: the email
        # package's generator re-splits every line of a payload, far too slowly for megabytes
        self.spliced: dict[bytes, bytes] = {}

    def message(
        self,
        folder: str,
        internaldate: datetime,
        with_attachments: bool,
        sizes: tuple[int, int],
        now: datetime,
    ) -> GeneratedMessage:
        rng = self.rng
        self.counter += 1
        role = _folder_role(folder)
        parent = self._parent(role)
        locale = parent.locale if parent else self._locale(folder)
        contact = parent.contact if parent else self._contact(locale, role)
        subject = self._subject(locale, role, parent)
        outgoing = role in ("sent", "drafts")

        body_text = self._body(locale, contact[0] if outgoing else self.owner_name)
        kind = "mixed" if with_attachments else rng.choices(_KIND_NAMES, _KIND_WEIGHTS)[0]
        msg = self._body_part(kind, body_text, locale, sizes)

        sender = (self.owner_name, self.owner) if outgoing else contact
        recipient = contact if outgoing else (self.owner_name, self.owner)
        msg["From"] = _address(sender, locale)
        msg["To"] = _address(recipient, locale)
        if rng.random() < 0.15:
            cc = self._contact(locale, "inbox")
            msg["Cc"] = _address(cc, locale)
        msg["Subject"] = cast("str", _header(subject, locale))  # compat32 keeps a Header as is
        sent_at = internaldate - timedelta(seconds=rng.randint(2, 900))
        msg["Date"] = format_datetime(sent_at.astimezone(rng.choice(ZONES)))

        message_id: str | None = None
        if role == "drafts" or rng.random() >= MISSING_MESSAGE_ID_RATE:
            domain = self.owner.partition("@")[2] if outgoing else contact[1].partition("@")[2]
            message_id = f"<{rng.getrandbits(64):016x}.{self.counter}@{domain or 'localhost'}>"
            msg["Message-ID"] = message_id
        if parent is not None:
            references = (*parent.references, parent.message_id)[-10:]
            msg["In-Reply-To"] = parent.message_id
            msg["References"] = " ".join(references)
        else:
            references = ()
        if role == "junk":
            msg["X-Spam-Flag"] = "YES"
        _reorder_headers(msg)

        if message_id is not None and role not in ("junk", "drafts"):
            self.pool.append(_Sent(message_id, subject, references, locale, contact, internaldate))
            del self.pool[:-THREAD_POOL_SIZE]
        flags = self._flags(role, internaldate, now, parent is not None)
        raw = msg.as_bytes(policy=_WIRE)
        for placeholder, encoded in self.spliced.items():
            raw = raw.replace(placeholder, encoded, 1)
        self.spliced.clear()
        return GeneratedMessage(
            folder=folder,
            internaldate=internaldate,
            flags=flags,
            raw=raw,
            message_id=message_id,
            kind=kind,
        )

    # --- choices ------------------------------------------------------------------------------

    def _parent(self, role: str) -> _Sent | None:
        if role in ("junk", "drafts") or not self.pool or self.rng.random() >= REPLY_RATE:
            return None
        return self.rng.choice(self.pool)

    def _locale(self, folder: str) -> Locale:
        if folder == "Reçus":
            return LOCALES[2]
        return self.rng.choices(LOCALES, [loc.weight for loc in LOCALES])[0]

    def _contact(self, locale: Locale, role: str) -> tuple[str, str]:
        rng = self.rng
        if role == "junk":
            word = rng.choice(("promo", "winner", "support", "noreply", "offers"))
            return (word.title() + " Team", f"{word}@{rng.choice(SPAM_DOMAINS)}")
        first, last = rng.choice(locale.first_names), rng.choice(locale.last_names)
        local = f"user{rng.randint(1, 999)}" if not first.isascii() else first.lower()
        name = f"{last}{first}" if locale.charset == "iso-2022-jp" else f"{first} {last}"
        return (name, f"{local}.{rng.randint(1, 99)}@{rng.choice(DOMAINS)}")

    def _subject(self, locale: Locale, role: str, parent: _Sent | None) -> str:
        if parent is not None:
            prefix = locale.reply_prefix
            return parent.subject if parent.subject.startswith(prefix) else prefix + parent.subject
        if role == "junk":
            return self.rng.choice(SPAM_SUBJECTS)
        return self.rng.choice(locale.subjects).format(n=self.rng.randint(1000, 99999))

    def _body(self, locale: Locale, name: str) -> str:
        rng = self.rng
        paragraphs = [
            " ".join(rng.sample(locale.sentences, rng.randint(1, 4)))
            for _ in range(rng.randint(1, 4))
        ]
        greeting = locale.greeting.format(name=name.split()[0] if name else "")
        return "\n\n".join([greeting, *paragraphs, locale.closing]) + "\n"

    def _flags(
        self, role: str, internaldate: datetime, now: datetime, reply: bool
    ) -> tuple[str, ...]:
        rng = self.rng
        flags: set[str] = set()
        age_days = (now - internaldate).total_seconds() / 86400
        if role == "drafts":
            flags.add("\\Draft")
        elif role == "sent" or rng.random() < min(0.97, 0.45 + age_days / 60):
            flags.add("\\Seen")
        if role not in ("junk", "drafts") and rng.random() < FLAGGED_RATE:
            flags.add("\\Flagged")
        if role not in ("sent", "junk", "drafts") and "\\Seen" in flags and rng.random() < 0.12:
            flags.add("\\Answered")
        if reply and role == "sent":
            flags.add("\\Answered")
        return tuple(sorted(flags))

    # --- MIME ---------------------------------------------------------------------------------

    def _body_part(self, kind: str, text: str, locale: Locale, sizes: tuple[int, int]) -> Message:
        if kind == "plain":
            return self._text(text, "plain", locale, top=True)
        if kind == "html":
            return self._text(_html(text, locale), "html", locale, top=True)
        alternative = self._multipart("alternative", top=kind == "alternative")
        alternative.attach(self._text(text, "plain", locale))
        alternative.attach(self._text(_html(text, locale), "html", locale))
        if kind == "alternative":
            return alternative
        mixed = self._multipart("mixed", top=True)
        mixed.attach(alternative if self.rng.random() < 0.6 else self._text(text, "plain", locale))
        for _ in range(2 if self.rng.random() < SECOND_ATTACHMENT_RATE else 1):
            mixed.attach(self._attachment(sizes, locale))
        return mixed

    def _multipart(self, subtype: str, *, top: bool) -> MIMEMultipart:
        part = MIMEMultipart(subtype, boundary=f"=_{self.rng.getrandbits(96):024x}")
        if not top:
            del part["MIME-Version"]
        return part

    def _text(self, text: str, subtype: str, locale: Locale, *, top: bool = False) -> Message:
        charset = Charset(_body_charset(locale))
        encoding = self.rng.choice(_TRANSFER_ENCODINGS[locale.charset])
        charset.body_encoding = encoding  # type: ignore[assignment]  # None (8bit) is valid
        part = MIMENonMultipart("text", subtype)
        part.set_payload(text, charset)
        if locale.charset == "us-ascii":
            part.set_param("charset", "us-ascii")
        if not top:
            del part["MIME-Version"]
        return part

    def _attachment(self, sizes: tuple[int, int], locale: Locale) -> Message:
        rng = self.rng
        low, high = sizes
        size = round(math.exp(rng.uniform(math.log(low), math.log(high))))
        maintype, subtype, ext, data = rng.choice(_FILE_KINDS)(rng, size)
        stem = rng.choice(("report", "scan", "photo", "invoice", "contract", "slides"))
        if locale.charset == "utf-8" and rng.random() < 0.5:
            stem = "Übersicht-" + stem
        part = MIMENonMultipart(maintype, subtype)
        del part["MIME-Version"]
        placeholder = f"@@attachment-{self.counter}-{len(self.spliced)}@@"
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n").removesuffix(b"\r\n")
        self.spliced[placeholder.encode("ascii")] = encoded
        part.set_payload(placeholder)
        part["Content-Transfer-Encoding"] = "base64"
        filename = f"{stem}-{rng.randint(1, 999)}.{ext}"
        if filename.isascii():
            part.add_header("Content-Disposition", "attachment", filename=filename)
        else:  # RFC 2231
            part.add_header("Content-Disposition", "attachment", filename=("utf-8", "", filename))
        return part


_TRANSFER_ENCODINGS: Mapping[str, tuple[int | None, ...]] = {
    "us-ascii": (None,),  # 7bit
    "utf-8": (QP, BASE64, None),  # None: 8bit
    "iso-8859-1": (QP, None),
    "koi8-r": (BASE64, None),
    "iso-2022-jp": (None,),  # 7bit escape sequences
}


def _body_charset(locale: Locale) -> str:
    return "utf-8" if locale.charset == "us-ascii" else locale.charset


def _folder_role(folder: str) -> str:
    lowered = folder.lower()
    for role in ("sent", "drafts", "junk"):
        if lowered == role:
            return role
    return "inbox"


def _header(text: str, locale: Locale) -> str | Header:
    if text.isascii():
        return text
    return Header(text, _body_charset(locale))


def _address(person: tuple[str, str], locale: Locale) -> str:
    name, address = person
    if name.isascii():
        return formataddr((name, address))
    return formataddr((name, address), charset=locale.charset)


def _reorder_headers(msg: Message) -> None:
    """Envelope headers first, MIME headers last, as mail clients write them."""
    order = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References")
    items = msg.items()
    for key, _ in items:
        del msg[key]
    rank = {name.lower(): i for i, name in enumerate(order)}
    for key, value in sorted(items, key=lambda kv: rank.get(kv[0].lower(), len(order))):
        msg[key] = value


def _html(text: str, locale: Locale) -> str:
    paragraphs = "".join(
        f'<p style="margin:0 0 12px">{_escape(p).replace(chr(10), "<br>")}</p>\n'
        for p in text.strip().split("\n\n")
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        '<body style="font-family:Arial,sans-serif;font-size:14px">\n'
        f'{paragraphs}<p><a href="https://example.com/unsubscribe">Unsubscribe</a></p>\n'
        "</body></html>\n"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _pdf(rng: random.Random, size: int) -> tuple[str, str, str, bytes]:
    head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Filter /FlateDecode >>\nstream\n"
    tail = b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    return "application", "pdf", "pdf", _fill(rng, head, tail, size)


def _png(rng: random.Random, size: int) -> tuple[str, str, str, bytes]:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0))
    end = chunk(b"IEND", b"")
    body = rng.randbytes(max(0, size - len(header) - len(end) - 12))
    return "image", "png", "png", header + chunk(b"IDAT", body) + end


def _jpeg(rng: random.Random, size: int) -> tuple[str, str, str, bytes]:
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return "image", "jpeg", "jpg", _fill(rng, head, b"\xff\xd9", size)


def _fill(rng: random.Random, head: bytes, tail: bytes, size: int) -> bytes:
    return head + rng.randbytes(max(0, size - len(head) - len(tail))) + tail


_FILE_KINDS = (_pdf, _pdf, _png, _jpeg)
