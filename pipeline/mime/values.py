"""The typed values :func:`pipeline.mime.parse_message` returns.

:class:`ParsedMessage`, with its :class:`Participant` and :class:`AttachmentInfo` values; and
``_Part``, the compat32 message type the rest of the package walks (raw ``str`` header values).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from typing import TypeAlias

_Part: TypeAlias = "Message[str, str]"  # compat32 messages: raw str header values


@dataclass(frozen=True, slots=True)
class Participant:
    """One mailbox from an address header.

    Attributes:
        name: Decoded display name, ``""`` when there is none.
        email: The addr-spec as written (stripped), ``""`` when missing (e.g. ``<>``).
    """

    name: str
    email: str

    def as_dict(self) -> dict[str, str]:
        """Return the Nylas v3 shape ``{"name": ..., "email": ...}``."""
        return {"name": self.name, "email": self.email}


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """Metadata of one non-body MIME part.

    Attributes:
        filename: RFC 2231 / RFC 2047 decoded file name without directory components;
            None when the part has none.
        content_type: Lower-case ``type/subtype``.
        size: Size in bytes after transfer decoding. For ``message/*`` parts this is the
            size of the re-serialized enclosed message (CRLF line ends), which can differ
            from the original by folding whitespace.
        content_id: Content-ID without the angle brackets, or None.
        is_inline: True for ``Content-Disposition: inline`` parts, and for parts without a
            disposition that carry a Content-ID (images referenced from HTML by ``cid:``).
        part_path: IMAP ``BODY[<section>]`` number of the part (RFC 3501), e.g. ``"2"`` or
            ``"1.2"``; ``"1"`` for a single-part message.
        content_disposition: ``"attachment"``, ``"inline"`` or None.
    """

    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    is_inline: bool
    part_path: str
    content_disposition: str | None


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """A message normalized for storage and the Nylas v3 API.

    Attributes:
        message_id: Message-ID with its angle brackets (``"<abc@x>"``), None if absent.
        in_reply_to: First message id of In-Reply-To, or None.
        references: Every ``<...>`` id of the References header(s), in order, no repeats.
        subject: Decoded subject (``""`` when missing).
        from_: Participants of From.
        to: Participants of To.
        cc: Participants of Cc.
        bcc: Participants of Bcc.
        reply_to: Participants of Reply-To.
        date: The Date header as an aware UTC datetime; None if missing or unparseable.
        snippet: First 100 characters of the text content, whitespace collapsed.
        body: The HTML body when there is one, else the plain text.
        body_is_html: Whether ``body`` is HTML.
        attachments: Non-body parts in MIME order.
        headers: Every top-level header as ``(name, decoded value)``, in order.
        identity_key: Folder- and UIDVALIDITY-independent identity (see
            :func:`identity_key_from_headers`).
        header_hash: Hex SHA-256 of the canonical identity headers.
        defects: Names of parser defects and fallbacks, for diagnostics.
    """

    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    from_: tuple[Participant, ...]
    to: tuple[Participant, ...]
    cc: tuple[Participant, ...]
    bcc: tuple[Participant, ...]
    reply_to: tuple[Participant, ...]
    date: datetime | None
    snippet: str
    body: str
    body_is_html: bool
    attachments: tuple[AttachmentInfo, ...]
    headers: tuple[tuple[str, str], ...]
    identity_key: str
    header_hash: str
    defects: tuple[str, ...]
