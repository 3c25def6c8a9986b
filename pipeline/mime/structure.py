"""Structure: raw bytes to a compat32 tree, in time linear in the input.

Large base64 attachment bodies are elided first (sized, never kept); well-formed mail is cut
at its delimiter lines with ``bytes.find`` (``_fast_structure``); anything unusual goes
through ``_BoundedParser``, the feed parser with nesting capped at :data:`MAX_MIME_DEPTH` and
part header blocks repaired.
"""

from __future__ import annotations

import email.feedparser
import itertools
import re
from collections.abc import Iterator
from email.errors import MessageDefect
from email.feedparser import BytesFeedParser
from email.parser import BytesParser
from email.policy import compat32
from typing import Final

from pipeline.mime.charsets import _Context
from pipeline.mime.framing import _header_end, _repair_header_block
from pipeline.mime.parts import _payload
from pipeline.mime.values import _Part

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
