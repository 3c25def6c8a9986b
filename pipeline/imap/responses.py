"""What an IMAP server answers, read into plain typed values (no I/O here).

The values the sync engine works with (:class:`FolderInfo`, :class:`SelectInfo`,
:class:`FolderStatus`, :class:`MessageMeta`, :class:`FetchedMessage`) and the parsers that
make them from response lines: LIST and LIST-STATUS lines, FETCH metadata, VANISHED UID sets,
INTERNALDATE; plus the few things commands are written with (:func:`imap_date`,
:func:`uid_set`, :func:`folder_name_bytes`) and what a server's "come back later" looks like
(:data:`THROTTLE_MARKERS`). :mod:`pipeline.imap.client` (the session) and
:mod:`pipeline.imap.aio` (the IDLE client) both read with these; the IDLE client's values are
:class:`Change` (what an untagged response says, :func:`classify`), :class:`Notices` (untagged
responses coalesced) and :class:`Snapshot` (what EXAMINE said).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any

from imap_tools.imap_utf7 import utf7_decode

from pipeline.errors import ImapProtocolError
from pipeline.imap.roles import detect_role

THROTTLE_MARKERS = (
    "[limit]",
    "[throttled]",
    "[unavailable]",
    "too many connections",
    "too many simultaneous",
    "maximum number of connections",
    "try again later",
)
BYE_TEXT_BYTES = 120  # of a BYE, greeting or notice quoted in an error message or kept
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_FETCH_DATE = re.compile(rb'INTERNALDATE "([^"]*)"')
_FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_FETCH_MODSEQ = re.compile(rb"MODSEQ \((\d+)\)")
STATUS_LINE = re.compile(rb'^(?P<name>"(?:[^"\\]|\\.)*"|[^ "(){]+) \((?P<items>[^()]*)\)$')
# digit counts are bounded: a message number is 32-bit, a mod-sequence 63-bit; a longer "number"
# from a hostile server is no match (and never reaches int(), which refuses 4,300+ digits)
NUMBERED = re.compile(rb"^\* (\d{1,10}) ([A-Za-z]+)", re.I)
_LIST_LINE = re.compile(rb'\((?P<flags>[^)]*)\) (?P<delim>"[^"]*"|NIL) (?P<name>.+)$')


@dataclass(frozen=True)
class FolderInfo:
    """A folder as LIST reports it."""

    raw_name: str  # the server's bytes, one char per byte (ISO 8859-1): used in commands
    name: str  # decoded for people
    delimiter: str | None
    attributes: tuple[str, ...]
    role: str | None

    @property
    def selectable(self) -> bool:
        """False for ``\\Noselect`` / ``\\NonExistent`` containers."""
        lowered = {a.lower() for a in self.attributes}
        return not ({"\\noselect", "\\nonexistent"} & lowered)


@dataclass(frozen=True)
class SelectInfo:
    """What SELECT/EXAMINE tells about a folder."""

    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None
    # the STATUS sent just before this SELECT, when one was (``want_uidnext`` on a server
    # whose SELECT omits UIDNEXT, or ``want_status``): its counts are no newer than the view
    status: FolderStatus | None = None


@dataclass(frozen=True)
class FolderStatus:
    """What STATUS tells about a folder without selecting it."""

    messages: int
    uidnext: int | None
    uidvalidity: int
    unseen: int | None = None
    highestmodseq: int | None = None


@dataclass(frozen=True)
class MessageMeta:
    """A message's envelope facts, without its content."""

    uid: int
    size: int
    internaldate: datetime | None  # None: the server's INTERNALDATE could not be read
    flags: tuple[str, ...]
    modseq: int | None = None


@dataclass(frozen=True)
class FetchedMessage:
    """A whole message as the server holds it."""

    uid: int
    size: int
    internaldate: datetime | None  # None: the server's INTERNALDATE could not be read
    flags: tuple[str, ...]
    raw: bytes = field(repr=False)
    modseq: int | None = None


_INTERNALDATE_RE = re.compile(
    r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\s*"
)
_MONTH_NUMBERS = {name.lower(): number for number, name in enumerate(MONTHS, start=1)}


