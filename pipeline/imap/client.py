"""One IMAP session: the commands the sync engine needs, returning plain typed values.

:func:`pipeline.imap.login.open_session` connects and logs in (implicit TLS, STARTTLS or, when
allowed, plaintext) and hands over an :class:`ImapSession`. Built on imaplib through
:class:`pipeline.imap.bounded.BoundedIMAP4`, which bounds every read (line, literal, untagged
responses and bytes per command) and gives every command, and the whole connect + greeting +
login, a total deadline; imap-tools only for modified UTF-7. Every driver error is wrapped in
the :mod:`pipeline.errors` IMAP subtree. Fetches always use ``BODY.PEEK`` so syncing never sets
``\\Seen``, and keep only the messages they asked for. Answers are read into values by
:mod:`pipeline.imap.responses`.

Folder names are kept in the server's own bytes: ``FolderInfo.raw_name`` holds them one
character per byte (ISO 8859-1), so an ASCII name (modified UTF-7, the normal case) reads as
itself and a raw 8-bit name a server sends anyway goes back to it unchanged
(:func:`~pipeline.imap.responses.folder_name_bytes`).
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from imap_tools.imap_utf7 import utf7_encode

from pipeline.errors import (
    ImapConnectError,
    ImapError,
    ImapFolderError,
    ImapProtocolError,
    ImapThrottledError,
)
from pipeline.imap.bounded import BoundedIMAP4, ImapLimits
from pipeline.imap.responses import (
    FETCH_UID,
    STATUS_LINE,
    FetchedMessage,
    FolderInfo,
    FolderStatus,
    MessageMeta,
    SelectInfo,
    as_text,
    folder_info,
    folder_name_bytes,
    folder_status,
    imap_date,
    is_throttle,
    message_meta,
    uid_set,
    unquote_name,
    vanished_uids,
)

TlsMode = Literal["ssl", "starttls", "plain"]

DEFAULT_TIMEOUT_S = 60.0  # socket timeout for every command; a hung server fails, never hangs
VANISHED_LIMIT = 100_000  # expunged UIDs taken from one VANISHED answer; beyond it, diff
log = logging.getLogger(__name__)


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
            return frozenset(as_text(announced[-1]).upper().split())
        try:
            typ, data = client.capability()
        except (imaplib.IMAP4.error, OSError):
            typ, data = "NO", []  # an ImapLimitError goes up: the session is unusable
        if typ == "OK" and data and data[-1]:
            return frozenset(as_text(data[-1]).upper().split())
        return frozenset(as_text(c).upper() for c in client.capabilities)

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
            if is_throttle(str(exc)):
                raise ImapThrottledError(f"The server throttled {what}: {exc}") from exc
            raise ImapProtocolError(f"IMAP {what} failed: {exc}") from exc
        except TimeoutError as exc:
            raise ImapConnectError(f"IMAP {what} timed out.") from exc
        except OSError as exc:
            raise ImapConnectError(f"IMAP connection lost during {what}: {exc}") from exc
        if typ != "OK":
            detail = " ".join(as_text(d) for d in data if d is not None)
            if is_throttle(detail):
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
            folder = folder_info(line)
            if folder is not None:
                folders.append(folder)
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
            raise ImapFolderError(f"Cannot open folder {raw_name!r}: {as_text(data[0])}")
        self.selected = raw_name

        def code(name: str) -> int | None:
            _, values = self.raw.response(name)
            for value in values or []:
                if value:
                    return int(as_text(value).split()[0])
            return None

        uidvalidity = code("UIDVALIDITY")
        if uidvalidity is None:
            raise ImapProtocolError(f"The server reported no UIDVALIDITY for {raw_name!r}.")
        return SelectInfo(
            uidvalidity=uidvalidity,
            uidnext=code("UIDNEXT"),
            exists=int(as_text(data[0]) or 0),
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
        text = " ".join(as_text(d if not isinstance(d, tuple) else d[-1]) for d in data if d)
        status = folder_status(text.rsplit("(", 1)[-1].rstrip(")"))
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
            match = STATUS_LINE.match(line)
            if not match:
                continue
            raw_name = unquote_name(match["name"]).decode("latin-1")
            status = folder_status(as_text(match["items"]))
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
                uids.extend(int(x) for x in as_text(chunk).split() if x.isdigit())
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
            meta = message_meta(line)
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
                meta = message_meta(line)
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
            and (meta := message_meta(line)) is not None
        ]
        _, lines = self.raw.response("VANISHED")
        vanished = vanished_uids(lines or [], VANISHED_LIMIT)
        if vanished is None:
            return None
        return metas, vanished

    def present_uids(self, uids: Sequence[int]) -> set[int]:
        """Which of ``uids`` still exist in the selected folder (an expunge check)."""
        if not uids:
            return set()
        return set(self.search_uids("UID", uid_set(uids)))

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
            meta = message_meta(item[0] + b" " + tail)
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
            uid = FETCH_UID.search(item[0] + b" " + tail)
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
            found = FETCH_UID.search(item[0] + b" " + tail)
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
