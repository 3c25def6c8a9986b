"""Normalize raw RFC 5322 messages into typed values.

:func:`parse_message` turns the bytes an IMAP server returns for ``BODY.PEEK[]`` into a
:class:`ParsedMessage`: decoded headers and participants, the display body, a snippet, the
attachment list (with IMAP section numbers, so bytes can be fetched later) and the identity
keys that let a message keep its id across folder moves and UIDVALIDITY changes. The module
is pure: no I/O, no ORM, no Celery.

How a message flows through it::

    raw bytes
      │  _prepare: drop a UTF-8 BOM and a leading mbox "From " line
      ├─► split_header_block ─► _scan_fields ─► header_hash, identity_key, Message-ID,
      │                         (raw bytes read as latin-1: independent of any charset logic)
      │  _repair_header_block: obsolete "Name :" syntax, junk lines inside the header block
      ▼
    _fast_structure: well-formed mail cut at its delimiters with bytes.find (the same tree)
      │  anything unusual ─► email BytesFeedParser(policy=compat32); never raises on bad MIME
      ├─ top-level headers ─► _decode_header_value (RFC 2047, 8-bit bytes, charset hints)
      └─ _Walker: IMAP section numbers; alternative / related rules
            ├─ text/plain, text/html ─► _Context.decode_text (aliases, supersets, hints,
            │                           statistical detection as the last resort)
            └─ everything else ──────► AttachmentInfo (payload decoded once, only to size it)

Why compat32 rather than ``email.policy.default``: the default policy builds header objects
lazily and raises (ValueError, AttributeError, LookupError) on mail found in the wild, and
its content manager refuses unknown charsets. compat32 keeps every raw value, undecodable
bytes included (as surrogate escapes), and leaves all decoding to this module.

The only error raised is :class:`pipeline.errors.MessageParseError`, for input that is not a
message at all (empty, or binary data without a single header field); anything else parses,
in time linear in the input (``tests/unit/test_mime_hostile.py`` holds hostile shapes to
that: encoded-word floods, runs of spaces or separators, deep nesting, endless comments).
Parts nested deeper than :data:`MAX_MIME_DEPTH` are not parsed: each is kept whole as one
``application/octet-stream`` attachment (defect ``NestingTooDeepDefect``), so the message and
everything above that depth are still stored and the bytes can still be downloaded.
"""

from __future__ import annotations

import binascii
import codecs
import email.feedparser
import functools
import hashlib
import html
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.errors import MessageDefect
from email.feedparser import BytesFeedParser
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_tz
from html.parser import HTMLParser
from io import BytesIO
from typing import Any, Final, TypeAlias

from charset_normalizer import from_bytes

from pipeline.errors import MessageParseError

__all__ = [
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

_Part: TypeAlias = "Message[str, str]"  # compat32 messages: raw str header values

SNIPPET_CHARS: Final = 100  # Nylas v3 snippets are the first 100 characters
# Charset detection reads at most this many bytes: enough for a confident guess, and it
# keeps a mislabelled multi-megabyte text part from costing seconds.
DETECT_SAMPLE_BYTES: Final = 64 * 1024
# Below this many non-ASCII bytes statistical detection guesses wrong more often than a
# windows-1252 fallback does (measured on short Cyrillic and CJK strings).
DETECT_MIN_NON_ASCII: Final = 16
# Only the start of a body is sniffed for binary data or an HTML <meta charset>.
SNIFF_BYTES: Final = 4096
# _mostly_utf8 accepts stray bytes only when this many valid characters back each one.
UTF8_GOOD_PER_BAD: Final = 4
# Feeding the parser in chunks bounds its line buffer (see _parse_structure).
PARSER_CHUNK_BYTES: Final = 64 * 1024
# Attachments are sized, never kept, so a large base64 attachment body is elided before the
# parser splits it into lines: on a mailbox with a few 5 MB attachments that line splitting
# was most of the sync's CPU (tests/benchmarks/initial_sync.py). Elision starts at these sizes.
ELIDE_MIN_MESSAGE_BYTES: Final = 256 * 1024
ELIDE_MIN_PART_BYTES: Final = 32 * 1024
# Mail with more multipart boundaries or delimiter lines than these is not elided (parsed as it
# is): finding the parts costs a scan per boundary and up to 16 KiB per delimiter line, and
# mail with big attachments has a handful of each.
ELIDE_MAX_BOUNDARIES: Final = 32
ELIDE_MAX_DELIMITERS: Final = 1000
# The longest charset label worth looking up; anything longer is garbage.
MAX_CHARSET_LABEL: Final = 40

# The fields whose raw values identify a message (see identity_headers_hash).
IDENTITY_FIELDS: Final = ("message-id", "date", "from", "to", "subject")


# --------------------------------------------------------------------------------------
# Public value types
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Framing: BOM, mbox line, header block, raw header fields
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Charsets
# --------------------------------------------------------------------------------------

# ISO-2022-JP as Microsoft writes it (CP50220): JIS X 0208 plus the NEC and IBM rows
# ("①", "№", "㈱") that Outlook puts in Japanese mail and Python's codecs reject.
_ISO2022JP_MS: Final = "x-iso-2022-jp-ms"
_ISO2022JP_ESCAPE_RE: Final = re.compile(rb"\x1b(\$[@B]|\$\(D|\([BJI])")
# windows-1252 as WHATWG defines it: the five unassigned bytes map to the C1 controls
# (like latin-1), so decoding can never fail and no byte is lost.
_WIN1252: Final = "x-windows-1252-lenient"
_CP1252_TABLE: Final = {
    byte: bytes([byte]).decode("cp1252")
    for byte in range(0x80, 0xA0)
    if byte not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}

# Labels mail uses that Python lacks, plus Microsoft/WHATWG supersets that decode more of
# what is actually sent under the narrower name.
_CHARSET_ALIASES: Final[dict[str, str]] = {
    "unicode-1-1-utf-7": "utf-7",
    "x-unicode-2-0-utf-7": "utf-7",
    "csunicode11utf7": "utf-7",
    "unicode-2-0-utf-8": "utf-8",
    "x-unicode20utf8": "utf-8",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601-1989": "cp949",
    "ks_c_5601": "cp949",
    "ksc5601": "cp949",
    "ksc_5601": "cp949",
    "x-windows-949": "cp949",
    "windows-949": "cp949",
    "euc-kr": "cp949",
    "x-gbk": "gb18030",
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "csgb2312": "gb18030",
    "euc-cn": "gb18030",
    "x-euc-cn": "gb18030",
    "cp936": "gb18030",
    "windows-936": "gb18030",
    "x-big5": "big5",
    "big5-hkscs": "big5hkscs",
    "x-sjis": "shift_jis",
    "windows-31j": "cp932",
    "x-euc-jp": "euc_jp",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-8-e": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "iso-8859-6-e": "iso-8859-6",
    "windows-874": "cp874",
    "x-windows-874": "cp874",
    "tis-620": "cp874",
    "iso-8859-11": "cp874",
    "x-mac-roman": "mac-roman",
    "macintosh": "mac-roman",
    "x-mac-ce": "mac-latin2",
    "x-mac-ukrainian": "mac-cyrillic",
    "ansi": "cp1252",
    "ansi_x3.4-1968": "ascii",
    "unicode": "utf-16",
    "ucs-2": "utf-16",
    "iso-10646-ucs-2": "utf-16-be",
    "utf8mb4": "utf-8",
}

# Labels that say nothing about the bytes: decode by evidence instead.
_UNKNOWN_LABELS: Final = frozenset(
    {
        "",
        "unknown",
        "unknown-8bit",
        "x-unknown",
        "none",
        "default",
        "charset",
        "x-user-defined",
        "binary",
        "8bit",
        "7bit",
    }
)
# Labels that are valid but deliberately treated as "no information".
_WEAK_LABELS: Final = _UNKNOWN_LABELS | {"us-ascii", "ascii", "ansi_x3.4-1968", "us"}
# Python codecs that are text encodings but never a real mail charset.
_REFUSED_CODECS: Final = frozenset(
    {"undefined", "unicode_escape", "raw_unicode_escape", "idna", "punycode", "mbcs", "oem"}
)
# Codec chains tried in order (strictly); the first is used with replacement when all fail.
_CODEC_CHAINS: Final[dict[str, tuple[str, ...]]] = {
    "iso8859-1": (_WIN1252,),
    "cp1252": (_WIN1252,),
    "iso8859-9": ("cp1254",),
    "big5": ("cp950", "big5hkscs"),
    "cp950": ("cp950", "big5hkscs"),
    "big5hkscs": ("big5hkscs", "cp950"),
    "shift_jis": ("cp932", "shift_jis_2004"),
    "cp932": ("cp932", "shift_jis_2004"),
    "euc_jp": ("euc_jp", "euc_jis_2004", "cp932"),
    "iso2022_jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", _ISO2022JP_MS),
    "iso2022_jp_1": ("iso2022_jp_1", "iso2022_jp_2", _ISO2022JP_MS),
    "iso2022_jp_2": ("iso2022_jp_2", _ISO2022JP_MS),
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "euc_kr": ("cp949",),
}
# A label with trailing junk ("utf-8return-path: ...") still names its charset.
_LABEL_PREFIX_RE: Final = re.compile(
    r"(utf-?8|utf-?16(?:-?[bl]e)?|iso-?8859-\d{1,2}|windows-12\d\d|cp12\d\d|koi8-?[ru]"
    r"|gb18030|gbk|gb2312|big5|shift[-_]jis|euc-(?:jp|kr)|iso-2022-jp|us-ascii)"
)
_ISO2022JP_CHAIN: Final = _CODEC_CHAINS["iso2022_jp"]


