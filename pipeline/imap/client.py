"""One IMAP session: connect (implicit TLS, STARTTLS or, when allowed, plaintext), log in, and
run the commands the sync engine needs, returning plain typed values.

Built on imaplib through :class:`pipeline.imap.bounded.BoundedIMAP4`, which bounds every read
(line, literal, untagged responses and bytes per command) and gives every command, and the
whole connect + greeting + login, a total deadline; imap-tools only for modified UTF-7. Every
driver error is wrapped in the :mod:`pipeline.errors` IMAP subtree. Fetches always use
``BODY.PEEK`` so syncing never sets ``\\Seen``, and keep only the messages they asked for.

Folder names are kept in the server's own bytes: ``FolderInfo.raw_name`` holds them one
character per byte (ISO 8859-1), so an ASCII name (modified UTF-7, the normal case) reads as
itself and a raw 8-bit name a server sends anyway goes back to it unchanged
(:func:`folder_name_bytes`).
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from imap_tools.imap_utf7 import utf7_decode, utf7_encode

from pipeline.errors import (
    ImapAuthError,
    ImapConnectError,
    ImapError,
    ImapFolderError,
    ImapLimitError,
    ImapProtocolError,
    ImapThrottledError,
    ImapTlsError,
)
from pipeline.imap.bounded import BoundedIMAP4, ImapLimits
from pipeline.imap.roles import detect_role

TlsMode = Literal["ssl", "starttls", "plain"]

DEFAULT_TIMEOUT_S = 60.0  # socket timeout for every command; a hung server fails, never hangs
THROTTLE_MARKERS = (
    "[limit]",
    "[throttled]",
    "[unavailable]",
    "too many connections",
    "too many simultaneous",
    "maximum number of connections",
    "try again later",
)
VANISHED_LIMIT = 100_000  # expunged UIDs taken from one VANISHED answer; beyond it, diff
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_FETCH_DATE = re.compile(rb'INTERNALDATE "([^"]*)"')
_FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_FETCH_MODSEQ = re.compile(rb"MODSEQ \((\d+)\)")
log = logging.getLogger(__name__)

_STATUS_LINE = re.compile(rb'^(?P<name>"(?:[^"\\]|\\.)*"|[^ "(){]+) \((?P<items>[^()]*)\)$')
_LIST_LINE = re.compile(rb'\((?P<flags>[^)]*)\) (?P<delim>"[^"]*"|NIL) (?P<name>.+)$')


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach an IMAP server (no secrets)."""

    host: str
    port: int
    tls: TlsMode
    username: str
    verify_tls: bool = True
    timeout_s: float = DEFAULT_TIMEOUT_S  # any one read or write
    ca_file: Path | None = None  # extra trust anchors, e.g. a private CA
    # The IP address to connect to, already checked by pipeline.netguard: the socket goes
    # there (no second lookup of ``host``), while TLS still verifies the certificate for
    # ``host``. None: resolve ``host`` when connecting (operator-named servers).
    address: str | None = None
    limits: ImapLimits = field(default_factory=ImapLimits)  # bytes, counts, total deadlines


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


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _is_throttle(message: str) -> bool:
    lowered = message.lower()
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


def _folder_status(items: str) -> FolderStatus | None:
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


def _unquote_name(raw: bytes) -> bytes:
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        return re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    return raw


def _ssl_context(endpoint: Endpoint) -> ssl.SSLContext:
    if not endpoint.verify_tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(endpoint.ca_file) if endpoint.ca_file else None)


