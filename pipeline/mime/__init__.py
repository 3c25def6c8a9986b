"""Normalize raw RFC 5322 messages into typed values.

:func:`parse_message` turns the bytes an IMAP server returns for ``BODY.PEEK[]`` into a
:class:`ParsedMessage`: decoded headers and participants, the display body, a snippet, the
attachment list (with IMAP section numbers, so bytes can be fetched later) and the identity
keys that let a message keep its id across folder moves and UIDVALIDITY changes. The package
is pure: no I/O, no ORM, no Celery.

How a message flows through it (module of each step in brackets)::

    raw bytes
      │  _prepare: drop a UTF-8 BOM and a leading mbox "From " line            [framing]
      ├─► split_header_block ─► _scan_fields ─► header_hash, identity_key,     [framing]
      │                         Message-ID                                     [identity]
      │                         (raw bytes read as latin-1: independent of any charset logic)
      │  _repair_header_block: obsolete "Name :" syntax, junk lines inside the header block
      ▼
    _fast_structure: well-formed mail cut at its delimiters with bytes.find    [structure]
      │  anything unusual ─► email BytesFeedParser(policy=compat32); never raises on bad MIME
      ├─ top-level headers ─► _decode_header_value (RFC 2047, 8-bit bytes,     [headers]
      │                       charset hints)
      └─ _Walker: IMAP section numbers; alternative / related rules            [parts]
            ├─ text/plain, text/html ─► _Context.decode_text (aliases,         [charsets]
            │                           supersets, hints, statistical detection as the
            │                           last resort); snippet                  [text]
            └─ everything else ──────► AttachmentInfo (payload decoded once, only to size it)

    parse_message and extract_part put the steps together                     [parser]
    normalize_subject: a subject's thread key                                  [subjects]
    ParsedMessage, Participant, AttachmentInfo                                 [values]

Why compat32 rather than ``email.policy.default``: the default policy builds header objects
lazily and raises (ValueError, AttributeError, LookupError) on mail found in the wild, and
its content manager refuses unknown charsets. compat32 keeps every raw value, undecodable
bytes included (as surrogate escapes), and leaves all decoding to this package.

The only error raised is :class:`pipeline.errors.MessageParseError`, for input that is not a
message at all (empty, or binary data without a single header field); anything else parses,
in time linear in the input (``tests/unit/test_mime_hostile.py`` holds hostile shapes to
that: encoded-word floods, runs of spaces or separators, deep nesting, endless comments).
Parts nested deeper than :data:`MAX_MIME_DEPTH` are not parsed: each is kept whole as one
``application/octet-stream`` attachment (defect ``NestingTooDeepDefect``), so the message and
everything above that depth are still stored and the bytes can still be downloaded.

This module is the public surface; names with a leading underscore in the modules are the
package's own (tests of the internals import them from their module).
"""

from __future__ import annotations

from pipeline.mime.framing import split_header_block
from pipeline.mime.headers import decode_header
from pipeline.mime.identity import (
    header_hash_from_headers,
    identity_headers_hash,
    identity_key_from_headers,
)
from pipeline.mime.parser import extract_part, parse_message
from pipeline.mime.structure import MAX_MIME_DEPTH
from pipeline.mime.subjects import normalize_subject
from pipeline.mime.values import AttachmentInfo, ParsedMessage, Participant

__all__ = [
    "MAX_MIME_DEPTH",
    "AttachmentInfo",
    "ParsedMessage",
    "Participant",
    "decode_header",
    "extract_part",
    "header_hash_from_headers",
    "identity_headers_hash",
    "identity_key_from_headers",
    "normalize_subject",
    "parse_message",
    "split_header_block",
]
