"""A scriptable fake of the IMAP session the sync uses, in process: no server, no socket.

:class:`FakeMailbox` is an account's server-side state (folders with their UIDVALIDITY, UIDNEXT,
HIGHESTMODSEQ, messages, flags and expunges); :meth:`FakeMailbox.session` opens a
:class:`FakeImapSession` on it, with the methods of :class:`pipeline.imap.ImapSession` that
:mod:`pipeline.sync` calls (``enable_condstore``, ``list_folders``, ``select``, ``search_uids``,
``uids_since``, ``fetch_meta``, ``fetch_changed_since``, ``fetch_changes_since``,
``present_uids``, ``fetch_messages``, ``close``), and ``status``/``statuses`` that the
UIDVALIDITY sweep and the poll ask. Several sessions share one mailbox, so a
``reopen`` callable can hand out fresh ones, and the test changes the mailbox between runs as
another client would::

    mailbox = FakeMailbox(condstore=True)
    mailbox.add_folder("INBOX", role="inbox")
    uid = mailbox.deliver("INBOX", make_message("hello"))
    mailbox.set_flags("INBOX", uid, ["\\\\Seen"])
    moved = mailbox.move("INBOX", uid, "Archive")  # a new copy there, then the expunge
    mailbox.expunge("Archive", moved)
    mailbox.renumber("INBOX")                     # a new UIDVALIDITY, new UIDs
    mailbox.fail("fetch_messages", ImapProtocolError("BYE"), uid=uid, times=2)
    session = mailbox.session()

Errors are scripted per method (:meth:`FakeMailbox.fail`): raised by the next ``times`` calls
of that method (only calls that name ``uid``, when given). Every call is recorded in
:attr:`FakeMailbox.calls` (``(method, args)``), so a test can assert what was asked.

A wire-level fake IMAP *server* (hostile servers, other processes) is
:mod:`tests.support.fake_imap`; this one is for unit tests of the code above the client,
which then run in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from pipeline.errors import ImapFolderError
from pipeline.imap import FetchedMessage, FolderInfo, FolderStatus, MessageMeta, SelectInfo


@dataclass
class FakeMessage:
    """A message as the fake server holds it."""

    uid: int
    raw: bytes
    flags: tuple[str, ...]
    internaldate: datetime | None
    modseq: int

    def meta(self, *, modseq: bool) -> MessageMeta:
        return MessageMeta(
            uid=self.uid,
            size=len(self.raw),
            internaldate=self.internaldate,
            flags=self.flags,
            modseq=self.modseq if modseq else None,
        )


@dataclass
class FakeFolder:
    """A folder on the fake server."""

    raw_name: str
    role: str | None = None
    attributes: tuple[str, ...] = ()
    uidvalidity: int = 1
    uidnext: int = 1
    highestmodseq: int = 1
    messages: dict[int, FakeMessage] = field(default_factory=dict)
    vanished: dict[int, int] = field(default_factory=dict)  # expunged UID -> its modseq

    def bump(self) -> int:
        """The next modseq: every change moves HIGHESTMODSEQ."""
        self.highestmodseq += 1
        return self.highestmodseq


@dataclass
class _Failure:
    method: str
    error: Exception
    uid: int | None
    times: int


class FakeMailbox:
    """An account on a fake server: folders and messages that sessions read."""

    def __init__(self, *, condstore: bool = False, qresync: bool = False) -> None:
        self.condstore = condstore or qresync
        self.qresync = qresync
        self.folders: dict[str, FakeFolder] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.sessions_opened = 0
        self._failures: list[_Failure] = []
        self._next_uidvalidity = 1000

    # --- the server's state, as another client changes it ---------------------------------
    def add_folder(
        self,
        raw_name: str,
        *,
        role: str | None = None,
        attributes: Sequence[str] = (),
        uidvalidity: int = 1,
    ) -> FakeFolder:
        folder = FakeFolder(raw_name, role, tuple(attributes), uidvalidity=uidvalidity)
        self.folders[raw_name] = folder
        return folder

    def deliver(
        self,
        raw_name: str,
        raw: bytes,
        *,
        flags: Sequence[str] = (),
        internaldate: datetime | None = None,
    ) -> int:
        """APPEND a message; returns its UID. ``internaldate`` defaults to now."""
        folder = self.folders[raw_name]
        uid = folder.uidnext
        folder.uidnext += 1
        arrived = internaldate if internaldate is not None else datetime.now(UTC)
        folder.messages[uid] = FakeMessage(uid, raw, tuple(flags), arrived, folder.bump())
        return uid

    def set_flags(self, raw_name: str, uid: int, flags: Sequence[str]) -> None:
        folder = self.folders[raw_name]
        message = folder.messages[uid]
        message.flags = tuple(flags)
        message.modseq = folder.bump()

    def expunge(self, raw_name: str, uid: int) -> None:
        folder = self.folders[raw_name]
        del folder.messages[uid]
        folder.vanished[uid] = folder.bump()

    def move(self, source: str, uid: int, target: str, *, expunge: bool = True) -> int:
        """Move (or, ``expunge=False``, copy) a message to ``target`` as a client does: a new
        copy there with the same content, flags and INTERNALDATE, then the expunge; returns
        the copy's UID."""
        message = self.folders[source].messages[uid]
        new_uid = self.deliver(
            target, message.raw, flags=message.flags, internaldate=message.internaldate
        )
        if expunge:
            self.expunge(source, uid)
        return new_uid

    def renumber(self, raw_name: str, uidvalidity: int | None = None) -> int:
        """Give the folder a new UIDVALIDITY and its messages new UIDs (same order, same
        content); returns the new UIDVALIDITY."""
        folder = self.folders[raw_name]
        if uidvalidity is None:
            self._next_uidvalidity += 1
            uidvalidity = self._next_uidvalidity
        folder.uidvalidity = uidvalidity
        renumbered: dict[int, FakeMessage] = {}
        for uid in sorted(folder.messages):
            message = folder.messages[uid]
            new_uid = folder.uidnext
            folder.uidnext += 1
            renumbered[new_uid] = replace(message, uid=new_uid)
        folder.messages = renumbered
        folder.vanished.clear()
        return uidvalidity

    # --- scripting ------------------------------------------------------------------------
    def fail(
        self, method: str, error: Exception, *, uid: int | None = None, times: int = 1
    ) -> None:
        """Make the next ``times`` calls of ``method`` raise ``error`` (with ``uid``: only the
        calls that name that UID)."""
        self._failures.append(_Failure(method, error, uid, times))

    def _called(self, method: str, *args: Any, uids: Sequence[int] = ()) -> None:
        self.calls.append((method, args))
        for failure in self._failures:
            if failure.method != method or failure.times <= 0:
                continue
            if failure.uid is not None and failure.uid not in uids:
                continue
            failure.times -= 1
            raise failure.error

    def called(self, method: str) -> int:
        """How many times ``method`` was called on any session."""
        return sum(1 for name, _ in self.calls if name == method)

    def session(self) -> FakeImapSession:
        """A new logged-in session on this mailbox."""
        self.sessions_opened += 1
        return FakeImapSession(self)