def _clean_label(label: str) -> str:
    return label.strip().strip("\"'").strip().lower()


def _codec_name(label: str) -> str | None:
    """Python codec name for a cleaned label, None when Python has no text codec for it."""
    try:
        info = codecs.lookup(label)
        b"".decode(info.name)  # raises LookupError for bytes-to-bytes codecs (base64, …)
    except (LookupError, ValueError):
        return None
    return None if info.name in _REFUSED_CODECS else info.name


@functools.lru_cache(maxsize=512)
def _resolve_charset(label: str | None) -> tuple[str, ...] | None:
    """Codec chain for a declared charset label.

    Returns None for labels that carry no information (missing, unknown, "us-ascii"): the
    bytes then decide. US-ASCII counts as no information because mailers label 8-bit
    text us-ascii all the time; a correct label changes nothing for pure ASCII bytes.
    """
    if label is None:
        return None
    cleaned = _clean_label(label)[:MAX_CHARSET_LABEL]
    if cleaned in _UNKNOWN_LABELS:
        return None
    cleaned = _CHARSET_ALIASES.get(cleaned, cleaned)
    name = _codec_name(cleaned)
    if name is None and cleaned.startswith("x-mac-"):
        name = _codec_name("mac-" + cleaned[len("x-mac-") :])
    if name is None and re.fullmatch(r"cp-\d+", cleaned):
        name = _codec_name(cleaned.replace("-", ""))
    if name is None:
        prefix = _LABEL_PREFIX_RE.match(cleaned)
        if prefix is None or prefix.group(0) == cleaned:
            return None
        return _resolve_charset(prefix.group(0))
    if name == "ascii":
        return None
    return _CODEC_CHAINS.get(name, (name,))


def _decode_with(data: bytes, codec: str, errors: str) -> str:
    if codec == _WIN1252:
        return data.decode("latin-1").translate(_CP1252_TABLE)
    if codec == _ISO2022JP_MS:
        return _decode_iso2022jp_ms(data, errors)
    return data.decode(codec, errors)


def _decode_iso2022jp_ms(data: bytes, errors: str) -> str:
    """Decode ISO-2022-JP by mapping its JIS X 0208 runs to Shift_JIS and using cp932."""
    out: list[str] = []
    mode = b"(B"
    position = 0
    for match in [*_ISO2022JP_ESCAPE_RE.finditer(data), None]:
        end = match.start() if match else len(data)
        run = data[position:end]
        if mode in (b"$@", b"$B", b"$(D"):
            out.append(_jis_to_sjis(run).decode("cp932", errors))
        elif mode == b"(I":  # JIS X 0201 katakana: 0x21-0x5F shift to 0xA1-0xDF
            out.append(
                bytes(b | 0x80 if 0x21 <= b <= 0x5F else b for b in run).decode("cp932", errors)
            )
        else:
            out.append(run.decode("ascii", errors))
        if match:
            mode, position = match.group(1), match.end()
    return "".join(out)


def _jis_to_sjis(run: bytes) -> bytes:
    converted = bytearray()
    for index in range(0, len(run) - 1, 2):
        first, second = run[index], run[index + 1]
        if first & 1:
            second += 0x1F + (1 if second >= 0x60 else 0)
        else:
            second += 0x7E
        lead = (first + 1) // 2 + 0x70
        converted += bytes((lead + 0x40 if lead >= 0xA0 else lead, second & 0xFF))
    if len(run) % 2:
        converted.append(run[-1])  # a dangling byte: let cp932 flag it
    return bytes(converted)


def _decode_strict(data: bytes, chain: Sequence[str]) -> str | None:
    for codec in chain:
        try:
            return _decode_with(data, codec, "strict")
        except UnicodeDecodeError:
            continue
    return None


def _decode_declared(data: bytes, chain: Sequence[str]) -> str:
    text = _decode_strict(data, chain)
    return text if text is not None else _decode_with(data, chain[0], "replace")


def _decode_utf8_lenient(data: bytes) -> str:
    """UTF-8 where valid, windows-1252 for the bytes that are not; never fails."""
    return _SURROGATE_RE.sub(
        lambda m: _decode_with(bytes([ord(m.group()) - 0xDC00]), _WIN1252, "strict"),
        data.decode("utf-8", "surrogateescape"),
    )


def _mostly_utf8(data: bytes) -> str | None:
    """Decode UTF-8 with a few stray bytes (a name cut mid-character, one latin-1 byte).

    Legacy multi-byte text (EUC-KR, GBK…) also contains valid UTF-8 sequences by chance,
    so this only answers when valid multi-byte characters clearly outnumber bad bytes.
    """
    text = data.decode("utf-8", "surrogateescape")
    bad = len(_SURROGATE_RE.findall(text))
    good = sum(1 for char in text if 0x7F < ord(char) < 0xD800 or ord(char) > 0xDFFF)
    if bad * UTF8_GOOD_PER_BAD > good:
        return None
    return _decode_utf8_lenient(data)


def _non_ascii_count(data: bytes) -> int:
    return len(data.translate(None, bytes(range(0x80))))


@dataclass(slots=True)
class _Context:
    """Per-message state: charset hints gathered from the message, and defects."""

    hints: list[tuple[str, ...]] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    # placeholder body -> decoded size, for attachment bodies elided before parsing
    elided: dict[str, int] = field(default_factory=dict)

    def add_hint(self, chain: tuple[str, ...] | None) -> None:
        if chain is not None and chain not in self.hints:
            self.hints.append(chain)

    def defect(self, name: str) -> None:
        if name not in self.defects:
            self.defects.append(name)

    def decode_8bit(self, data: bytes) -> str:
        """Decode bytes with no trustworthy label (raw header bytes, unknown charsets).

        UTF-8 first (it fails loudly when wrong), also with a few stray bytes, then the
        charsets the message declares elsewhere (a mailer that writes raw 8-bit headers
        uses its body charset), then windows-1252, which accepts every byte: text is
        never dropped.
        """
        if data.isascii():
            return data.decode("ascii")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        mostly = _mostly_utf8(data)
        if mostly is not None:
            return mostly
        for chain in self.hints:
            decoded = _decode_strict(data, chain)
            if decoded is not None:
                return decoded
        self.defect("UndeclaredCharsetFallback")
        return _decode_with(data, _WIN1252, "strict")

    def decode_text(self, data: bytes, label: str | None, sniffed: str | None = None) -> str:
        """Decode a body part: declared label, else evidence, else detection."""
        chain = _resolve_charset(label)
        if chain is None and label is not None and _clean_label(label) not in _WEAK_LABELS:
            self.defect("UnknownCharset")
        if chain is not None:
            return self._decode_labelled(data, chain)
        if data.isascii():
            # A 7-bit ISO-2022-JP body often comes without any charset label.
            if b"\x1b$" in data:
                text = _decode_strict(data, _ISO2022JP_CHAIN)
                if text is not None:
                    return text
            return data.decode("ascii")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        mostly = _mostly_utf8(data)
        if mostly is not None:
            return mostly
        sniffed_chain = _resolve_charset(sniffed)
        for candidate in ([sniffed_chain] if sniffed_chain else []) + self.hints:
            text = _decode_strict(data, candidate)
            if text is not None:
                return text
        if _non_ascii_count(data[:DETECT_SAMPLE_BYTES]) >= DETECT_MIN_NON_ASCII:
            best = from_bytes(data[:DETECT_SAMPLE_BYTES]).best()
            detected = _resolve_charset(best.encoding) if best is not None else None
            if detected is not None:
                self.defect("CharsetDetected")
                return _decode_declared(data, detected)
        self.defect("UndeclaredCharsetFallback")
        return _decode_with(data, _WIN1252, "strict")

    def _decode_labelled(self, data: bytes, chain: tuple[str, ...]) -> str:
        if data.isascii() and _ascii_compatible(chain[0]):
            return data.decode("ascii")
        text = _decode_strict(data, chain)
        if text is not None:
            return text
        if chain[0] == "utf-8":
            # Mostly windows-1252 text in a part labelled UTF-8 (old Outlook and Windows
            # Live do this): keep every character rather than replace them.
            self.defect("UndecodableText")
            return _decode_utf8_lenient(data)
        try:
            # The label is wrong. UTF-8 is the usual truth and cannot match by chance.
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.defect("UndecodableText")
            return _decode_with(data, chain[0], "replace")
        self.defect("MislabelledCharset")
        return text


