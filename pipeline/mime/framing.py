"""Framing: where a message's header block ends and what its raw fields say.

A UTF-8 BOM and an mbox ``From `` line in front are dropped; the header block is cut from the
body as IMAP's ``BODY[HEADER]`` does; its fields are read as latin-1 bytes, independent of any
charset logic; a block the email package would misread (obsolete ``Name :`` syntax, junk lines
between fields) is repaired; and binary data is told from text.
"""

from __future__ import annotations

import re
from typing import Final

# Only the start of a body is sniffed for binary data or an HTML <meta charset>.
SNIFF_BYTES: Final = 4096

_BOM: Final = b"\xef\xbb\xbf"
_EOL_RE: Final = re.compile(rb"\r\n|\n|\r")
_EOL_SPLIT_RE: Final = re.compile(rb"(\r\n|\n|\r)")
# field-name, optionally followed by whitespace before the colon (RFC 5322 obs-optional).
_FIELD_RE: Final = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_WSP: Final = (b" ", b"\t")
_OBS_FROM_FIELD_RE: Final = re.compile(rb"From[ \t]*:")


def _prepare(raw: bytes) -> bytes:
    """Drop what precedes the first header: a UTF-8 BOM and an mbox ``From `` line."""
    data = raw[len(_BOM) :] if raw.startswith(_BOM) else raw
    # "From  : x" is an obsolete-syntax From field, not an mbox separator.
    if data.startswith(b"From ") and not _OBS_FROM_FIELD_RE.match(data):
        eol = _EOL_RE.search(data)
        data = data[eol.end() :] if eol else b""
    return data


def _header_end(data: bytes) -> int:
    """Offset just past the first empty line (the header block keeps it, like BODY[HEADER])."""
    previous_end = 0
    for match in _EOL_RE.finditer(data):
        if match.start() == previous_end:
            return match.end()
        previous_end = match.end()
    return len(data)


def _split(data: bytes) -> tuple[bytes, bytes]:
    end = _header_end(data)
    return data[:end], data[end:]


def split_header_block(raw: bytes) -> tuple[bytes, bytes]:
    """Split a message into its header block and body, as IMAP does.

    The header block ends with the first empty line and includes it, which is what
    ``BODY.PEEK[HEADER]`` returns; the body is ``BODY.PEEK[TEXT]``. A leading UTF-8 BOM
    and mbox ``From `` line are dropped first.

    Args:
        raw: The full message.

    Returns:
        ``(header_block, body)``; the body is ``b""`` when there is no empty line.
    """
    return _split(_prepare(raw))


def _scan_fields(block: bytes) -> list[tuple[str, bytes]]:
    """Return ``(lower-case name, unfolded raw value)`` for every field of a header block.

    Deliberately independent of the email package so that a header block fetched on its
    own and the same block inside a full message always give identical fields. Lines that
    are neither fields nor continuations stay with the field above them.
    """
    fields: list[tuple[str, list[bytes]]] = []
    for line in _EOL_RE.split(block):
        if not line:
            continue
        if line[:1] in _WSP:
            if fields:
                fields[-1][1].append(line)
                continue
            line = line.lstrip(b" \t")
        match = _FIELD_RE.match(line)
        if match:
            name = match.group(1).decode("ascii").lower()
            fields.append((name, [line[match.end() :]]))
        elif fields:
            fields[-1][1].append(line)
    return [(name, b" ".join(parts)) for name, parts in fields]


def _repair_header_block(block: bytes) -> bytes | None:
    """Rewrite header lines the email package would misread; None when nothing changes.

    * ``Subject :`` (obsolete whitespace before the colon) becomes ``Subject:``; Python
      would otherwise end the header block there and lose every later field.
    * A first line that starts with whitespace is un-indented when it is a field.
    * A junk line (neither field nor continuation) followed by more fields becomes a
      continuation, so the fields after it are not swallowed into the body.
    """
    pieces = _EOL_SPLIT_RE.split(block)
    lines = pieces[0::2]
    eols = [*pieces[1::2], b""]
    last_field = max((i for i, line in enumerate(lines) if _FIELD_RE.match(line)), default=-1)
    changed = False
    out: list[bytes] = []
    for index, line in enumerate(lines):
        new = line
        if not line:
            pass
        elif line[:1] in _WSP:
            stripped = line.lstrip(b" \t")
            if index == 0 and _FIELD_RE.match(stripped):
                new = _compact_field_name(stripped)
        elif _FIELD_RE.match(line):
            new = _compact_field_name(line)
        elif 0 < index < last_field and not line.startswith(b"From "):
            new = b" " + line
        changed = changed or new is not line
        out.append(new + eols[index])
    return b"".join(out) if changed else None


def _compact_field_name(line: bytes) -> bytes:
    match = _FIELD_RE.match(line)
    if match is None or match.end() == len(match.group(1)) + 1:
        return line
    return match.group(1) + b":" + line[match.end() :]


def _looks_binary(sample: bytes) -> bool:
    """True for data no mail system would call text (NULs or many control bytes)."""
    if b"\x00" in sample:
        return True
    controls = sum(1 for byte in sample if byte < 0x20 and byte not in (0x09, 0x0A, 0x0D, 0x1B))
    return controls * 10 > len(sample)
