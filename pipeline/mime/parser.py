"""The entry points: :func:`parse_message` (raw bytes to a :class:`ParsedMessage`) and
:func:`extract_part` (one part's bytes, for attachment download).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from pipeline.errors import MessageParseError
from pipeline.mime.charsets import _Context, _resolve_charset
from pipeline.mime.framing import SNIFF_BYTES, _header_end, _looks_binary, _prepare, _scan_fields
from pipeline.mime.headers import (
    _ENCODED_WORD_RE,
    _addresses,
    _clean_text,
    _decode_header_value,
    _parse_date,
)
from pipeline.mime.identity import (
    _fields_hash,
    _identity_key,
    _latin1_clean,
    _message_id_from_fields,
    _message_ids,
)
from pipeline.mime.parts import (
    _children,
    _Collected,
    _is_container,
    _part_info,
    _path_key,
    _payload,
    _payload_bytes,
    _Walker,
)
from pipeline.mime.structure import _parse_bytes, _parse_structure
from pipeline.mime.text import _snippet
from pipeline.mime.values import ParsedMessage, _Part


def _checked_input(raw: bytes) -> bytes:
    data = _prepare(raw)
    if not _NOT_BLANK_RE.search(data):
        raise MessageParseError(
            "The message is empty; fetch the full message with BODY.PEEK[] and try again."
        )
    if not _scan_fields(data[: _header_end(data)]) and _looks_binary(data[:SNIFF_BYTES]):
        raise MessageParseError(
            "The data is binary and has no header field, so it is not an RFC 5322 message "
            "(an Outlook .msg or another file stored as mail?); it cannot be normalized."
        )
    return data


def _gather_hints(msg: _Part, headers: Sequence[tuple[str, str]], walker: _Walker) -> None:
    ctx = walker._ctx
    for part in msg.walk():
        if part.get_content_maintype() != "multipart":
            ctx.add_hint(_resolve_charset(walker.info(part).charset))
    for _, value in headers:
        for match in _ENCODED_WORD_RE.finditer(value):
            ctx.add_hint(_resolve_charset(match.group(1).split("*", 1)[0]))


def parse_message(raw: bytes) -> ParsedMessage:
    """Normalize one raw message.

    Everything short of "this is not a message" degrades gracefully: broken MIME,
    unknown charsets, bad dates and malformed addresses give the best value that can be
    recovered and a name in :attr:`ParsedMessage.defects`.

    Args:
        raw: The message as returned by ``BODY.PEEK[]`` (an mbox ``From `` line and a
            UTF-8 BOM in front are tolerated).

    Returns:
        The normalized message.

    Raises:
        MessageParseError: The input is empty, or binary data without any header field.
    """
    data = _checked_input(raw)
    end = _header_end(data)
    fields = _scan_fields(data[:end])
    header_hash = _fields_hash(fields)
    message_id = _message_id_from_fields(fields)
    identity_key = _identity_key(header_hash, message_id is not None, memoryview(data)[end:])

    ctx = _Context()
    msg = _parse_structure(data, ctx)
    raw_headers = [(name.strip(), value) for name, value in msg.raw_items()]
    walker = _Walker(ctx)
    _gather_hints(msg, raw_headers, walker)

    collected = _Collected()
    walker.visit(msg, "", collected)
    attachments = sorted(collected.attachments, key=lambda a: _path_key(a.part_path))
    body_is_html = collected.has_html()
    body = collected.html() if body_is_html else (collected.plain() or "")

    def values(name: str) -> list[str]:
        return [value for key, value in raw_headers if key.lower() == name]

    subjects = values("subject")
    subject = _decode_header_value(subjects[0], ctx) if subjects else ""
    date = _first_date(values("date"), ctx)
    in_reply_to, references = _thread_ids(fields)

    participants = {
        name: _addresses(values(name), ctx) for name in ("from", "to", "cc", "bcc", "reply-to")
    }
    headers = tuple(
        (_clean_text(name), _decode_header_value(value, ctx)) for name, value in raw_headers
    )
    snippet = _snippet(collected.blocks)
    # Last, so that fallbacks taken while decoding anything above are included.
    python_defects = [type(d).__name__ for part in msg.walk() for d in part.defects]
    return ParsedMessage(
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        subject=subject,
        from_=participants["from"],
        to=participants["to"],
        cc=participants["cc"],
        bcc=participants["bcc"],
        reply_to=participants["reply-to"],
        date=date,
        snippet=snippet,
        body=body,
        body_is_html=body_is_html,
        attachments=tuple(attachments),
        headers=headers,
        identity_key=identity_key,
        header_hash=header_hash,
        defects=tuple(dict.fromkeys([*python_defects, *ctx.defects])),
    )


def _first_date(values: Sequence[str], ctx: _Context) -> datetime | None:
    """The first Date value that parses; an ``InvalidDate`` defect when there were some."""
    for value in values:
        date = _parse_date(_decode_header_value(value, ctx))
        if date is not None:
            return date
    if values:
        ctx.defect("InvalidDate")
    return None


def _thread_ids(fields: Sequence[tuple[str, bytes]]) -> tuple[str | None, tuple[str, ...]]:
    """In-Reply-To's first message id, and every References id in order without repeats."""
    in_reply_to: str | None = None
    references: list[str] = []
    for field_name, field_value in fields:
        if field_name == "in-reply-to" and in_reply_to is None:
            ids = _message_ids(_latin1_clean(field_value))
            in_reply_to = ids[0] if ids else None
        elif field_name == "references":
            references.extend(
                ref for ref in _message_ids(_latin1_clean(field_value)) if ref not in references
            )
    return in_reply_to, tuple(references)