@functools.lru_cache(maxsize=64)
def _ascii_compatible(codec: str) -> bool:
    """Whether pure ASCII bytes decode to themselves (false for ISO-2022-*, UTF-7, UTF-16)."""
    if codec == _WIN1252:
        return True
    if codec.startswith(("iso2022", "utf_7", "utf-7", "hz", "x-iso-2022")):
        return False  # 7-bit encodings whose escape sequences are ASCII bytes
    try:
        return "Aa0-".encode(codec) == b"Aa0-"
    except (LookupError, UnicodeError):
        return False


# --------------------------------------------------------------------------------------
# Headers: RFC 2047, parameters (RFC 2231), addresses, dates
# --------------------------------------------------------------------------------------

# Lenient encoded-word: tolerates spaces around the encoding letter and inside the text,
# and an RFC 2231 language suffix on the charset ("utf-8*en").
_ENCODED_WORD_RE: Final = re.compile(r"=\?([^?\s]*)\?\s*([bBqQ])\s*\?([^?]*)\?=")
_Q_ESCAPE_RE: Final = re.compile(rb"=([0-9A-Fa-f]{2})")
_LINE_BREAKS_RE: Final = re.compile(r"[\r\n]+")
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE_RE: Final = re.compile(r"[\ud800-\udfff]")


def _to_bytes(value: str) -> bytes:
    # compat32 keeps undecodable bytes as surrogate escapes; this restores them exactly.
    return value.encode("utf-8", "surrogateescape")


def _unfold(value: str) -> str:
    return _LINE_BREAKS_RE.sub("", value).replace("\t", " ")


def _q_decode(text: str) -> bytes:
    data = _to_bytes(text).replace(b"_", b" ")
    return _Q_ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def _b64_lenient(data: bytes) -> bytes:
    """Base64 decode that never raises: bad characters are skipped, padding repaired."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    remainder = len(cleaned) % 4
    if remainder == 1:
        cleaned = cleaned[:-1]  # a lone trailing sextet carries no complete byte
    elif remainder:
        cleaned += b"=" * (4 - remainder)
    try:
        return binascii.a2b_base64(cleaned)
    except binascii.Error:
        return b""


def _decode_words(value: str, ctx: _Context) -> str:
    """Decode RFC 2047 encoded-words and raw 8-bit bytes of one unfolded header value."""
    # (charset or None for literal text, byte pieces): the pieces of adjacent words are joined
    # once at the end, so a subject of a million encoded-words costs linear time.
    tokens: list[tuple[str | None, list[bytes]]] = []
    position = 0
    for match in _ENCODED_WORD_RE.finditer(value):
        literal = value[position : match.start()]
        # Whitespace between two encoded-words is not part of the text (RFC 2047 6.2).
        if literal and not (literal.isspace() and tokens and tokens[-1][0] is not None):
            tokens.append((None, [_to_bytes(literal)]))
        charset = match.group(1).split("*", 1)[0]
        encoded = match.group(3)
        if match.group(2) in "bB":
            raw = _b64_lenient(_to_bytes("".join(encoded.split())))
        else:
            raw = _q_decode(encoded)
        # Adjacent words in one charset are joined before decoding: encoders split
        # multi-byte characters across words.
        last = tokens[-1][0] if tokens else None
        if last is not None and last.lower() == charset.lower():
            tokens[-1][1].append(raw)
        else:
            tokens.append((charset, [raw]))
        position = match.end()
    if not tokens:
        return ctx.decode_8bit(_to_bytes(value))
    tail = value[position:]
    if tail:
        tokens.append((None, [_to_bytes(tail)]))
    out: list[str] = []
    for charset, pieces in tokens:
        raw = b"".join(pieces)
        if charset is None:
            out.append(ctx.decode_8bit(raw))
            continue
        chain = _resolve_charset(charset)
        if chain is None:
            out.append(ctx.decode_8bit(raw))
        else:
            text = _decode_strict(raw, chain)
            if text is None:
                ctx.defect("UndecodableText")
                text = _decode_with(raw, chain[0], "replace")
            out.append(text)
    return "".join(out)


def _decode_header_value(value: str, ctx: _Context) -> str:
    if value.isascii() and "=?" not in value:
        # Most values: nothing to decode, only unfold and drop control characters (the same
        # result as the general path below, without its passes).
        return _CONTROL_RE.sub("", _unfold(value)).strip()
    text = _decode_words(_unfold(value), ctx)
    # Double-encoded headers exist in the wild (an encoded-word whose text is itself
    # encoded-words); one more pass recovers them.
    if _ENCODED_WORD_RE.search(text):
        text = _decode_words(text, ctx)
    # Encoded-words can smuggle line breaks and control bytes into a one-line value.
    text = _CONTROL_RE.sub("", text.replace("\r", " ").replace("\n", " ").replace("\t", " "))
    return _clean_text(text).strip()


def _clean_text(text: str) -> str:
    # Postgres text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8.
    if "\x00" in text:
        text = text.replace("\x00", "")
    return _SURROGATE_RE.sub("\ufffd", text)


def decode_header(value: str | bytes) -> str:
    """Decode one header value for display: unfold, RFC 2047, raw 8-bit bytes.

    Args:
        value: The raw value, as bytes or as a str (surrogate escapes allowed).

    Returns:
        The decoded, unfolded, stripped text; undecodable bytes are replaced, never dropped.
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    return _decode_header_value(text, _Context())


@dataclass(frozen=True, slots=True)
class _Params:
    """A parsed structured header such as Content-Type or Content-Disposition."""

    value: str
    params: dict[str, str]


_ATOM_CHARS: Final = r"A-Za-z0-9!#$%&'*+.^_`{|}~-"
_MEDIA_TYPE_RE: Final = re.compile(rf"\s*([{_ATOM_CHARS}]+)\s*/\s*([{_ATOM_CHARS}]+)")
# Only from the start of a whitespace run: from every position inside a long run, the search
# would rescan the run (quadratic time in a header of spaces).
_HIDDEN_PARAM_RE: Final = re.compile(rf"(?<!\s)\s+([{_ATOM_CHARS}]+)\s*=")
_RFC2231_NAME_RE: Final = re.compile(r"([^*]+)\*(\d+)?(\*)?")
_PERCENT_RE: Final = re.compile(rb"%([0-9A-Fa-f]{2})")


