"""Identity: the keys that let a message keep its id across moves and UIDVALIDITY changes.

The header hash is a SHA-256 of the raw identity fields (:data:`IDENTITY_FIELDS`); the
identity key is ``"m:"`` and that hash for mail with a Message-ID, else ``"s:"`` and a hash
that adds a digest of the body. Message ids are read from raw (latin-1) field values, here
for Message-ID and by the parser for In-Reply-To and References.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final

from pipeline.mime.framing import _EOL_RE, _scan_fields, split_header_block

# The fields whose raw values identify a message (see identity_headers_hash).
IDENTITY_FIELDS: Final = ("message-id", "date", "from", "to", "subject")

_ASCII_WS_RE: Final = re.compile(r"[ \t\r\n\f\v]+")


def _collapse_ascii_ws(value: str) -> str:
    # Only ASCII whitespace: str.split() would also eat U+0085 and U+00A0, which are
    # ordinary 8-bit bytes (e.g. inside UTF-8 sequences) once decoded as latin-1.
    return _ASCII_WS_RE.sub(" ", value).strip()


def identity_headers_hash(
    message_id: str | None, date: str, from_: str, to: str, subject: str
) -> str:
    """Hash the canonical rendering of the identity headers.

    Pass the raw, undecoded values (bytes read as latin-1) so that the hash does not
    depend on charset handling. Runs of ASCII whitespace are collapsed and the ends
    trimmed, so folding and CRLF versus LF do not matter.

    Args:
        message_id: Raw Message-ID value, or None when absent.
        date: Raw Date value (``""`` when absent).
        from_: Raw From value.
        to: Raw To value.
        subject: Raw Subject value.

    Returns:
        Lower-case hex SHA-256.
    """
    values = (message_id or "", date, from_, to, subject)
    canonical = "\n".join(
        f"{name}:{_collapse_ascii_ws(value)}"
        for name, value in zip(IDENTITY_FIELDS, values, strict=True)
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _fields_hash(fields: Sequence[tuple[str, bytes]]) -> str:
    collected: dict[str, list[str]] = {name: [] for name in IDENTITY_FIELDS}
    for name, value in fields:
        if name in collected:
            collected[name].append(value.decode("latin-1"))
    # Repeated fields all count, in order; absent and empty are the same.
    joined = {name: "\n".join(values) for name, values in collected.items()}
    return identity_headers_hash(
        joined["message-id"] or None,
        joined["date"],
        joined["from"],
        joined["to"],
        joined["subject"],
    )


def header_hash_from_headers(raw_header_block: bytes) -> str:
    """Compute :attr:`ParsedMessage.header_hash` from the header block alone.

    For reindexing by ``BODY.PEEK[HEADER]``:
    ``header_hash_from_headers(headers) == parse_message(full).header_hash``.

    Args:
        raw_header_block: The header block (a full message is accepted too).

    Returns:
        Lower-case hex SHA-256.
    """
    return _fields_hash(_scan_fields(split_header_block(raw_header_block)[0]))


def identity_key_from_headers(raw_header_block: bytes) -> str | None:
    """Return the identity key when the headers alone determine it.

    Messages with a Message-ID are keyed ``"m:" + header_hash``. Messages without one need
    their body as well (``"s:"`` keys), so None is returned for them; fetch the full
    message and use :func:`parse_message`.

    Args:
        raw_header_block: The header block as returned by ``BODY.PEEK[HEADER]``.

    Returns:
        The ``"m:"`` key, or None when the message has no usable Message-ID.
    """
    fields = _scan_fields(split_header_block(raw_header_block)[0])
    if _message_id_from_fields(fields) is None:
        return None
    return "m:" + _fields_hash(fields)


def _body_digest(body: bytes | memoryview) -> str:
    # Line ends and trailing blank lines are normalized: servers and import tools convert
    # LF to CRLF and pad the end, and the same message must keep the same key.
    normalized = _EOL_RE.sub(b"\n", body).rstrip(b" \t\n")
    return hashlib.sha256(normalized).hexdigest()


def _identity_key(header_hash: str, has_message_id: bool, body: bytes | memoryview) -> str:
    if has_message_id:
        return "m:" + header_hash
    combined = (header_hash + _body_digest(body)).encode("ascii")
    return "s:" + hashlib.sha256(combined).hexdigest()


_MSGID_RE: Final = re.compile(r"<[^<>]*>")


def _message_ids(value: str) -> list[str]:
    ids: list[str] = []
    for token in _MSGID_RE.findall(value):
        compact = "".join(token.split())
        if compact != "<>":
            ids.append(compact)
    return ids


def _single_message_id(value: str) -> str | None:
    ids = _message_ids(value)
    if ids:
        return ids[0]
    # Some mailers omit the brackets; keep what they wrote rather than lose the id.
    compact = "".join(value.split())
    return compact or None


def _message_id_from_fields(fields: Sequence[tuple[str, bytes]]) -> str | None:
    for name, value in fields:
        if name == "message-id":
            found = _single_message_id(_latin1_clean(value))
            if found is not None:
                return found
    return None


def _latin1_clean(value: bytes) -> str:
    return value.decode("latin-1").replace("\x00", "")