class FakeImapSession:
    """The IMAP session the sync uses (see the module docstring), on a :class:`FakeMailbox`."""

    def __init__(self, mailbox: FakeMailbox) -> None:
        self.mailbox = mailbox
        self.condstore_enabled = False
        self.qresync_enabled = False
        self.closed = False
        self._selected: FakeFolder | None = None

    def _folder(self) -> FakeFolder:
        assert not self.closed, "the session was closed"
        assert self._selected is not None, "no folder selected"
        return self._selected

    def close(self) -> None:
        self.mailbox.calls.append(("close", ()))
        self.closed = True

    def enable_condstore(self) -> bool:
        self.mailbox._called("enable_condstore")
        if self.mailbox.condstore:
            self.condstore_enabled = True
            self.qresync_enabled = self.mailbox.qresync
        return self.condstore_enabled

    def list_folders(self) -> list[FolderInfo]:
        self.mailbox._called("list_folders")
        return [
            FolderInfo(f.raw_name, f.raw_name, "/", f.attributes, f.role)
            for f in self.mailbox.folders.values()
        ]

    def select(
        self,
        raw_name: str,
        *,
        readonly: bool = True,
        want_uidnext: bool = False,
        want_status: bool = False,
    ) -> SelectInfo:
        self.mailbox._called("select", raw_name)
        folder = self.mailbox.folders.get(raw_name)
        if folder is None:
            raise ImapFolderError(f"The folder {raw_name!r} does not exist on the server.")
        self._selected = folder
        status = None
        if want_status:
            unseen = sum(1 for m in folder.messages.values() if "\\Seen" not in m.flags)
            status = FolderStatus(
                len(folder.messages), folder.uidnext, folder.uidvalidity, unseen=unseen
            )
        return SelectInfo(
            uidvalidity=folder.uidvalidity,
            uidnext=folder.uidnext,
            exists=len(folder.messages),
            highestmodseq=folder.highestmodseq if self.condstore_enabled else None,
            status=status,
        )

    def status(self, raw_name: str) -> FolderStatus:
        """STATUS of a folder (``ImapFolderError`` when the server has no such folder)."""
        self.mailbox._called("status", raw_name)
        folder = self.mailbox.folders.get(raw_name)
        if folder is None:
            raise ImapFolderError(f"The folder {raw_name!r} does not exist on the server.")
        return self._status_of(folder)

    def statuses(self, raw_names: Sequence[str]) -> dict[str, FolderStatus]:
        """STATUS of several folders at once, leaving out those the server lacks."""
        self.mailbox._called("statuses", tuple(raw_names))
        folders = self.mailbox.folders
        return {n: self._status_of(folders[n]) for n in raw_names if n in folders}

    def _status_of(self, folder: FakeFolder) -> FolderStatus:
        unseen = sum(1 for m in folder.messages.values() if "\\Seen" not in m.flags)
        modseq = folder.highestmodseq if self.mailbox.condstore else None
        return FolderStatus(
            len(folder.messages), folder.uidnext, folder.uidvalidity, unseen, modseq
        )

    def search_uids(self, *criteria: str) -> list[int]:
        """``UID <set>`` (``a:b``, ``a:*``, ``a,b``) and ``SINCE <date>`` are understood."""
        self.mailbox._called("search_uids", *criteria)
        folder = self._folder()
        if criteria[0] == "UID":
            top = max(folder.messages, default=0)
            return sorted(u for u in folder.messages if _in_uid_set(u, criteria[1], top))
        if criteria[0] == "SINCE":
            day = datetime.strptime(criteria[1], "%d-%b-%Y").date()
            return self._since(folder, day)
        raise AssertionError(f"the fake does not understand SEARCH {criteria}")

    def uids_since(self, day: date) -> list[int]:
        self.mailbox._called("uids_since", day)
        return self._since(self._folder(), day)

    @staticmethod
    def _since(folder: FakeFolder, day: date) -> list[int]:
        return sorted(
            u
            for u, m in folder.messages.items()
            if m.internaldate is None or m.internaldate.date() >= day
        )

    def fetch_meta(
        self, uids: Sequence[int], *, changedsince: int | None = None
    ) -> list[MessageMeta]:
        self.mailbox._called("fetch_meta", list(uids), uids=uids)
        folder = self._folder()
        return [
            folder.messages[u].meta(modseq=self.condstore_enabled)
            for u in sorted(set(uids))
            if u in folder.messages
            and (changedsince is None or folder.messages[u].modseq > changedsince)
        ]

    def fetch_changed_since(self, modseq: int) -> list[MessageMeta]:
        self.mailbox._called("fetch_changed_since", modseq)
        folder = self._folder()
        return [
            m.meta(modseq=True) for _, m in sorted(folder.messages.items()) if m.modseq > modseq
        ]

    def fetch_changes_since(self, modseq: int) -> tuple[list[MessageMeta], set[int]] | None:
        self.mailbox._called("fetch_changes_since", modseq)
        folder = self._folder()
        vanished = {u for u, changed in folder.vanished.items() if changed > modseq}
        return self.fetch_changed_since(modseq), vanished

    def present_uids(self, uids: Sequence[int]) -> set[int]:
        self.mailbox._called("present_uids", list(uids), uids=uids)
        return set(uids) & set(self._folder().messages)

    def fetch_messages(self, uids: Sequence[int]) -> Iterator[FetchedMessage]:
        self.mailbox._called("fetch_messages", list(uids), uids=uids)
        folder = self._folder()
        fetched = [
            FetchedMessage(
                uid=m.uid,
                size=len(m.raw),
                internaldate=m.internaldate,
                flags=m.flags,
                raw=m.raw,
                modseq=m.modseq if self.condstore_enabled else None,
            )
            for u in sorted(set(uids))
            if (m := folder.messages.get(u)) is not None
        ]
        return iter(fetched)


def _in_uid_set(uid: int, uid_set: str, top: int) -> bool:
    """Whether ``uid`` is in an IMAP UID set (``*`` is the folder's largest UID, ``top``)."""
    for part in uid_set.split(","):
        first, _, last = part.partition(":")
        lo = top if first == "*" else int(first)
        hi = lo if not last else top if last == "*" else int(last)
        if min(lo, hi) <= uid <= max(lo, hi):
            return True
    return False