class ImapSession:
    """A logged-in IMAP session. Use :func:`open_session`; close with :meth:`close`."""

    def __init__(self, client: BoundedIMAP4, endpoint: Endpoint) -> None:
        self._client = client
        self.endpoint = endpoint
        self.selected: str | None = None
        self.capabilities = self._capabilities_after_login(client)
        self.condstore_enabled = False
        self.qresync_enabled = False
        # Learned at the first SELECT that lacks [UIDNEXT] (Courier-IMAP): from then on a
        # select that needs UIDNEXT asks STATUS first.
        self.select_omits_uidnext = False
        # A server that announces LIST-STATUS but refuses it is asked STATUS per folder.
        self.list_status_refused = False
        # Called once when the session closes: the connection manager releases its slot
        # (pipeline.imap.connections), whoever closes it and however.
        self.on_close: Callable[[], None] | None = None

    @staticmethod
    def _capabilities_after_login(client: imaplib.IMAP4) -> frozenset[str]:
        # imaplib keeps the greeting's list; servers announce more once logged in (Dovecot
        # adds CONDSTORE, QRESYNC, MOVE...). Many say so in the LOGIN's tagged OK
        # ([CAPABILITY ...], RFC 3501 7.1; imaplib files it with the untagged responses, and
        # the greeting's entry was taken at connect): a command less per
        # login, which a poll pays every minute. Otherwise, ask.
        _, announced = client.response("CAPABILITY")
        if announced and announced[-1]:
            return frozenset(_text(announced[-1]).upper().split())
        try:
            typ, data = client.capability()
        except (imaplib.IMAP4.error, OSError):
            typ, data = "NO", []  # an ImapLimitError goes up: the session is unusable
        if typ == "OK" and data and data[-1]:
            return frozenset(_text(data[-1]).upper().split())
        return frozenset(_text(c).upper() for c in client.capabilities)

    # --- plumbing -------------------------------------------------------------------------
    @property
    def raw(self) -> BoundedIMAP4:
        """The imaplib connection, for callers that need a command not wrapped here."""
        return self._client

    def __enter__(self) -> ImapSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def broken(self) -> bool:
        """True once the server broke a bound, or a command was cut off (a time limit, a
        signal): the session must not be used again."""
        return self._client.broken or self._client.busy

    def close(self) -> None:
        """Log out (or just disconnect a broken session), ignoring one already gone."""
        client = self._client
        try:
            self._close(client)
        finally:
            hook, self.on_close = self.on_close, None
            if hook is not None:
                hook()

    def _close(self, client: BoundedIMAP4) -> None:
        if client.closed:
            return
        if not self.broken:
            with contextlib.suppress(imaplib.IMAP4.error, OSError, ImapError):
                client.logout()  # shuts the socket down when it succeeds
        if not client.closed:  # a dropped or broken session: just the socket
            with contextlib.suppress(OSError):
                client.shutdown()

    def _call(
        self, what: str, *args: Any, refused: type[ImapError] = ImapProtocolError
    ) -> tuple[str, list[Any]]:
        """Run an imaplib command, wrapping driver errors and checking for OK.

        A tagged ``NO`` raises ``refused`` (e.g. :class:`ImapFolderError` for a folder that
        does not exist); ``BAD`` and throttling answers keep their own classes.
        """
        try:
            typ, data = getattr(self.raw, what)(*args)
        except imaplib.IMAP4.abort as exc:
            raise ImapProtocolError(f"The IMAP session was dropped during {what}: {exc}") from exc
        except imaplib.IMAP4.error as exc:
            if _is_throttle(str(exc)):
                raise ImapThrottledError(f"The server throttled {what}: {exc}") from exc
            raise ImapProtocolError(f"IMAP {what} failed: {exc}") from exc
        except TimeoutError as exc:
            raise ImapConnectError(f"IMAP {what} timed out.") from exc
        except OSError as exc:
            raise ImapConnectError(f"IMAP connection lost during {what}: {exc}") from exc
        if typ != "OK":
            detail = " ".join(_text(d) for d in data if d is not None)
            if _is_throttle(detail):
                raise ImapThrottledError(f"The server throttled {what}: {detail}")
            error = refused if typ == "NO" else ImapProtocolError
            raise error(f"IMAP {what} answered {typ}: {detail}")
        return typ, list(data)

    def _uid(self, command: str, *args: str | bytes) -> list[Any]:
        return self._call("uid", command, *args)[1]

    def has(self, capability: str) -> bool:
        """Whether the server announced ``capability``."""
        return capability.upper() in self.capabilities

    def enable_condstore(self) -> bool:
        """ENABLE CONDSTORE where offered, so SELECT reports HIGHESTMODSEQ, and QRESYNC with
        it where offered (expunges then move HIGHESTMODSEQ and can be asked for). Idempotent."""
        if self.condstore_enabled:
            return True
        if not self.has("CONDSTORE"):
            return False
        if self.has("ENABLE"):
            qresync = self.has("QRESYNC")
            self._call("_simple_command", "ENABLE", "CONDSTORE QRESYNC" if qresync else "CONDSTORE")
            self.qresync_enabled = qresync
        self.condstore_enabled = True
        return True

    # --- folders --------------------------------------------------------------------------
    def list_folders(self) -> list[FolderInfo]:
        """Every folder, with its decoded name and detected role."""
        _, data = self._call("list", '""', "*")
        folders: list[FolderInfo] = []
        pending: bytes | None = None
        for item in data:
            if item is None:
                continue
            if isinstance(item, tuple):  # name sent as a literal
                line = item[0].rsplit(b"{", 1)[0] + b'"' + item[1].replace(b'"', b'\\"') + b'"'
            else:
                line = item
            if pending is not None:
                line, pending = pending + line, None
            match = _LIST_LINE.match(line)
            if not match:
                continue
            attrs = tuple(_text(a) for a in match["flags"].split())
            delim_raw = match["delim"]
            delim = None if delim_raw == b"NIL" else _text(delim_raw[1:-1]).replace("\\\\", "\\")
            name_bytes = _unquote_name(match["name"].strip())
            raw_name = name_bytes.decode("latin-1")  # lossless: any bytes go back unchanged
            name = _display_name(name_bytes)
            folders.append(
                FolderInfo(raw_name, name, delim, attrs, detect_role(name, attrs, delim))
            )
        return folders

    def _quoted(self, raw_name: str) -> bytes:
        # bytes: imaplib would encode a str as ASCII and fail on an 8-bit name
        name = folder_name_bytes(raw_name)
        return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'

    def select(
        self,
        raw_name: str,
        *,
        readonly: bool = True,
        want_uidnext: bool = False,
        want_status: bool = False,
    ) -> SelectInfo:
        """SELECT (or EXAMINE when ``readonly``) a folder.

        Some servers (Courier-IMAP) send no ``[UIDNEXT]`` with SELECT, only with STATUS. With
        ``want_uidnext`` the UIDNEXT then comes from a STATUS sent *before* the SELECT: a
        message that arrives in between has a UID at or above it, so a caller that marks
        "synced up to UIDNEXT" after searching the selected folder can never skip it (a STATUS
        after the SELECT could count mail the selected view does not show yet). The first such
        SELECT of a session is sent again after its STATUS; later ones cost one STATUS each.

        With ``want_status`` a STATUS is sent before the SELECT in any case (one command, and
        none more when the UIDNEXT needed one): its MESSAGES and UNSEEN come in
        ``SelectInfo.status`` (a poll compares them on servers without CONDSTORE).
        """
        before: FolderStatus | None = None
        if (want_uidnext and self.select_omits_uidnext) or want_status:
            before = self.status(raw_name)
        info = self._select(raw_name, readonly=readonly)
        if info.uidnext is not None or not want_uidnext:
            return self._with_status(info, before)
        if before is None:
            self.select_omits_uidnext = True
            before = self.status(raw_name)
            info = self._select(raw_name, readonly=readonly)
        if before.uidvalidity != info.uidvalidity:
            return info  # renumbered in between: this UIDNEXT belongs to the old numbering
        return replace(info, uidnext=before.uidnext, status=before)

    @staticmethod
    def _with_status(info: SelectInfo, before: FolderStatus | None) -> SelectInfo:
        """``info`` with the STATUS sent before it, unless the folder was renumbered between."""
        if before is None or before.uidvalidity != info.uidvalidity:
            return info
        return replace(info, status=before)

    def _select(self, raw_name: str, *, readonly: bool) -> SelectInfo:
        try:
            typ, data = self.raw.select(self._quoted(raw_name), readonly)  # type: ignore[arg-type]
        except imaplib.IMAP4.abort as exc:
            raise ImapProtocolError(
                f"The IMAP session was dropped selecting a folder: {exc}"
            ) from exc
        except imaplib.IMAP4.error as exc:
            raise ImapFolderError(f"Cannot open folder {raw_name!r}: {exc}") from exc
        except OSError as exc:
            raise ImapConnectError(f"IMAP connection lost opening a folder: {exc}") from exc
        if typ != "OK":
            raise ImapFolderError(f"Cannot open folder {raw_name!r}: {_text(data[0])}")
        self.selected = raw_name

        def code(name: str) -> int | None:
            _, values = self.raw.response(name)
            for value in values or []:
                if value:
                    return int(_text(value).split()[0])
            return None

        uidvalidity = code("UIDVALIDITY")
        if uidvalidity is None:
            raise ImapProtocolError(f"The server reported no UIDVALIDITY for {raw_name!r}.")
        return SelectInfo(
            uidvalidity=uidvalidity,
            uidnext=code("UIDNEXT"),
            exists=int(_text(data[0]) or 0),
            highestmodseq=code("HIGHESTMODSEQ"),
        )

    def _status_items(self) -> str:
        items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"]
        if self.has("CONDSTORE"):
            items.append("HIGHESTMODSEQ")
        return "(" + " ".join(items) + ")"

    def status(self, raw_name: str) -> FolderStatus:
        """STATUS of a folder: cheap, does not select it.

        Raises:
            ImapFolderError: the server refused it (``NO``: typically the folder is gone).
        """
        _, data = self._call(
            "status", self._quoted(raw_name), self._status_items(), refused=ImapFolderError
        )
        text = " ".join(_text(d if not isinstance(d, tuple) else d[-1]) for d in data if d)
        status = _folder_status(text.rsplit("(", 1)[-1].rstrip(")"))
        if status is None:
            raise ImapProtocolError(f"STATUS of {raw_name!r} carried no UIDVALIDITY: {text}")
        return status

    def statuses(self, raw_names: Sequence[str]) -> dict[str, FolderStatus]:
        """STATUS of several folders, by raw name; a folder the server refuses (gone) is left
        out. Where the server has LIST-STATUS (RFC 5819: Dovecot, Cyrus) one ``LIST "" "*"
        RETURN (STATUS ...)`` answers for every folder at once (a poll's one command instead
        of one per folder); the folders it did not report (a name sent as a literal, say) are
        asked one by one, as on a server without it (Courier).

        Raises:
            ImapError: The session failed.
        """
        found: dict[str, FolderStatus] = {}
        if len(raw_names) > 1 and self.has("LIST-STATUS") and not self.list_status_refused:
            try:
                found = self._list_status(set(raw_names))
            except (ImapProtocolError, ImapFolderError) as exc:
                if self.broken:
                    raise
                # announced but refused (BAD, NO): one STATUS each for this session
                self.list_status_refused = True
                log.info("the server refused LIST-STATUS; asking STATUS instead: %s", exc)
        for raw_name in raw_names:
            if raw_name not in found:
                try:
                    found[raw_name] = self.status(raw_name)
                except ImapFolderError:
                    continue  # gone: folder discovery removes it
        return found

    def _list_status(self, wanted: set[str]) -> dict[str, FolderStatus]:
        typ, data = self._call(
            "_simple_command", "LIST", '""', '"*"', "RETURN", f"(STATUS {self._status_items()})"
        )
        _, lines = self.raw._untagged_response(typ, data, "STATUS")  # type: ignore[attr-defined]
        self.raw.untagged_responses.pop("LIST", None)
        found: dict[str, FolderStatus] = {}
        for line in lines:
            if not isinstance(line, bytes):
                continue  # None, or a name sent as a literal: asked by STATUS instead
            match = _STATUS_LINE.match(line)
            if not match:
                continue
            raw_name = _unquote_name(match["name"]).decode("latin-1")
            status = _folder_status(_text(match["items"]))
            if raw_name in wanted and status is not None:
                found[raw_name] = status
        return found

    def create_folder(self, name: str) -> str:
        """Create a folder from its display name; returns the raw (encoded) name."""
        raw_name = utf7_encode(name).decode("ascii")
        self._call("create", self._quoted(raw_name))
        return raw_name

    def rename_folder(self, raw_name: str, new_name: str) -> str:
        """Rename a folder; returns the new raw name."""
        new_raw = utf7_encode(new_name).decode("ascii")
        self._call("rename", self._quoted(raw_name), self._quoted(new_raw))
        return new_raw

    def delete_folder(self, raw_name: str) -> None:
        """Delete a folder on the server."""
        self._call("delete", self._quoted(raw_name))

    # --- messages in the selected folder --------------------------------------------------
    def search_uids(self, *criteria: str) -> list[int]:
        """UID SEARCH in the selected folder; returns ascending UIDs."""
        data = self._uid("SEARCH", *criteria)
        uids: list[int] = []
        for chunk in data:
            if chunk:
                uids.extend(int(x) for x in _text(chunk).split() if x.isdigit())
        return sorted(uids)

    def uids_since(self, day: date) -> list[int]:
        """UIDs whose INTERNALDATE is on or after ``day`` (server's notion of the day)."""
        return self.search_uids("SINCE", imap_date(day))

    def fetch_meta(
        self, uids: Sequence[int], *, changedsince: int | None = None
    ) -> list[MessageMeta]:
        """UID, size, INTERNALDATE and flags (and MODSEQ under CONDSTORE) of ``uids``."""
        if not uids:
            return []
        items = (
            "(UID RFC822.SIZE INTERNALDATE FLAGS"
            + (" MODSEQ" if self.condstore_enabled else "")
            + ")"
        )
        args = [uid_set(uids), items]
        if changedsince is not None:
            args.append(f"(CHANGEDSINCE {changedsince})")
        data = self._uid("FETCH", *args)
        wanted = set(uids)
        metas: list[MessageMeta] = []
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            if not isinstance(line, bytes):
                continue
            meta = self._meta(line)
            if meta is not None and meta.uid in wanted:  # never what nobody asked for
                metas.append(meta)
        return metas

    def fetch_changed_since(self, modseq: int) -> list[MessageMeta]:
        """Every message of the selected folder whose flags changed after ``modseq``
        (CONDSTORE ``CHANGEDSINCE``)."""
        items = "(UID RFC822.SIZE INTERNALDATE FLAGS MODSEQ)"
        data = self._uid("FETCH", "1:*", items, f"(CHANGEDSINCE {modseq})")
        metas: list[MessageMeta] = []
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            if isinstance(line, bytes):
                meta = self._meta(line)
                if meta is not None:
                    metas.append(meta)
        return metas

    def fetch_changes_since(self, modseq: int) -> tuple[list[MessageMeta], set[int]] | None:
        """Flag changes and expunges after ``modseq`` in one command (QRESYNC ``VANISHED``):
        ``(changed messages, expunged UIDs)``. None when the server lists more expunged UIDs
        than :data:`VANISHED_LIMIT` (a server may answer with a superset): diff instead."""
        items = "(UID RFC822.SIZE INTERNALDATE FLAGS MODSEQ)"
        data = self._uid("FETCH", "1:*", items, f"(CHANGEDSINCE {modseq} VANISHED)")
        metas = [
            meta
            for item in data
            if isinstance(line := item[0] if isinstance(item, tuple) else item, bytes)
            and (meta := self._meta(line)) is not None
        ]
        vanished: set[int] = set()
        _, lines = self.raw.response("VANISHED")
        for line in lines or []:
            if line is None:  # imaplib's answer when the server sent no VANISHED
                continue
            text = _text(line).strip()
            if text.upper().startswith("(EARLIER)"):
                text = text[len("(EARLIER)") :].strip()
            for part in text.split(","):
                if not part:
                    continue
                first, _, last = part.partition(":")
                lo, hi = sorted((int(first), int(last or first)))
                if len(vanished) + hi - lo + 1 > VANISHED_LIMIT:
                    return None
                vanished.update(range(lo, hi + 1))
        return metas, vanished

    def present_uids(self, uids: Sequence[int]) -> set[int]:
        """Which of ``uids`` still exist in the selected folder (an expunge check)."""
        if not uids:
            return set()
        return set(self.search_uids("UID", uid_set(uids)))

    def _meta(self, line: bytes) -> MessageMeta | None:
        uid = _FETCH_UID.search(line)
        size = _FETCH_SIZE.search(line)
        when = _FETCH_DATE.search(line)
        if not (uid and size and when):
            return None  # an unsolicited FETCH (flag change elsewhere), not ours
        flags = _FETCH_FLAGS.search(line)
        modseq = _FETCH_MODSEQ.search(line)
        try:
            internaldate: datetime | None = parse_internaldate(_text(when[1]))
        except ImapProtocolError:
            internaldate = None  # one message's garbage date must not fail its folder
        return MessageMeta(
            uid=int(uid[1]),
            size=int(size[1]),
            internaldate=internaldate,
            # \Recent is per-session noise, not a property of the message
            flags=tuple(f for f in (_text(x) for x in flags[1].split()) if f != "\\Recent")
            if flags
            else (),
            modseq=int(modseq[1]) if modseq else None,
        )

    def fetch_messages(self, uids: Sequence[int]) -> Iterator[FetchedMessage]:
        """Whole messages (``BODY.PEEK[]``: never sets ``\\Seen``) with their metadata."""
        if not uids:
            return
        items = "(UID RFC822.SIZE INTERNALDATE FLAGS" + (
            " MODSEQ" if self.condstore_enabled else ""
        )
        data = self._uid("FETCH", uid_set(uids), items + " BODY.PEEK[])")
        wanted = set(uids)
        for i, item in enumerate(data):
            if not isinstance(item, tuple):
                continue
            # Servers may send some items after the literal: they arrive in the next element.
            tail = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
            meta = self._meta(item[0] + b" " + tail)
            if meta is None or meta.uid not in wanted:  # unsolicited: not ours to store
                continue
            wanted.discard(meta.uid)  # a UID sent twice is stored once
            yield FetchedMessage(
                uid=meta.uid,
                size=meta.size,
                internaldate=meta.internaldate,
                flags=meta.flags,
                raw=item[1],
                modseq=meta.modseq,
            )

    def fetch_headers(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The raw header block of each message (``BODY.PEEK[HEADER]``), by UID."""
        if not uids:
            return {}
        data = self._uid("FETCH", uid_set(uids), "(UID BODY.PEEK[HEADER])")
        wanted = set(uids)
        out: dict[int, bytes] = {}
        for i, item in enumerate(data):
            if not isinstance(item, tuple):
                continue
            tail = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
            uid = _FETCH_UID.search(item[0] + b" " + tail)
            if uid and int(uid[1]) in wanted:
                out[int(uid[1])] = item[1]
        return out

    def fetch_raw(self, uid: int) -> bytes | None:
        """One whole message, or None if the UID is gone."""
        for message in self.fetch_messages([uid]):
            if message.uid == uid:
                return message.raw
        return None

    def fetch_part(self, uid: int, section: str) -> bytes | None:
        """One MIME part (``BODY.PEEK[section]``, still transfer-encoded), or None if gone."""
        data = self._uid("FETCH", str(uid), f"(UID BODY.PEEK[{section}])")
        for i, item in enumerate(data):
            if not isinstance(item, tuple):
                continue
            tail = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
            found = _FETCH_UID.search(item[0] + b" " + tail)
            if found and int(found[1]) == uid:
                return bytes(item[1])
        return None

    def store_flags(self, uids: Sequence[int], flags: Sequence[str], *, add: bool) -> None:
        """Add or remove flags (``+FLAGS.SILENT`` / ``-FLAGS.SILENT``)."""
        if uids:
            op = "+FLAGS.SILENT" if add else "-FLAGS.SILENT"
            self._uid("STORE", uid_set(uids), op, "(" + " ".join(flags) + ")")

    def move(self, uids: Sequence[int], dest_raw_name: str) -> None:
        """Move messages to another folder (MOVE, or COPY + delete + expunge)."""
        if not uids:
            return
        if self.has("MOVE"):
            self._uid("MOVE", uid_set(uids), self._quoted(dest_raw_name))
            return
        self._uid("COPY", uid_set(uids), self._quoted(dest_raw_name))
        self.expunge_uids(uids)

    def expunge_uids(self, uids: Sequence[int]) -> None:
        """Remove messages from the selected folder for good: ``\\Deleted``, then UID EXPUNGE
        (UIDPLUS). Without UIDPLUS a plain EXPUNGE also removes any other message of the
        folder already marked ``\\Deleted`` (IMAP offers nothing narrower)."""
        if not uids:
            return
        self.store_flags(uids, ["\\Deleted"], add=True)
        if self.has("UIDPLUS"):
            self._uid("EXPUNGE", uid_set(uids))
        else:
            self._call("expunge")

    def append(
        self,
        raw_name: str,
        message: bytes,
        *,
        flags: Sequence[str] = (),
        when: datetime | None = None,
    ) -> None:
        """APPEND a message to a folder."""
        date_time = imaplib.Time2Internaldate(when) if when else None
        flag_list = "(" + " ".join(flags) + ")" if flags else None
        self._call("append", self._quoted(raw_name), flag_list, date_time, message)

    def noop(self) -> None:
        """NOOP: keeps the session alive and collects pending untagged responses."""
        self._call("noop")


def _login_args(username: str, password: str) -> tuple[bytes, bytes | None, str | None]:
    """LOGIN's arguments: quoted when ASCII; a non-ASCII password goes as a UTF-8 literal."""

    def quoted(value: bytes) -> bytes:
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'

    user = quoted(username.encode("utf-8"))
    if password.isascii():
        return user, quoted(password.encode("ascii")), None
    return user, None, password


def _connect(endpoint: Endpoint, deadline: float) -> BoundedIMAP4:
    ctx = _ssl_context(endpoint) if endpoint.tls != "plain" else None
    client = BoundedIMAP4(
        endpoint.host,
        endpoint.port,
        limits=endpoint.limits,
        read_timeout_s=endpoint.timeout_s,
        deadline=deadline,
        ssl_context=ctx if endpoint.tls == "ssl" else None,
        address=endpoint.address,
    )
    if endpoint.tls == "starttls":
        assert ctx is not None
        try:
            client.starttls(ctx)
        except BaseException:
            with contextlib.suppress(OSError):
                client.shutdown()
            raise
    return client


def open_session(endpoint: Endpoint, password: str) -> ImapSession:
    """Connect and log in, within ``endpoint.limits.login_deadline_s`` in all (connect, TLS,
    greeting, STARTTLS, LOGIN and CAPABILITY), every read bounded.

    Raises:
        ImapConnectError: The host cannot be reached.
        ImapTlsError: TLS failed (handshake, certificate, hostname).
        ImapAuthError: The server refused the credentials.
        ImapThrottledError: The provider refused the login for now.
        ImapLimitError: The server broke a bound (a trickled or endless greeting, a huge
            literal, the login deadline).
        ImapError: Anything else that went wrong talking to the server.
    """
    where = f"{endpoint.host}:{endpoint.port}"
    deadline = time.monotonic() + endpoint.limits.login_deadline_s

    def late(exc: BaseException) -> ImapLimitError | None:
        if time.monotonic() < deadline:
            return None
        return ImapLimitError(
            f"The IMAP server {where} did not complete connect, greeting and login within "
            f"{endpoint.limits.login_deadline_s:g} s; if this server is trusted, raise "
            "IMAP_PIPELINE_IMAP_LOGIN_DEADLINE_S.",
            bound="deadline",
            setting="IMAP_PIPELINE_IMAP_LOGIN_DEADLINE_S",
        )

    try:
        client = _connect(endpoint, deadline)
    except ImapError:
        raise
    except ssl.SSLCertVerificationError as exc:
        raise ImapTlsError(
            f"The certificate of {where} could not be verified ({exc.verify_message}). "
            "Check the host name, or allow an unverified certificate for this grant."
        ) from exc
    except ssl.SSLError as exc:
        raise ImapTlsError(
            f"TLS with {where} failed ({exc.reason}). Check the port and TLS mode "
            "(993 is usually implicit TLS, 143 STARTTLS)."
        ) from exc
    except TimeoutError as exc:
        raise late(exc) or ImapConnectError(f"Timed out connecting to {where}.") from exc
    except socket.gaierror as exc:
        raise ImapConnectError(f"Cannot resolve the IMAP host {endpoint.host!r}.") from exc
    except OSError as exc:
        raise ImapConnectError(f"Cannot connect to {where}: {exc.strerror or exc}.") from exc
    except imaplib.IMAP4.error as exc:
        message = str(exc)
        if endpoint.tls == "starttls":
            raise ImapTlsError(f"{where} refused STARTTLS: {message}") from exc
        if _is_throttle(message):
            raise ImapThrottledError(f"{where} refused the connection for now: {message}") from exc
        raise ImapProtocolError(f"{where} did not greet as an IMAP server: {message}") from exc
    try:
        session = _login(client, endpoint, password, where)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            client.shutdown()
        if isinstance(exc, TimeoutError):
            raise late(exc) or ImapConnectError(f"{where} timed out during login.") from exc
        raise
    client.end_login_phase()
    return session


def _login(client: BoundedIMAP4, endpoint: Endpoint, password: str, where: str) -> ImapSession:
    user, quoted_password, literal = _login_args(endpoint.username, password)
    try:
        if literal is not None:
            client.literal = literal.encode("utf-8")  # type: ignore[assignment]
            typ, data = client._simple_command("LOGIN", user)
        else:
            typ, data = client._simple_command("LOGIN", user, quoted_password)
    except imaplib.IMAP4.abort as exc:
        raise ImapConnectError(f"The connection to {where} dropped during login: {exc}") from exc
    except imaplib.IMAP4.error as exc:
        if _is_throttle(str(exc)):
            raise ImapThrottledError(f"{where} refused the login for now: {exc}") from exc
        if "LOGINDISABLED" in str(exc).upper() or "plaintext" in str(exc).lower():
            raise ImapAuthError(f"{where} does not allow a login without TLS.") from exc
        raise ImapAuthError(f"{where} refused the login for {endpoint.username!r}: {exc}") from exc
    except (ConnectionError, EOFError) as exc:
        raise ImapConnectError(f"The connection to {where} dropped during login: {exc}") from exc
    if typ != "OK":
        detail = _text(data[-1] if data else b"")
        if _is_throttle(detail):
            raise ImapThrottledError(f"{where} refused the login for now: {detail}")
        if "LOGINDISABLED" in " ".join(client.capabilities).upper():
            raise ImapAuthError(f"{where} does not allow a login without TLS.")
        raise ImapAuthError(
            f"{where} refused the login for {endpoint.username!r}: "
            f"{detail.rstrip('.') or 'wrong credentials'}. "
            "Check the username and password (many providers need an app password)."
        )
    client.state = "AUTH"
    return ImapSession(client, endpoint)