def _tokenize_params(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``value; a=b; c="d"`` leniently into the main value and raw parameters."""
    head, _, rest = text.partition(";")
    head = head.strip()
    # "application/pdf name=x.pdf": the ";" is missing, the parameter is in the head.
    hidden = _HIDDEN_PARAM_RE.search(head)
    if hidden:
        rest = head[hidden.start() :] + ";" + rest
        head = head[: hidden.start()]
    params: list[tuple[str, str]] = []
    position, length = 0, len(rest)
    # The next "=" and ";" are looked for again only once passed: a header of a million ";"
    # before its one "=" would otherwise be rescanned for every ";" (quadratic time).
    equals = semicolon = -1
    while position < length:
        while position < length and (rest[position].isspace() or rest[position] == ";"):
            position += 1
        if equals < position:
            equals = rest.find("=", position)
            if equals < 0:
                break  # no parameter can follow
        if semicolon < position:
            semicolon = rest.find(";", position)
            semicolon = length if semicolon < 0 else semicolon
        if semicolon < equals:
            position = semicolon + 1
            continue
        name_part = rest[position:equals].split()
        position = equals + 1
        while position < length and rest[position] in " \t":
            position += 1
        if position < length and rest[position] == '"':
            chars: list[str] = []
            position += 1
            while position < length and rest[position] != '"':
                if rest[position] == "\\" and position + 1 < length:
                    position += 1
                chars.append(rest[position])
                position += 1
            position += 1  # closing quote (an unterminated string runs to the end)
            raw_value = "".join(chars)
        else:
            end = rest.find(";", position)
            end = length if end < 0 else end
            raw_value = rest[position:end]
            # An unquoted value ends at whitespace followed by "name=": some mailers
            # forget the ";" between RFC 2231 continuations.
            hidden = _HIDDEN_PARAM_RE.search(raw_value)
            if hidden:
                end = position + hidden.start()
                raw_value = raw_value[: hidden.start()]
            raw_value = raw_value.strip()
            position = end
        if name_part:
            params.append((name_part[-1].lower(), raw_value))
    return head, params


def _parse_params(raw: str | None, ctx: _Context) -> _Params:
    """Parse a structured header, decoding RFC 2231 and (non-standard) RFC 2047 values."""
    if raw is None:
        return _Params("", {})
    head, raw_params = _tokenize_params(_unfold(raw))
    simple: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[bool, str]]] = {}
    for name, value in raw_params:
        match = _RFC2231_NAME_RE.fullmatch(name)
        if match is None:
            simple.setdefault(name, value)  # first occurrence wins on duplicates
            continue
        base, number, star = match.groups()
        # "name*" is section 0 extended; "name*N" plain; "name*N*" extended.
        section = int(number) if number is not None else 0
        is_extended = star is not None or number is None
        extended.setdefault(base, {}).setdefault(section, (is_extended, value))
    params = {name: _decode_header_value(value, ctx) for name, value in simple.items()}
    for base, sections in extended.items():
        params[base] = _join_rfc2231(sections, ctx)
    return _Params(head.strip(), params)


def _join_rfc2231(sections: dict[int, tuple[bool, str]], ctx: _Context) -> str:
    charset: str | None = None
    chunks: list[bytes] = []
    for index, number in enumerate(sorted(sections)):
        is_extended, value = sections[number]
        if index == 0 and is_extended and value.count("'") >= 2:
            charset, _, value = value.split("'", 2)
        data = _to_bytes(value)
        if is_extended:
            data = _PERCENT_RE.sub(lambda m: bytes([int(m.group(1), 16)]), data)
        chunks.append(data)
    joined = b"".join(chunks)
    chain = _resolve_charset(charset)
    text = _decode_declared(joined, chain) if chain else ctx.decode_8bit(joined)
    return _decode_header_value(text, ctx)


def _media_type(params: _Params, default: str) -> str:
    match = _MEDIA_TYPE_RE.match(params.value)
    if match:
        media = f"{match.group(1)}/{match.group(2)}".lower()
        return "text/plain" if media == "plain/text" else media  # a known mailer mistake
    token = params.value.strip().lower()
    if not token:
        return default
    # No subtype ("application-x-gzip"): keep it out of the text body unless it says text.
    return "text/plain" if token.startswith("text") else "application/octet-stream"


def _addresses(values: Sequence[str], ctx: _Context) -> tuple[Participant, ...]:
    """Participants of one address field (all occurrences of it)."""
    # 8-bit bytes are decoded first so the address parser sees characters; encoded-words
    # stay encoded until after splitting, since a decoded name may contain a comma.
    words: list[str] = []

    def protect(match: re.Match[str]) -> str:
        # Encoded-words may contain specials (":", ")", ",") that would derail the
        # address parser; park them behind private-use placeholders until after it.
        words.append(match.group(0))
        return f"\ue000{len(words) - 1}\ue001"

    texts = []
    budget = MAX_ADDRESS_FIELD_CHARS
    for value in values:
        if len(value) > budget:
            # the list is read up to its last complete element within the budget
            cut = value.rfind(",", 0, budget)
            value = value[: max(cut, 0)]
            ctx.defect("AddressListTruncated")
            budget = 0
        else:
            budget -= len(value)
        text = _clean_text(ctx.decode_8bit(_to_bytes(_unfold(value))))
        text = _ENCODED_WORD_RE.sub(protect, text)
        texts.append(_NAME_BEFORE_ADDRESS_RE.sub(_quote_name_with_at, text))
    participants: list[Participant] = []
    for name, address in _getaddresses(texts):
        name = _PLACEHOLDER_RE.sub(lambda m: words[int(m.group(1))], name)
        decoded_name = _decode_header_value(name, ctx) if name else ""
        email = _PLACEHOLDER_RE.sub(lambda m: words[int(m.group(1))], address).strip()
        if "@" not in email and _ENCODED_WORD_RE.search(email):
            # A phrase without an address ("To: =?utf-8?q?Team?="): it is a name.
            decoded_name, email = _decode_header_value(email, ctx), ""
        if decoded_name or email:
            participants.append(Participant(name=decoded_name, email=email))
    return tuple(participants)


# Characters of one address field (all its occurrences) read for participants: some 10,000
# recipients. The standard address parser reads a character at a time (about 0.6 MB/s), so a
# To: of megabytes would cost seconds of CPU per message; the whole value stays in ``headers``.
MAX_ADDRESS_FIELD_CHARS: Final = 256 * 1024
_PLACEHOLDER_RE: Final = re.compile("\ue000(\\d+)\ue001")
# What precedes an angle address in a list element. One greedy run with nothing after it that
# it could also match: a header of "a@a@a@…" without "<" is read in linear time.
_NAME_BEFORE_ADDRESS_RE: Final = re.compile(r'(^|,)([^,<>"]*)(<[^<>]*>)')


def _quote_name_with_at(match: re.Match[str]) -> str:
    """An unquoted display name containing "@" ("Mikel@Lindsaar <m@x>") reads as two
    addresses to a strict parser; quote it."""
    lead, name, address = match.groups()
    body = name.rstrip()
    first = body.lstrip()[:1]
    if not first or first == "@" or "@" not in body:
        return match.group(0)
    return f'{lead}"{body}"{name[len(body) :]}{address}'


_ADDR_ATOM: Final = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"  # RFC 5322 atext
_SIMPLE_ADDR: Final = rf"[{_ADDR_ATOM}]+(?:\.[{_ADDR_ATOM}]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# Exactly one way to match any text (the name takes the spaces around it, stripped later):
# nested or adjacent whitespace quantifiers made a long run of spaces cost quadratic time.
_SIMPLE_MAILBOX_RE: Final = re.compile(
    rf"(?:([A-Za-z0-9'_ \t-]*)<({_SIMPLE_ADDR})>|[ \t]*({_SIMPLE_ADDR}))[ \t]*"
)
_NOT_SIMPLE_RE: Final = re.compile(r'[^\x20-\x7e\t]|["()\\:;\[\]]|=\?')


def _simple_pairs(texts: list[str]) -> list[tuple[str, str]] | None:
    """``getaddresses`` for the common lists (``Name <a@b>``, ``a@b``, separated by commas),
    without its character-by-character tokenizer; None for anything else."""
    pairs: list[tuple[str, str]] = []
    for text in texts:
        if _NOT_SIMPLE_RE.search(text):
            return None
        for piece in text.split(","):
            match = _SIMPLE_MAILBOX_RE.fullmatch(piece)
            if match is None:
                return None
            name, routed, bare = match.groups()
            pairs.append((" ".join(name.split()), routed) if routed else ("", bare))
    return pairs


def _getaddresses(texts: list[str]) -> list[tuple[str, str]]:
    simple = _simple_pairs(texts)
    if simple is not None:
        return simple
    try:
        try:
            return getaddresses(texts, strict=False)
        except TypeError:  # Pythons before 3.11.10 have no strict parameter
            return getaddresses(texts)
    except RecursionError:
        # email._parseaddr recurses once per list element; thousands of them (a 100 KB
        # header) exhaust the stack. Split at top-level commas and parse piece by piece.
        pairs: list[tuple[str, str]] = []
        for text in texts:
            for piece in _split_address_list(text):
                try:
                    pairs.extend(getaddresses([piece]))
                except RecursionError:
                    pairs.append((piece.strip(), ""))
        return pairs


def _split_address_list(text: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    angle = 0
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            angle += 1
        elif not quoted and char == ">":
            angle = max(0, angle - 1)
        elif char == "," and not quoted and not angle:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return [piece for piece in pieces if piece.strip()]


_DATE_COMMENT_RE: Final = re.compile(r"\([^()]*\)")
_DATE_COLON_RE: Final = re.compile(r" ?: ?")
# A Date value longer than this is no date (RFC 5322 dates are about 31 characters; with
# comments and folding, still far below): it is not read, and the message is kept undated.
MAX_DATE_CHARS: Final = 1000


def _parse_date(value: str) -> datetime | None:
    if len(value) > MAX_DATE_CHARS:
        return None
    # RFC 5322 allows comments anywhere and spaces around the colons ("09(c):  55 : 06").
    # Comments go first: "00:19:00 (EDT) -0400" would read "(EDT)" as an unknown zone, i.e.
    # UTC, and ignore the real offset after it.
    text = _DATE_COLON_RE.sub(":", " ".join(_DATE_COMMENT_RE.sub(" ", value).split()))
    parsed = parsedate_tz(text)
    if parsed is not None:
        try:
            naive = datetime(*parsed[:6])  # naive on purpose: the offset is applied below
        except (ValueError, OverflowError):
            return None
        offset = parsed[9] or 0
        try:
            return (naive.replace(tzinfo=UTC) - timedelta(seconds=offset)).astimezone(UTC)
        except OverflowError:
            return None
    try:
        iso = datetime.fromisoformat(value.strip())
        return (iso if iso.tzinfo else iso.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):  # e.g. year 1 with a positive offset
        return None


# --------------------------------------------------------------------------------------
# MIME parts
# --------------------------------------------------------------------------------------

_HTML_TYPES: Final = frozenset({"text/html"})
_PLAIN_TYPES: Final = frozenset({"text/plain"})
_MARKUP_PLAIN_TYPES: Final = frozenset({"text/enriched", "text/richtext"})
_BODY_TYPES: Final = _HTML_TYPES | _PLAIN_TYPES | _MARKUP_PLAIN_TYPES
# Transfer encodings Message.get_payload(decode=True) undoes itself.
_PYTHON_DECODED_CTES: Final = frozenset(
    {"base64", "quoted-printable", "x-uuencode", "uuencode", "x-uue", "uue"}
)
# Alternatives that are not text but are worth keeping, e.g. an invitation next to the
# HTML version of the same invitation.
_ALTERNATIVE_KEEP_TYPES: Final = frozenset({"text/calendar", "application/ics"})
_META_CHARSET_RE: Final = re.compile(
    rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]{1,40})", re.IGNORECASE
)
# Base64 lines never contain inner blanks; text that does was never base64 encoded.
_NOT_BASE64_RE: Final = re.compile(r"[A-Za-z0-9+/=][ \t]+[A-Za-z0-9+/]")
_SERIALIZE_POLICY: Final = compat32.clone(linesep="\r\n", max_line_length=0)


@dataclass(frozen=True, slots=True)
class _PartInfo:
    content_type: str
    charset: str | None
    cte: str
    disposition: str | None
    filename: str | None
    content_id: str | None
    start: str | None  # multipart/related root Content-ID


def _first_header(part: _Part, name: str) -> str | None:
    for key, value in part.raw_items():
        if key.strip().lower() == name:
            return value
    return None


def _clean_filename(name: str | None) -> str | None:
    if name is None:
        return None
    cleaned = _CONTROL_RE.sub("", re.sub(r"[\r\n\t]+", " ", name)).strip()
    # Never hand out directory parts ("../../x", "C:\\x"): consumers save files by name.
    cleaned = re.split(r"[/\\]", cleaned)[-1].strip()
    return cleaned or None


def _disposition_type(params: _Params) -> str | None:
    value = params.value.strip().lower()
    if value.startswith("attach"):
        return "attachment"
    if value.startswith("inline"):
        return "inline"
    return None


def _strip_brackets(value: str | None) -> str | None:
    if value is None:
        return None
    stripped = value.strip().strip("<>").strip()
    return stripped or None


@dataclass(slots=True)
class _Block:
    """One displayed unit: a text part, or an alternative with its renderings."""

    plain: str | None = None
    html: str | None = None


@dataclass(slots=True)
class _Collected:
    blocks: list[_Block] = field(default_factory=list)
    attachments: list[AttachmentInfo] = field(default_factory=list)

    def has_html(self) -> bool:
        return any(block.html is not None for block in self.blocks)

    def html(self) -> str:
        return "\n".join(
            block.html if block.html is not None else _plain_to_html(block.plain or "")
            for block in self.blocks
        )

    def plain(self) -> str | None:
        """Plain text of every block, or None when some block only has HTML."""
        if any(block.plain is None for block in self.blocks):
            return None
        return "\n".join(block.plain or "" for block in self.blocks)


def _is_blank(markup: str) -> bool:
    return not _html_to_text(markup, enough=1).strip() if "<" in markup else not markup.strip()


def _child_path(path: str, number: int) -> str:
    return f"{path}.{number}" if path else str(number)


def _path_key(path: str) -> tuple[int, ...]:
    return tuple(int(number) for number in path.split("."))


def _children(payload: object) -> list[_Part]:
    return (
        [child for child in payload if isinstance(child, Message)]
        if isinstance(payload, list)
        else []
    )


def _payload(part: _Part) -> Any:
    """The part's payload as ``get_payload()`` gives it: its children, or its text.

    ``get_payload()`` decodes 8-bit text with the part's charset label and recovers from an
    unknown label (LookupError) but not from one the codec registry refuses outright (a NUL in
    it raises ValueError): such a label is treated as unknown, as the standard library does.
    """
    try:
        return part.get_payload()
    except ValueError:
        payload = vars(part)["_payload"]
        if isinstance(payload, str):
            return payload.encode("ascii", "surrogateescape").decode("ascii", "replace")
        return payload


def _is_container(part: _Part) -> bool:
    return isinstance(_payload(part), list) and part.get_content_maintype() == "multipart"


class _Walker:
    """Walks the MIME tree, numbering parts as IMAP does and sorting body from attachments.

    Rules: in multipart/alternative the last HTML rendering is the HTML body and the last
    plain one the text; in multipart/related the root (``start`` or the first part) is the
    body and the rest are inline resources; every other multipart shows its parts in
    order. A text/plain or text/html leaf is body text unless it is marked as an
    attachment or carries a file name. ``message/*`` parts are attachments as a whole.
    """

    def __init__(self, ctx: _Context) -> None:
        self._ctx = ctx
        self._infos: dict[int, _PartInfo] = {}

    def info(self, part: _Part) -> _PartInfo:
        cached = self._infos.get(id(part))
        if cached is None:
            cached = _part_info(part, self._ctx)
            self._infos[id(part)] = cached
        return cached

    def visit(
        self,
        part: _Part,
        path: str,
        out: _Collected,
        *,
        in_related: bool = False,
        force_attachment: bool = False,
    ) -> None:
        if _is_container(part):
            self._multipart(part, path, out, in_related or force_attachment, force_attachment)
            return
        info = self.info(part)
        own_path = path or "1"
        if force_attachment or not self._is_body_text(part, info):
            out.attachments.append(self._attachment(part, info, own_path, in_related))
        else:
            out.blocks.append(self._text_block(part, info))

    def _multipart(
        self, part: _Part, path: str, out: _Collected, in_related: bool, force: bool
    ) -> None:
        children = _children(_payload(part))
        pairs = [(child, _child_path(path, n)) for n, child in enumerate(children, start=1)]
        subtype = part.get_content_subtype()
        if force:
            for child, child_path in pairs:
                self.visit(child, child_path, out, in_related=in_related, force_attachment=True)
        elif subtype == "alternative":
            self._alternative(pairs, out)
        elif subtype == "related":
            self._related(part, pairs, out)
        else:
            for child, child_path in pairs:
                self.visit(child, child_path, out, in_related=in_related)

    def _alternative(self, pairs: list[tuple[_Part, str]], out: _Collected) -> None:
        html_pick: _Collected | None = None
        text_pick: _Collected | None = None
        extras: list[AttachmentInfo] = []
        for child, child_path in pairs:
            sub = _Collected()
            self.visit(child, child_path, sub)
            # The last rendering wins (RFC 2046), but an empty one never replaces a real
            # one: broken boundaries often leave an empty part at the end.
            if sub.has_html():
                if html_pick is None or not _is_blank(sub.html()):
                    html_pick = sub
            elif sub.blocks and (text_pick is None or (sub.plain() or "").strip()):
                text_pick = sub
            else:
                extras.extend(
                    a
                    for a in sub.attachments
                    if a.filename or a.content_type in _ALTERNATIVE_KEEP_TYPES
                )
        if html_pick is None and text_pick is None:
            out.attachments.extend(extras)
            return
        plain = text_pick.plain() if text_pick is not None else None
        if plain is None and html_pick is not None:
            plain = html_pick.plain()
        out.blocks.append(
            _Block(plain=plain, html=html_pick.html() if html_pick is not None else None)
        )
        for pick in (text_pick, html_pick):
            if pick is not None:
                out.attachments.extend(pick.attachments)
        out.attachments.extend(extras)

    def _related(self, part: _Part, pairs: list[tuple[_Part, str]], out: _Collected) -> None:
        if not pairs:
            return
        root_index = 0
        start = _strip_brackets(self.info(part).start)
        cids = [self.info(child).content_id for child, _ in pairs]
        if start is not None and start in cids:
            root_index = cids.index(start)
        elif not _is_container(pairs[0][0]) and self.info(pairs[0][0]).content_type != "text/html":
            # MHTML puts resources first and finds the root by Content-Location.
            html_roots = [
                i
                for i, (child, _) in enumerate(pairs)
                if self.info(child).content_type == "text/html"
            ]
            root_index = html_roots[0] if html_roots else 0
        for index, (child, child_path) in enumerate(pairs):
            if index == root_index:
                self.visit(child, child_path, out)
            else:
                self.visit(child, child_path, out, in_related=True, force_attachment=True)

    def _is_body_text(self, part: _Part, info: _PartInfo) -> bool:
        if isinstance(_payload(part), list):
            return False  # message/*: an enclosed message is an attachment
        if part.get_content_maintype() == "multipart":
            return True  # boundary never found: show the raw content as text
        return (
            info.content_type in _BODY_TYPES
            and info.disposition != "attachment"
            and info.filename is None
        )

    def _text_block(self, part: _Part, info: _PartInfo) -> _Block:
        data = _payload_bytes(part, info, self._ctx, for_text=True)
        is_html = info.content_type in _HTML_TYPES
        sniffed = None
        if is_html and _resolve_charset(info.charset) is None:
            meta = _META_CHARSET_RE.search(data[:SNIFF_BYTES])
            sniffed = meta.group(1).decode("ascii") if meta else None
        text = self._ctx.decode_text(data, info.charset, sniffed)
        text = _clean_text(text.replace("\r\n", "\n").replace("\r", "\n"))
        if is_html:
            return _Block(html=text)
        if info.content_type in _MARKUP_PLAIN_TYPES:
            text = _strip_enriched(text)
        return _Block(plain=text)

    def _attachment(
        self, part: _Part, info: _PartInfo, path: str, in_related: bool
    ) -> AttachmentInfo:
        payload = _payload(part)
        elided = self._ctx.elided.get(payload.strip()) if isinstance(payload, str) else None
        size = elided if elided is not None else len(_payload_bytes(part, info, self._ctx))
        disposition = info.disposition
        is_inline = disposition == "inline" or (
            disposition is None and in_related and info.content_id is not None
        )
        return AttachmentInfo(
            filename=info.filename,
            content_type=info.content_type,
            size=size,
            content_id=info.content_id,
            is_inline=is_inline,
            part_path=path,
            content_disposition=disposition,
        )


def _part_info(part: _Part, ctx: _Context) -> _PartInfo:
    raw_type = _first_header(part, "content-type")
    content_type = _parse_params(raw_type, ctx)
    disposition = _parse_params(_first_header(part, "content-disposition"), ctx)
    media = _media_type(content_type, part.get_default_type())
    if part.get_content_maintype() == "multipart" and not isinstance(_payload(part), list):
        media = "text/plain"
    filename = (
        disposition.params.get("filename")
        or content_type.params.get("name")
        or disposition.params.get("name")
        or content_type.params.get("filename")
    )
    if filename and raw_type is not None and not content_type.value.strip():
        media = "application/octet-stream"  # "Content-Type: ; name=x.jpg"
    cte_raw = _first_header(part, "content-transfer-encoding") or ""
    cte = _unfold(cte_raw).split(";", 1)[0].strip().lower()
    raw_cid = _first_header(part, "content-id")
    content_id = _strip_brackets(_decode_header_value(raw_cid, ctx)) if raw_cid else None
    return _PartInfo(
        content_type=media,
        charset=content_type.params.get("charset"),
        cte=cte,
        disposition=_disposition_type(disposition),
        filename=_clean_filename(filename),
        content_id=content_id,
        start=content_type.params.get("start"),
    )


def _serialize_body(part: _Part, ctx: _Context) -> bytes:
    """Bytes of a part's body when the parser turned it into objects (message/*)."""
    buffer = BytesIO()
    try:
        BytesGenerator(buffer, mangle_from_=False, policy=_SERIALIZE_POLICY).flatten(part)
    # The generator has many failure modes on broken input; a size of 0 beats losing mail.
    except Exception:
        ctx.defect("SerializationFailed")
        return b""
    return _split(buffer.getvalue())[1]


def _payload_bytes(part: _Part, info: _PartInfo, ctx: _Context, *, for_text: bool = False) -> bytes:
    """The part's content with the transfer encoding undone (decoded exactly once)."""
    payload = _payload(part)
    if isinstance(payload, list):
        raw = _serialize_body(part, ctx)
        if info.cte == "base64":
            return _b64_lenient(raw)
        return binascii.a2b_qp(raw) if info.cte == "quoted-printable" else raw
    if info.cte == "base64":
        text = payload if isinstance(payload, str) else ""
        if for_text and _NOT_BASE64_RE.search(text[:SNIFF_BYTES]):
            ctx.defect("FalseBase64Text")
            return _raw_payload(part)
        try:
            # A str of ASCII goes straight to C, without an encoded copy of the payload.
            return binascii.a2b_base64(text)
        except (ValueError, binascii.Error):
            ctx.defect("InvalidBase64")
            return _b64_lenient(_raw_payload(part))
    # get_payload(decode=True) undoes quoted-printable and uuencode when the header spells
    # them exactly, and returns the raw bytes otherwise (8-bit bytes intact, unlike
    # get_payload(), which replaces them).
    data = part.get_payload(decode=True)
    data = data if isinstance(data, bytes) else b""
    if info.cte == "quoted-printable" and not _python_decodes(part):
        return binascii.a2b_qp(data)  # e.g. "quoted-printable;" with a stray semicolon
    return data


def _python_decodes(part: _Part) -> bool:
    return str(part.get("content-transfer-encoding", "")).lower() in _PYTHON_DECODED_CTES


def _raw_payload(part: _Part) -> bytes:
    if _python_decodes(part):
        text = _payload(part)
        return _to_bytes(text) if isinstance(text, str) else b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _strip_enriched(text: str) -> str:
    return re.sub(r"<[^<>]*>", "", text.replace("<<", "\x00")).replace("\x00", "<")


def _plain_to_html(text: str) -> str:
    return f'<div style="white-space: pre-wrap">{html.escape(text)}</div>'


# --------------------------------------------------------------------------------------
# Text extraction
# --------------------------------------------------------------------------------------

_SKIP_TAGS: Final = frozenset({"script", "style", "head", "title", "template"})
_INLINE_TAGS: Final = frozenset(
    {
        "a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "data", "dfn", "em", "font",
        "i", "kbd", "mark", "q", "s", "samp", "small", "span", "strike", "strong", "sub",
        "sup", "time", "tt", "u", "var", "wbr", "o:p",
    }
)  # fmt: skip
_INVISIBLE: Final = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u034f\u00ad\ufffc"))
_WORD_RE: Final = re.compile(r"\S+")
_HTML_CHUNK: Final = 8192
# HTML read for visible text (snippets, blank renderings): a snippet's 100 characters are in
# the first few kilobytes of any real message.
HTML_TEXT_SCAN_CHARS: Final = 256 * 1024


class _HtmlText(HTMLParser):
    """Collects the visible text of HTML; block-level tags separate words."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.visible_chars = 0
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skip_depth = 0  # an unclosed <head> ends where the body starts
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag not in _INLINE_TAGS:
            self.pieces.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _INLINE_TAGS and tag not in _SKIP_TAGS:
            self.pieces.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag not in _INLINE_TAGS:
            self.pieces.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.pieces.append(data)
            self.visible_chars += len(data.strip())


def _html_to_text(markup: str, enough: int | None = None) -> str:
    """Visible text of HTML; stops early once ``enough`` visible characters were seen.

    Only the first :data:`HTML_TEXT_SCAN_CHARS` are read: ``html.parser`` rescans an
    unterminated comment or tag from its start on every chunk fed (quadratic time in the
    markup), and the callers only need the beginning (a snippet, "is it blank?").
    """
    markup = markup[:HTML_TEXT_SCAN_CHARS]
    parser = _HtmlText()
    try:
        for start in range(0, len(markup), _HTML_CHUNK):
            parser.feed(markup[start : start + _HTML_CHUNK])
            if enough is not None and parser.visible_chars >= enough:
                break
        parser.close()
    except (AssertionError, ValueError, IndexError):
        # html.parser gives up on some malformed declarations; strip tags crudely.
        stripped = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", markup)
        return html.unescape(re.sub(r"(?s)<[^>]*>", " ", stripped))
    return "".join(parser.pieces)


def _collapsed_prefix(texts: Iterable[str], limit: int) -> str:
    """The first ``limit`` characters of the texts with whitespace collapsed (lazily)."""
    words: list[str] = []
    length = 0
    for text in texts:
        for match in _WORD_RE.finditer(text):
            word = match.group(0).translate(_INVISIBLE)
            if not word:
                continue
            words.append(word)
            length += len(word) + 1
            if length > limit:
                return " ".join(words)[:limit].rstrip()
    return " ".join(words)[:limit].rstrip()


def _snippet(blocks: Sequence[_Block]) -> str:
    def texts() -> Iterable[str]:
        for block in blocks:
            if block.plain is not None and (block.plain.strip() or block.html is None):
                yield block.plain
            elif block.html is not None:
                yield _html_to_text(block.html, enough=SNIPPET_CHARS * 2)

    return _collapsed_prefix(texts(), SNIPPET_CHARS)


# --------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------

# Matched at a position (no "^"), prefix after prefix. Possessive whitespace: "re" followed by
# a long run of spaces and no colon must not try every split of the run (quadratic time).
_SUBJECT_PREFIX_RE: Final = re.compile(
    r"""\s*+(?:
        (?:re|fwd?|aw|wg|sv|vs|antw|r|rif|tr|réf|ref|rv|enc|odp|ynt|
           回复|回覆|答复|转发|轉寄|轉發)
        \s*+(?:[\[(\uff08\uff3b]\d+[\])\uff09\uff3d]|\^\d+)?\s*+[:\uff1a]
      | [\[\uff3b\u3010][^\]\uff3d\u3011]*[\]\uff3d\u3011]
    )""",  # \uff08/\uff09 \uff3b/\uff3d \u3010/\u3011 \uff1a: full-width ( ) [ ] 【 】 :
    re.IGNORECASE | re.VERBOSE,
)


def normalize_subject(subject: str) -> str:
    """Reduce a subject to its thread key.

    Strips reply and forward prefixes in many languages (``Re:``, ``Fwd:``, ``AW:``,
    ``SV:``, ``Réf:``, ``回复:``, ``Re[2]:``…, full-width colons included) and
    ``[list-tag]`` prefixes, repeatedly; then collapses whitespace and case-folds.
    Nothing else changes, so a subject without prefixes normalizes to
    ``" ".join(subject.split()).casefold()``.

    Args:
        subject: A decoded subject.

    Returns:
        The normalized subject, ``""`` when nothing is left.
    """
    position = 0
    while match := _SUBJECT_PREFIX_RE.match(subject, position):
        if match.end() == position:
            break
        position = match.end()  # no copy per prefix: 100,000 "Re: " cost linear time
    return " ".join(subject[position:].split()).casefold()


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


_BOUNDARY_PARAM_RE: Final = re.compile(
    rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE
)
_PART_CTYPE_RE: Final = re.compile(rb"^content-type[ \t]*:[ \t]*([^;\s]*)", re.I | re.M)
_PART_CTE_RE: Final = re.compile(rb"^content-transfer-encoding[ \t]*:[ \t]*([^;\s]*)", re.I | re.M)
_B64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_ELIDED_TYPES: Final = (b"multipart/", b"message/", b"text/")


def _b64_decoded_size(body: bytes) -> int | None:
    """Decoded size of clean base64 (None if anything but base64 and white space is in it)."""
    # One pass over the body: what is left without the alphabet is small (line breaks,
    # padding) and must be nothing else.
    rest = body.translate(None, _B64_ALPHABET)
    if rest.translate(None, b"= \t\r\n"):
        return None
    digits = len(body) - len(rest)
    size = digits // 4 * 3 + (0, 0, 1, 2)[digits % 4]
    return size if digits % 4 != 1 else None


def _find_delimiters(data: bytes, boundary: bytes) -> list[tuple[int, int, bool]]:
    found: list[tuple[int, int, bool]] = []
    marker = b"\n--" + boundary
    at = data.find(marker)
    while at != -1:
        start = at + 1
        line_end = data.find(b"\n", start)
        line_end = len(data) if line_end == -1 else line_end + 1
        rest = data[start + len(marker) - 1 : line_end].strip()
        if not rest or rest == b"--":  # "--b" or "--b--", nothing else on the line
            found.append((start, line_end, rest == b"--"))
        at = data.find(marker, line_end - 1)
    return found


def _header_block_at(data: bytes, start: int, limit: int) -> int:
    """End (exclusive) of the header block that starts at ``start``, or -1."""
    for sep in (b"\n\r\n", b"\n\n"):
        end = data.find(sep, start, limit)
        if end != -1:
            return end + len(sep)
    return -1


def _delimiter_starts(data: bytes) -> list[tuple[int, int, bool]] | None:
    """Lines that start with ``--<boundary>`` for every boundary the message declares.

    Boundaries are looked for only in header blocks (the top one, then each part's), never in
    bodies, so megabytes of base64 are scanned by ``bytes.find`` alone.

    Returns:
        (line start, line end after its line break, is a close delimiter) in order, or None
        when the message encloses a message (``message/*``), whose size is measured by
        serializing it, or declares more than :data:`ELIDE_MAX_BOUNDARIES` boundaries or
        :data:`ELIDE_MAX_DELIMITERS` delimiter lines (each boundary costs a scan of the whole
        message: deep nesting would cost quadratic time): such mail is parsed as it is.
    """
    top_end = _header_block_at(b"\n" + data, 0, len(data) + 1)
    pending = [m.group(1) or m.group(2) for m in _BOUNDARY_PARAM_RE.finditer(data[:top_end])]
    seen: set[bytes] = set()
    found: list[tuple[int, int, bool]] = []
    while pending:
        boundary = pending.pop()
        if boundary in seen:
            continue
        seen.add(boundary)
        if len(seen) > ELIDE_MAX_BOUNDARIES:
            return None
        for start, line_end, closes in _find_delimiters(data, boundary):
            if len(found) >= ELIDE_MAX_DELIMITERS:
                return None
            found.append((start, line_end, closes))
            if closes:
                continue
            head_end = _header_block_at(data, line_end - 1, min(len(data), line_end + 16384))
            head = data[line_end:head_end] if head_end != -1 else b""
            ctype = _PART_CTYPE_RE.search(head)
            if ctype and ctype.group(1).lower().startswith(b"message/"):
                return None
            pending.extend(m.group(1) or m.group(2) for m in _BOUNDARY_PARAM_RE.finditer(head))
    return sorted(found)


def _elide_attachment_bodies(data: bytes, ctx: _Context) -> bytes:
    """Replace large base64 attachment bodies with short placeholders, remembering sizes.

    The parser then builds the same tree without splitting megabytes of base64 into lines.
    Text, multipart and message parts are never elided: they are read, not only sized.
    """
    if len(data) < ELIDE_MIN_MESSAGE_BYTES:
        return data
    delimiters = _delimiter_starts(data)
    if delimiters is None or len(delimiters) < 2:
        return data
    pieces: list[bytes] = []
    copied = 0
    for (_, seg_start, closes), (next_start, _, _) in itertools.pairwise(delimiters):
        if closes or next_start - seg_start < ELIDE_MIN_PART_BYTES:
            continue
        head_end = _header_block_at(data, seg_start - 1, next_start)
        if head_end == -1:
            continue
        head = data[seg_start:head_end]
        ctype = _PART_CTYPE_RE.search(head)
        cte = _PART_CTE_RE.search(head)
        media = ctype.group(1).lower() if ctype else b"text/plain"
        if not cte or cte.group(1).lower() != b"base64" or media.startswith(_NOT_ELIDED_TYPES):
            continue
        # the line break before the next delimiter belongs to the delimiter
        body_end = next_start - (2 if data[next_start - 2 : next_start] == b"\r\n" else 1)
        size = _b64_decoded_size(data[head_end:body_end])
        if size is None:
            continue  # not clean base64: let the parser and the lenient decoder see it all
        token = f"ipelided{len(ctx.elided):06d}"
        ctx.elided[token] = size
        pieces += [data[copied:head_end], token.encode("ascii")]
        copied = body_end
    if not pieces:
        return data
    pieces.append(data[copied:])
    return b"".join(pieces)


_HEADERS_ONLY: Final = BytesParser(policy=compat32)
_DELIMITER_TAIL_RE: Final = re.compile(rb"(--)?[ \t]*(\r\n|\n)?")
MAX_FAST_DEPTH: Final = 16
# Parts nested deeper than this (multiparts and enclosed messages counted alike) are kept as
# one opaque attachment each, unparsed: mailers nest a few levels, forward chains a few dozen;
# every recursive walk of the tree (parser, generator, walker) stays far below Python's stack
# limit of about 1,000 frames (each level costs up to 5).
MAX_MIME_DEPTH: Final = 64
# Consecutive junk lines inside a part's header block that are still repaired when a field
# follows them (more of them: the part's body started at the first one).
MAX_JUNK_HEADER_LINES: Final = 4
_FIELD_TEXT_RE: Final = re.compile(r"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# The feed parser's own line tests and its "wait for more input" sentinel (not in the stubs).
_FEED: Final = vars(email.feedparser)
_NEED_MORE_DATA: Final[object] = _FEED["NeedMoreData"]
_HEADER_LINE_RE: Final[re.Pattern[str]] = _FEED["headerRE"]
_BLANK_LINE_RE: Final[re.Pattern[str]] = _FEED["NLCRE"]


def _fast_structure(data: bytes) -> _Part | None:
    """The tree the feed parser would build, for well-formed mail, found with ``bytes.find``.

    ``BytesFeedParser`` reads a message line by line in Python and compiles a regular
    expression for every boundary; for the common case (consistent line breaks, every
    multipart closed, no enclosed messages) cutting the parts at their delimiter lines gives
    the same tree at a fraction of the cost. Each part's header block still goes through the
    standard parser. Whenever anything is unusual this returns None and the caller parses
    normally, so broken mail keeps the feed parser's recovery and defects (tests compare both
    trees over the corpus).
    """
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None  # a lone CR ends a line for the feed parser, not for the search below
    return _fast_part(data, 0)


def _fast_part(chunk: bytes, depth: int) -> _Part | None:
    end = _header_end(chunk)
    part: _Part = _HEADERS_ONLY.parsebytes(chunk[:end], headersonly=True)
    if part.defects or _payload(part) or depth > MAX_FAST_DEPTH:
        return None  # a line that is no header field, or absurd nesting
    body = chunk[end:]
    maintype = part.get_content_maintype()
    if maintype == "message" or part.get_content_type() == "multipart/digest":
        return None  # enclosed messages (digest parts default to message/rfc822)
    if maintype != "multipart":
        part.set_payload(body.decode("ascii", "surrogateescape"))
        return part
    boundary = part.get_boundary()
    cte = part.get("content-transfer-encoding", "7bit").lower()
    if not boundary or cte not in ("7bit", "8bit", "binary"):
        return None  # the feed parser records a defect for either
    try:  # the feed parser compares the boundary with lines read as ASCII
        marker = b"\n--" + boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return None
    text = b"\n" + body  # a delimiter may open the body
    # (line start, after its line break, closes, has a line break)
    delimiters: list[tuple[int, int, bool, bool]] = []
    at = text.find(marker)
    while at != -1:
        tail = _DELIMITER_TAIL_RE.match(text, at + len(marker))
        assert tail is not None  # every part of the pattern is optional
        if tail.end() == len(text) or tail.group(2):
            if delimiters and delimiters[-1][2]:
                return None  # a delimiter after the close delimiter
            delimiters.append((at + 1, tail.end(), bool(tail.group(1)), bool(tail.group(2))))
        at = text.find(marker, at + 1)
    if len(delimiters) < 2 or not delimiters[-1][2] or any(d[2] for d in delimiters[:-1]):
        return None  # no part, or not closed: the feed parser records the defects

    def before(start: int) -> int:
        # the line break ending the line before a delimiter belongs to the delimiter
        return start - 2 if text[start - 2 : start] == b"\r\n" else start - 1

    children: list[_Part | str] = []
    for (_, opened, _, _), (next_start, _, _, _) in itertools.pairwise(delimiters):
        child = _fast_part(text[opened : max(opened, before(next_start))], depth + 1)
        if child is None:
            return None
        children.append(child)
    part.set_payload(children)
    first = delimiters[0][0]
    part.preamble = (
        text[1 : before(first)].decode("ascii", "surrogateescape") if first > 1 else None
    )
    # Inside a multipart, the feed parser saw the close delimiter's line break (cut off here
    # as the one before the parent's next delimiter): without one, the epilogue was empty.
    closed_at, has_break = delimiters[-1][1], delimiters[-1][3]
    epilogue = text[closed_at:].decode("ascii", "surrogateescape")
    part.epilogue = None if depth and not has_break else epilogue
    return part


class NestingTooDeepDefect(MessageDefect):
    """A part nested deeper than :data:`MAX_MIME_DEPTH`: kept whole as an opaque part."""


class _BoundedParser(BytesFeedParser):  # type: ignore[type-arg]
    """The standard feed parser with two changes, both applied as parts are read.

    * Nesting is capped at :data:`MAX_MIME_DEPTH` (multiparts and enclosed messages alike):
      a deeper part is not parsed but kept whole (its header and body bytes) as one
      ``application/octet-stream`` part with a :class:`NestingTooDeepDefect`. Parsing, the
      walks over the tree and serialization all recurse once per level, and Python's stack
      ends near 1,000 frames; and every line is checked against every enclosing boundary,
      so unbounded nesting also costs quadratic time.
    * A part's header block gets the repair the top-level block gets
      (:func:`_repair_header_block`): a junk line followed by more fields becomes a
      continuation line, so the fields after it (a file name, the transfer encoding) are
      not read as the start of the body.

    Relies on ``FeedParser``'s ``_parsegen``/``_new_message``/``_input``/``_msgstack``,
    unchanged since Python 3.3 (``tests/unit/test_mime_hostile.py`` fails if they change).
    """

    def __init__(self) -> None:
        super().__init__(policy=compat32)
        self.repaired = False

    def _parsegen(self) -> Iterator[object]:  # type: ignore[override]
        if len(self._msgstack) >= MAX_MIME_DEPTH:  # type: ignore[attr-defined]
            yield from self._opaque_part()
            return
        if self._msgstack:  # type: ignore[attr-defined]
            yield from self._repair_part_header()
        yield from super()._parsegen()  # type: ignore[misc]

    def _opaque_part(self) -> Iterator[object]:
        self._new_message()  # type: ignore[attr-defined]
        part: _Part = self._cur  # type: ignore[attr-defined]
        lines: list[str] = []
        for line in self._input:  # type: ignore[attr-defined]
            if line is _NEED_MORE_DATA:
                yield _NEED_MORE_DATA
                continue
            lines.append(line)
        part.set_type("application/octet-stream")
        part.set_payload("".join(lines))
        part.defects.append(NestingTooDeepDefect())

    def _repair_part_header(self) -> Iterator[object]:
        """Read a part's header block ahead, repair it, and push it back for the parser."""
        stream = self._input  # type: ignore[attr-defined]
        lines: list[str] = []
        junk: list[str] = []  # non-field lines after a field: repaired if a field follows
        while True:
            line = stream.readline()
            if line is _NEED_MORE_DATA:
                yield _NEED_MORE_DATA
                continue
            if line == "" or _BLANK_LINE_RE.match(line):
                lines.extend(junk)
                if line:
                    lines.append(line)
                break
            if not _HEADER_LINE_RE.match(line) and (field := _FIELD_TEXT_RE.match(line)):
                line = field.group(1) + ":" + line[field.end() :]  # "Name :" (obsolete)
                self.repaired = True
            if _HEADER_LINE_RE.match(line):
                if junk:
                    lines.extend(" " + j for j in junk)
                    junk.clear()
                    self.repaired = True
                lines.append(line)
                continue
            if not lines or len(junk) >= MAX_JUNK_HEADER_LINES:
                lines.extend([*junk, line])
                break
            junk.append(line)
        for line in reversed(lines):
            stream.unreadline(line)


def _parse_bytes(data: bytes) -> _Part:
    """A message or part parsed by :class:`_BoundedParser` (never by the unbounded parser)."""
    parser = _BoundedParser()
    view = memoryview(data)
    for offset in range(0, len(data), PARSER_CHUNK_BYTES):
        parser.feed(view[offset : offset + PARSER_CHUNK_BYTES].tobytes())
    return parser.close()


def _parse_structure(data: bytes, ctx: _Context, *, elide: bool = True) -> _Part:
    if elide:
        data = _elide_attachment_bodies(data, ctx)
    parser = _BoundedParser()
    end = _header_end(data)
    repaired = _repair_header_block(data[:end])
    start = 0
    if repaired is not None:
        ctx.defect("RepairedHeaderBlock")
        parser.feed(repaired)
        start = end
    else:
        fast = _fast_structure(data)
        if fast is not None:
            return fast
    # Fed in chunks: parsebytes() would decode the whole message into one str and split
    # it into lines at once, tripling peak memory on a 25 MB message.
    view = memoryview(data)
    for offset in range(start, len(data), PARSER_CHUNK_BYTES):
        parser.feed(view[offset : offset + PARSER_CHUNK_BYTES].tobytes())
    root = parser.close()
    if parser.repaired:
        ctx.defect("RepairedHeaderBlock")
    return root


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
    date: datetime | None = None
    for value in values("date"):
        date = _parse_date(_decode_header_value(value, ctx))
        if date is not None:
            break
    else:
        if values("date"):
            ctx.defect("InvalidDate")

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
        references=tuple(references),
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