def parse_internaldate(value: str) -> datetime:
    """Parse an IMAP INTERNALDATE (``"17-Jul-1996 02:44:25 -0700"``) into aware UTC.

    By hand rather than with ``strptime`` (called twice per synced message, it was a visible
    share of a sync's CPU), and independent of the locale's month names.
    """
    match = _INTERNALDATE_RE.fullmatch(value)
    month = _MONTH_NUMBERS.get(match.group(2).lower(), 0) if match else 0
    try:
        if match is None or not month:
            raise ValueError(value)
        day, _, year, hour, minute, second, sign, off_h, off_m = match.groups()
        offset = timedelta(hours=int(off_h), minutes=int(off_m)) * (-1 if sign == "-" else 1)
        local = datetime(int(year), month, int(day), int(hour), int(minute), int(second))
        return (local - offset).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ImapProtocolError(f"Unreadable INTERNALDATE {value!r} from the server.") from exc


def imap_date(day: date) -> str:
    """A date in IMAP SEARCH syntax (``1-Feb-2026``), independent of the locale."""
    return f"{day.day}-{MONTHS[day.month - 1]}-{day.year}"


def uid_set(uids: Iterable[int]) -> str:
    """Compress UIDs into an IMAP sequence set (``1:5,7,9:12``)."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("uid_set needs at least one UID")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


def as_text(value: Any) -> str:
    """An imaplib response item (bytes, or anything else) as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def is_throttle(message: str | bytes) -> bool:
    """Whether a server's text asks us to come back later ([UNAVAILABLE], too many …)."""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    lowered = text.lower()
    return any(marker in lowered for marker in THROTTLE_MARKERS)


def folder_name_bytes(raw_name: str) -> bytes:
    """A folder's name as the server spelled it (the inverse of ``FolderInfo.raw_name``)."""
    try:
        return raw_name.encode("latin-1")
    except UnicodeEncodeError:  # a name that did not come from LIST (e.g. typed by a person)
        return raw_name.encode("utf-8")


def _display_name(raw: bytes) -> str:
    """A folder name for people: modified UTF-7 (RFC 3501), or 8-bit as UTF-8 if it is."""
    if raw.upper() == b"INBOX":
        return "INBOX"
    if raw.isascii():
        try:
            return str(utf7_decode(raw))
        except (UnicodeError, ValueError):
            return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


def folder_status(items: str) -> FolderStatus | None:
    """A STATUS response's ``NAME value`` pairs; None without UIDVALIDITY."""
    inner = items.split()
    try:
        values = {inner[i].upper(): int(inner[i + 1]) for i in range(0, len(inner) - 1, 2)}
    except ValueError:
        return None
    if "UIDVALIDITY" not in values:
        return None
    return FolderStatus(
        messages=values.get("MESSAGES", 0),
        uidnext=values.get("UIDNEXT"),
        uidvalidity=values["UIDVALIDITY"],
        unseen=values.get("UNSEEN"),
        highestmodseq=values.get("HIGHESTMODSEQ"),
    )


def unquote_name(raw: bytes) -> bytes:
    """A quoted name's bytes without quotes and escapes; an atom as it is."""
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        return re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    return raw


def folder_info(line: bytes) -> FolderInfo | None:
    """One LIST line (a literal name already inlined), or None if it is not one."""
    match = _LIST_LINE.match(line)
    if not match:
        return None
    attrs = tuple(as_text(a) for a in match["flags"].split())
    delim_raw = match["delim"]
    delim = None if delim_raw == b"NIL" else as_text(delim_raw[1:-1]).replace("\\\\", "\\")
    name_bytes = unquote_name(match["name"].strip())
    raw_name = name_bytes.decode("latin-1")  # lossless: any bytes go back unchanged
    name = _display_name(name_bytes)
    return FolderInfo(raw_name, name, delim, attrs, detect_role(name, attrs, delim))