_NOT_BLANK_RE: Final = re.compile(rb"[^ \t\r\n\f\v]")
_SECTION_RE: Final = re.compile(r"[1-9][0-9]*(?:\.[1-9][0-9]*)*")


def extract_part(raw: bytes, part_path: str) -> tuple[str, bytes]:
    """Return one part of a full message, for on-demand attachment download.

    Part numbers follow RFC 3501 ``BODY[<section>]``, as in
    :attr:`AttachmentInfo.part_path`; numbers below a ``message/rfc822`` part address the
    parts of the enclosed message.

    Args:
        raw: The full message.
        part_path: IMAP section number such as ``"1"`` or ``"2.1"``.

    Returns:
        ``(content_type, content)`` with the transfer encoding undone.

    Raises:
        MessageParseError: The message cannot be parsed or has no such part.
    """
    if not _SECTION_RE.fullmatch(part_path):
        raise MessageParseError(
            f"{part_path!r} is not an IMAP section number; use digits and dots such as '2.1'."
        )
    ctx = _Context()
    node = _parse_structure(_checked_input(raw), ctx, elide=False)  # the bytes are the point
    is_message = True  # node is a message: a non-multipart message's body is part 1
    numbers = [int(number) for number in part_path.split(".")]
    for index, number in enumerate(numbers):
        if _is_container(node):
            children = _children(_payload(node))
            if number > len(children):
                raise MessageParseError(
                    f"The message has no part {part_path}: part "
                    f"{'.'.join(map(str, numbers[: index + 1]))} does not exist."
                )
            node = children[number - 1]
        elif not (is_message and number == 1):
            raise MessageParseError(
                f"The message has no part {part_path}: "
                f"{'.'.join(map(str, numbers[:index])) or 'its body'} has no sub-parts."
            )
        is_message = False
        if index < len(numbers) - 1 and node.get_content_maintype() == "message":
            enclosed = _enclosed_message(node, ctx)
            if enclosed is not None:
                node, is_message = enclosed, True
    info = _part_info(node, ctx)
    return info.content_type, _payload_bytes(node, info, ctx)


def _enclosed_message(part: _Part, ctx: _Context) -> _Part | None:
    info = _part_info(part, ctx)
    if info.cte in ("base64", "quoted-printable"):
        # Encoded message/rfc822 is forbidden by RFC 2046 but sent anyway; the parser
        # read the encoded text as a message, so decode and parse it again.
        return _parse_bytes(_payload_bytes(part, info, ctx))
    children = _children(_payload(part))
    return children[0] if children else None