def message_meta(line: bytes) -> MessageMeta | None:
    """A FETCH line's UID, size, INTERNALDATE, flags and MODSEQ; None for a FETCH without
    UID, size and date (an unsolicited flag change, not an answer to ours)."""
    uid = FETCH_UID.search(line)
    size = _FETCH_SIZE.search(line)
    when = _FETCH_DATE.search(line)
    if not (uid and size and when):
        return None  # an unsolicited FETCH (flag change elsewhere), not ours
    flags = _FETCH_FLAGS.search(line)
    modseq = _FETCH_MODSEQ.search(line)
    try:
        internaldate: datetime | None = parse_internaldate(as_text(when[1]))
    except ImapProtocolError:
        internaldate = None  # one message's garbage date must not fail its folder
    return MessageMeta(
        uid=int(uid[1]),
        size=int(size[1]),
        internaldate=internaldate,
        # \Recent is per-session noise, not a property of the message
        flags=tuple(f for f in (as_text(x) for x in flags[1].split()) if f != "\\Recent")
        if flags
        else (),
        modseq=int(modseq[1]) if modseq else None,
    )


def vanished_uids(lines: Iterable[Any], limit: int) -> set[int] | None:
    """The UIDs of VANISHED responses (``(EARLIER) 1:3,7``); None past ``limit`` UIDs."""
    vanished: set[int] = set()
    for line in lines:
        if line is None:  # imaplib's answer when the server sent no VANISHED
            continue
        text = as_text(line).strip()
        if text.upper().startswith("(EARLIER)"):
            text = text[len("(EARLIER)") :].strip()
        for part in text.split(","):
            if not part:
                continue
            first, _, last = part.partition(":")
            lo, hi = sorted((int(first), int(last or first)))
            if len(vanished) + hi - lo + 1 > limit:
                return None
            vanished.update(range(lo, hi + 1))
    return vanished


class Change(Enum):
    """What an untagged response says about the selected folder."""

    NONE = "none"  # keep-alive, RECENT, an OK with a code: nothing to sync
    EXISTS = "exists"  # message count changed (usually new mail)
    EXPUNGE = "expunge"  # a message went (EXPUNGE or QRESYNC's VANISHED)
    FLAGS = "flags"  # an unsolicited FETCH: flags (or MODSEQ) changed
    BYE = "bye"  # the server is closing the connection


def classify(line: bytes) -> Change:
    """Classify one untagged response line (``* ...``)."""
    upper = line[:64].upper()
    if upper.startswith(b"* BYE"):
        return Change.BYE
    if upper.startswith(b"* VANISHED"):
        return Change.EXPUNGE
    match = NUMBERED.match(line)
    if match:
        kind = match[2].upper()
        if kind == b"EXISTS":
            return Change.EXISTS
        if kind == b"EXPUNGE":
            return Change.EXPUNGE
        if kind == b"FETCH":
            return Change.FLAGS
    return Change.NONE


@dataclass(frozen=True)
class Snapshot:
    """What EXAMINE said about a folder; two equal snapshots mean nothing changed.

    Equality proves "unchanged" only with ``highestmodseq`` (CONDSTORE): without it a flag
    change is invisible, see :meth:`proves_unchanged_since`.
    """

    uidvalidity: int | None
    uidnext: int | None
    exists: int | None
    highestmodseq: int | None

    def proves_unchanged_since(self, earlier: Snapshot | None) -> bool:
        """True only when ``earlier`` is known and nothing (mail, flags, expunges) differs."""
        if earlier is None or self.highestmodseq is None or earlier.highestmodseq is None:
            return False
        if self.uidvalidity is None or self.uidnext is None:
            return False
        same_counts = earlier.exists is None or earlier.exists == self.exists
        return (
            self.uidvalidity == earlier.uidvalidity
            and self.uidnext == earlier.uidnext
            and self.highestmodseq == earlier.highestmodseq
            and same_counts
        )


class Notices:
    """Untagged responses, coalesced: the first line of each kind of change and of BYE.

    A listener needs to know only *that* a folder changed, so a flood of EXISTS or FETCH lines
    costs a set lookup each, never memory.
    """

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self._kinds: set[Change] = set()

    def add(self, line: bytes) -> None:
        """Keep ``line`` if it is the first of its kind of change."""
        kind = classify(line)
        if kind is not Change.NONE and kind not in self._kinds:
            self._kinds.add(kind)
            self.lines.append(line[:BYE_TEXT_BYTES])
