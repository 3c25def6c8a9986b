"""A scriptable fake IMAP server for tests: a normal small server, or any hostile one.

asyncio on loopback, a free port, plaintext, implicit TLS or STARTTLS (certificates from
:class:`tests.support.services.TlsFiles`). Normal behaviour is enough IMAP4rev1 for imaplib,
imap-tools, the pipeline's workers, API and listener: greeting, CAPABILITY, ID, ENABLE, LOGIN
(any password, or the configured one), NAMESPACE, LIST/LSUB, SELECT/EXAMINE (UIDVALIDITY,
UIDNEXT, EXISTS), STATUS, SEARCH/UID SEARCH (ALL, UID set, SINCE), FETCH/UID FETCH (UID,
FLAGS, RFC822.SIZE, INTERNALDATE, BODY.PEEK[] / [HEADER] / [TEXT]), APPEND, IDLE/DONE, NOOP,
CHECK, CLOSE, UNSELECT, LOGOUT. No CONDSTORE or QRESYNC by default (like Courier): clients fall
back to a UID diff; with ``CONDSTORE`` among ``capabilities`` SELECT/EXAMINE report the folder's
``[HIGHESTMODSEQ]`` and ENABLE enables it (drop ``IDLE`` from them for a server without IDLE).

Misbehaviour is scripted per command with :class:`Hostility` (or the same spec strings on the
command line): ``flood`` (endless untagged responses), ``literal:BYTES`` (announce a literal of
that size and stream it), ``endless-line`` (a line that never ends), ``trickle:SECONDS`` (the
whole answer, one byte every SECONDS), ``unrequested:N`` (N FETCH responses for messages nobody
asked for, then the normal answer), ``nested:DEPTH`` (a FETCH with DEPTH nested parentheses),
``malformed`` (garbage lines, then the normal answer), ``hang`` (never answer), ``bye[:TEXT]``
(``* BYE`` and close), ``drop`` (the normal answer, then close without a word), ``no[:TEXT]``
(tagged NO), ``inject`` (extra bytes right after the answer: for STARTTLS, plaintext between its
OK and the handshake). The greeting takes the same kinds. On IDLE, ``+KIND`` (``idling=True``)
sends the ``+ idling`` continuation first and misbehaves while the client idles. Server-wide quirks:
``folders`` (e.g. 10,000), 8-bit folder names (``FakeFolder(b"Caf\\xe9")``),
``uidvalidity_per_session`` (every session sees a new UIDVALIDITY), a ``password`` LOGIN checks,
and ``answer_delay_s`` (every answer that late: a slow server).

While it runs a test can :meth:`FakeImapServer.push` an untagged line to every client (an IDLE
notice, a ``* BYE``), :meth:`~FakeImapServer.drop_all` connections, queue untagged lines for the
next NOOP's answer (``pending_noop``), and read what it received (``commands``, ``logins``).

A session can also be a raw byte script instead (``FakeImapConfig(script=[Step(...), ...])``):
each :class:`Step` reads the command it expects, then sends its bytes verbatim (the command's
tag at ``{tag}``), at once, trickled, or followed by an endless stream; a script sends no
greeting of its own (its first step can).

In a test (the server runs in a background thread)::

    with FakeImapServer(FakeImapConfig(hostile={"SEARCH": Hostility("flood")})) as server:
        imaplib.IMAP4("127.0.0.1", server.port)

For other processes (a Celery worker, the listener, the API): :class:`FakeImapProcess`, or
``python -m tests.support.fake_imap --script search-flood`` (``--list-scripts`` names the
presets; ``--on FETCH=trickle:5@INBOX``, ``--greeting literal:2147483648``, ``--folders 10000``
build any other), which prints ``listening on 127.0.0.1:PORT`` once it accepts connections.

Every endless stream waits for the client to read (``drain``), so the fake server's own memory
stays small, and stops when the client goes away or after :data:`ENDLESS_MAX_BYTES`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
ENDLESS_MAX_BYTES = 64 * 1024**3  # an "endless" stream ends here, so a broken test ends too
CHUNK_BYTES = 64 * 1024  # what an endless stream writes between two drains
COMMAND_LINE_MAX = 1024 * 1024  # the fake server's own read bound for a client's line
CLIENT_LITERAL_MAX = 64 * 1024 * 1024  # and for a client's literal (APPEND)
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
IDLE_MAX_S = 3600.0  # an IDLE the client never ends
CAPABILITIES = "IMAP4rev1 LITERAL+ IDLE ENABLE UIDPLUS ID NAMESPACE UNSELECT"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

KINDS = (
    "flood",
    "literal",
    "endless-line",
    "trickle",
    "unrequested",
    "nested",
    "malformed",
    "hang",
    "bye",
    "drop",
    "no",
    "inject",
)


@dataclass(frozen=True)
class Hostility:
    """How the server misbehaves when it receives one command (or greets).

    ``arg`` is the size in bytes for ``literal``, seconds per byte for ``trickle``, a count
    for ``unrequested``, a depth for ``nested``, the repeated line for ``flood`` (bytes,
    without CRLF; a default fits the command) and the text for ``bye`` and ``no``. ``folder``
    limits it to sessions that have that folder selected (its name as the server lists it).
    ``after`` lets that many occurrences of the command (counted over the server's life) pass
    normally first.
    ``idling`` (IDLE only) sends the ``+ idling`` continuation before misbehaving.
    """

    kind: str
    arg: float | int | bytes | None = None
    folder: bytes | None = None
    after: int = 0
    idling: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown hostility {self.kind!r}; one of {', '.join(KINDS)}")

    @classmethod
    def parse(cls, spec: str) -> Hostility:
        """``[+]KIND[:ARG][@FOLDER]``, e.g. ``trickle:5@INBOX``, ``literal:2147483648`` or
        ``+flood`` (on IDLE: after the continuation)."""
        spec, _, folder = spec.partition("@")
        idling = spec.startswith("+")
        kind, _, raw = spec.removeprefix("+").partition(":")
        arg: float | int | bytes | None = None
        if raw:
            if kind in ("flood", "bye", "no"):
                arg = raw.encode()
            elif kind == "trickle":
                arg = float(raw)
            else:
                arg = int(raw)
        return cls(kind, arg, folder.encode() if folder else None, idling=idling)


@dataclass
class FakeFolder:
    """One folder: its name in the server's bytes, its attributes and its messages."""

    name: bytes
    messages: list[bytes] = field(default_factory=list)
    attributes: tuple[str, ...] = ("\\HasNoChildren",)
    uidvalidity: int = 1000
    highestmodseq: int = 1  # reported when the server advertises CONDSTORE
    internaldate: datetime | None = None  # of every message; default: a day ago
    raw_internaldates: dict[int, bytes] = field(default_factory=dict)  # UID -> sent verbatim


def sample_message(n: int, *, size: int = 0) -> bytes:
    """A small well-formed message (``size`` pads its body to about that many bytes)."""
    msg = EmailMessage()
    msg["From"] = "Alice <alice@fake.test>"
    msg["To"] = "Bob <bob@fake.test>"
    msg["Subject"] = f"Fake message {n}"
    msg["Date"] = format_datetime(datetime(2026, 1, 1, 12, 0, tzinfo=UTC) + timedelta(hours=n))
    msg["Message-ID"] = f"<fake-{n}@fake.test>"
    body = f"Body of fake message {n}.\n"
    msg.set_content(body + "x" * max(0, size - len(body)))
    return msg.as_bytes()


def default_folders() -> list[FakeFolder]:
    """INBOX with three messages, and an empty Sent."""
    return [
        FakeFolder(b"INBOX", [sample_message(i) for i in range(1, 4)]),
        FakeFolder(b"Sent", [], ("\\HasNoChildren", "\\Sent")),
    ]


@dataclass
class FakeImapConfig:
    """What the server holds and how it behaves.

    ``hostile`` maps a command (``SEARCH`` and ``FETCH`` cover their ``UID`` forms too) to its
    misbehaviour; ``greeting`` misbehaves before the first command. ``script``, when set, is
    played instead of any of it.
    """

    folders: list[FakeFolder] = field(default_factory=default_folders)
    password: str | None = None  # None: any password logs in
    hostile: dict[str, Hostility] = field(default_factory=dict)
    greeting: Hostility | None = None
    uidvalidity_per_session: bool = False
    select_uidnext: bool = True  # False: SELECT carries no [UIDNEXT] (STATUS does), as Courier
    tls: str = "plain"  # plain | ssl | starttls
    cert_file: Path | None = None
    key_file: Path | None = None
    capabilities: str = CAPABILITIES
    answer_delay_s: float = 0.0  # before every answer to a command
    script: list[Step] | None = None


@dataclass(frozen=True)
class Step:
    """One step of a scripted session.

    ``expect`` names the command to read first (None: send at once; a session that sent
    anything else is answered BAD and ended). ``send`` goes out verbatim, ``{tag}`` replaced by
    that command's tag, one byte every ``trickle_s`` when set; then ``then`` is sent again and
    again until the client goes away. After the last step the session waits for the client to
    hang up.
    """

    expect: str | None
    send: bytes = b""
    trickle_s: float | None = None
    then: bytes = b""


def many_folders(count: int) -> list[FakeFolder]:
    """INBOX plus ``count - 1`` empty folders (``Folder-00001``…)."""
    return [
        FakeFolder(b"INBOX", [sample_message(1)]),
        *(FakeFolder(f"Folder-{i:05d}".encode()) for i in range(1, count)),
    ]


# Presets for other processes (``--script NAME``); each also documents a seen attack.
SCRIPTS: dict[str, Callable[[], FakeImapConfig]] = {
    "normal": FakeImapConfig,
    "greeting-trickle": lambda: FakeImapConfig(greeting=Hostility("trickle", 5.0)),
    "greeting-literal": lambda: FakeImapConfig(greeting=Hostility("literal", 2**31)),
    "greeting-flood": lambda: FakeImapConfig(greeting=Hostility("flood")),
    "greeting-hang": lambda: FakeImapConfig(greeting=Hostility("hang")),
    "login-trickle": lambda: FakeImapConfig(hostile={"LOGIN": Hostility("trickle", 5.0)}),
    "login-literal": lambda: FakeImapConfig(hostile={"LOGIN": Hostility("literal", 2**31)}),
    "capability-flood": lambda: FakeImapConfig(hostile={"CAPABILITY": Hostility("flood")}),
    "list-literal": lambda: FakeImapConfig(hostile={"LIST": Hostility("literal", 2**31)}),
    "list-flood": lambda: FakeImapConfig(hostile={"LIST": Hostility("flood")}),
    "list-endless-line": lambda: FakeImapConfig(hostile={"LIST": Hostility("endless-line")}),
    "list-10000": lambda: FakeImapConfig(folders=many_folders(10_000)),
    "select-malformed": lambda: FakeImapConfig(hostile={"SELECT": Hostility("malformed")}),
    "search-flood": lambda: FakeImapConfig(hostile={"SEARCH": Hostility("flood")}),
    "fetch-trickle": lambda: FakeImapConfig(hostile={"FETCH": Hostility("trickle", 5.0)}),
    "fetch-literal": lambda: FakeImapConfig(hostile={"FETCH": Hostility("literal", 2**31)}),
    "fetch-unrequested": lambda: FakeImapConfig(hostile={"FETCH": Hostility("unrequested", 1000)}),
    "fetch-nested": lambda: FakeImapConfig(hostile={"FETCH": Hostility("nested", 1_000_000)}),
    "idle-flood": lambda: FakeImapConfig(hostile={"IDLE": Hostility("flood")}),
    "idle-literal": lambda: FakeImapConfig(hostile={"IDLE": Hostility("literal", 2**31)}),
    "idle-endless-line": lambda: FakeImapConfig(hostile={"IDLE": Hostility("endless-line")}),
    "noop-flood": lambda: FakeImapConfig(hostile={"NOOP": Hostility("flood")}),
    "uidvalidity-changes": lambda: FakeImapConfig(uidvalidity_per_session=True),
    "eight-bit-folder": lambda: FakeImapConfig(
        folders=[*default_folders(), FakeFolder(b"Caf\xe9 \xc3\xa9t\xc3\xa9", [sample_message(9)])]
    ),
}


class _Closed(Exception):
    """The client went away (or the stream reached its end)."""


def _imap_date(when: datetime) -> str:
    return f"{when.day:02d}-{MONTHS[when.month - 1]}-{when.year} {when:%H:%M:%S} +0000"


def _quote(name: bytes) -> bytes:
    return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _parse_set(spec: bytes, largest: int) -> set[int] | None:
    """An IMAP sequence set as numbers (``*`` is ``largest``); None when it is not a set."""
    out: set[int] = set()
    for part in spec.split(b","):
        lo_raw, _, hi_raw = part.partition(b":")
        try:
            lo = largest if lo_raw == b"*" else int(lo_raw)
            hi = lo if not hi_raw else (largest if hi_raw == b"*" else int(hi_raw))
        except ValueError:
            return None
        lo, hi = min(lo, hi), max(lo, hi)
        out.update(range(lo, min(hi, max(largest, lo)) + 1))
    return out


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|\((?:[^()]|\([^()]*\))*\)|[^\s()]+(?:\[[^\]]*\])?')


def _tokens(args: bytes) -> list[bytes]:
    return _TOKEN.findall(args)


def _unquote(token: bytes) -> bytes:
    if token.startswith(b'"') and token.endswith(b'"') and len(token) >= 2:
        return re.sub(rb"\\(.)", rb"\1", token[1:-1])
    return token


class _Session:
    """One client connection."""

    def __init__(
        self,
        server: FakeImapServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.config = server.config
        self.reader = reader
        self.writer = writer
        self.selected: FakeFolder | None = None
        self.trickle_s: float | None = None
        server.sessions += 1
        self.number = server.sessions
        self.authenticated = False
        self.tls_started = False
        self.inject_after_starttls = b""  # plaintext sent between STARTTLS's OK and TLS
        self.idle_continued = False  # an ``idling`` hostility sent IDLE's continuation already

    def capabilities(self) -> str:
        """What CAPABILITY answers now (STARTTLS until it was used)."""
        if self.config.tls == "starttls" and not self.tls_started:
            return self.config.capabilities + " STARTTLS"
        return self.config.capabilities

    # --- output ---------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise _Closed
        if self.trickle_s is None:
            self.writer.write(data)
            try:
                await self.writer.drain()
            except (ConnectionError, OSError) as exc:
                raise _Closed from exc
            return
        for i in range(len(data)):
            self.writer.write(data[i : i + 1])
            try:
                await self.writer.drain()
            except (ConnectionError, OSError) as exc:
                raise _Closed from exc
            await asyncio.sleep(self.trickle_s)

    async def stream(self, chunk: bytes, total: int) -> None:
        """Send ``total`` bytes made of ``chunk`` repeated, waiting for the client to read."""
        sent = 0
        while sent < total:
            piece = chunk if total - sent >= len(chunk) else chunk[: total - sent]
            await self.send(piece)
            sent += len(piece)
            self.server.bytes_streamed += len(piece)

    # --- input ----------------------------------------------------------------------------
    async def read_line(self) -> bytes:
        try:
            line = await self.reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            raise _Closed from exc
        return line[:-2]

    async def read_command(self) -> bytes:
        """One command with its literals folded in (``{n}``: we send a continuation first)."""
        line = await self.read_line()
        while (match := re.search(rb"\{(\d+)(\+?)\}$", line)) is not None:
            size = int(match[1])
            if size > CLIENT_LITERAL_MAX:
                raise _Closed
            if not match[2]:
                await self.send(b"+ go ahead\r\n")
            try:
                literal = await self.reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise _Closed from exc
            line = line[: match.start()] + _quote(literal) + await self.read_line()
        return line

    # --- the session ----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if self.config.script is not None:
                await self._play(self.config.script)
                return
            if not await self._greet():
                return
            while True:
                line = await self.read_command()
                if not line:
                    continue
                self.server.commands.append((self.number, line))
                tag, _, rest = line.partition(b" ")
                name, _, args = rest.partition(b" ")
                command = name.upper().decode("ascii", "replace")
                if command == "UID":
                    sub, _, args = args.partition(b" ")
                    command = sub.upper().decode("ascii", "replace")
                    uid = True
                else:
                    uid = False
                if not await self._dispatch(tag, command, args, uid):
                    return
        except _Closed:
            return

    async def _play(self, steps: list[Step]) -> None:
        """Play a raw byte script (see :class:`Step`)."""
        tag = b"*"
        for step in steps:
            if step.expect is not None:
                line = await self.read_command()
                self.server.commands.append((self.number, line))
                tag, _, rest = line.partition(b" ")
                if rest.split(b" ", 1)[0].upper() != step.expect.encode():
                    await self.send(tag + b" BAD the script expected " + step.expect.encode())
                    return
            self.trickle_s = step.trickle_s
            try:
                await self.send(step.send.replace(b"{tag}", tag))
            finally:
                self.trickle_s = None
            if step.then:
                chunk = step.then * max(1, CHUNK_BYTES // len(step.then))
                await self.stream(chunk, ENDLESS_MAX_BYTES)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while await self.reader.read(CHUNK_BYTES):
                pass

    async def _greet(self) -> bool:
        greeting = f"* OK [CAPABILITY {self.capabilities()}] Fake IMAP ready\r\n".encode()
        hostility = self.config.greeting
        if hostility is None:
            await self.send(greeting)
            return True
        return await self._misbehave(hostility, b"*", "GREETING", normal=greeting)

    def _hostility(self, command: str) -> Hostility | None:
        hostility = self.config.hostile.get(command)
        if hostility is None:
            return None
        if hostility.folder is not None and (
            self.selected is None or self.selected.name != hostility.folder
        ):
            return None
        seen = self.server._occurrences.get(command, 0)
        self.server._occurrences[command] = seen + 1
        return hostility if seen >= hostility.after else None

    async def _dispatch(self, tag: bytes, command: str, args: bytes, uid: bool) -> bool:
        if self.config.answer_delay_s:
            await asyncio.sleep(self.config.answer_delay_s)
        hostility = self._hostility(command)
        if hostility is None:
            return await self._normal(tag, command, args, uid)
        return await self._misbehave(hostility, tag, command, args=args, uid=uid)

    async def _misbehave(
        self,
        how: Hostility,
        tag: bytes,
        command: str,
        *,
        args: bytes = b"",
        uid: bool = False,
        normal: bytes | None = None,
    ) -> bool:
        """Answer ``command`` the hostile way; False when the session is over."""

        async def answer_normally() -> bool:
            if normal is not None:  # the greeting
                await self.send(normal)
                return True
            return await self._normal(tag, command, args, uid)

        kind = how.kind
        if how.idling and command == "IDLE":
            await self.send(b"+ idling\r\n")
            self.idle_continued = True
        if kind == "trickle":
            self.trickle_s = float(how.arg if isinstance(how.arg, float | int) else 5.0)
            try:
                return await answer_normally()
            finally:
                self.trickle_s = None
        if kind == "hang":
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while await self.reader.read(CHUNK_BYTES):
                    pass
            return False
        if kind == "bye":
            text = how.arg if isinstance(how.arg, bytes) else b"Fake server says goodbye"
            await self.send(b"* BYE " + text + b"\r\n")
            return False
        if kind == "drop":
            await answer_normally()
            return False
        if kind == "inject":
            extra = (
                how.arg if isinstance(how.arg, bytes) else b"* CAPABILITY IMAP4rev1 INJECTED\r\n"
            )
            if command == "STARTTLS" and normal is None:
                self.inject_after_starttls = extra
                return await answer_normally()
            going = await answer_normally()
            await self.send(extra)
            return going
        if kind == "no":
            if normal is not None:
                await self.send(b"* BYE Not today\r\n")
                return False
            text = how.arg if isinstance(how.arg, bytes) else b"[UNAVAILABLE] Fake refusal"
            await self.send(tag + b" NO " + text + b"\r\n")
            return True
        if kind == "malformed":
            await self.send(
                b'* LIST (\\HasNoChildren "/" \r\n'
                b"* 1 FETCH (UID ) BODY[] {5\r\n"
                b"*\r\n"
                b"* OK [UIDVALIDITY notanumber] odd\r\n"
                b"* \xff\xfe\x00 binary\r\n"
                b"* 99999999999999999999999 EXISTS\r\n"
                b")))(((\r\n"
            )
            return await answer_normally()
        if kind == "unrequested":
            count = int(how.arg) if isinstance(how.arg, int | float) else 1000
            for i in range(count):
                await self.send(self._fetch_line(900_000 + i, sample_message(900_000 + i)))
            return await answer_normally()
        if kind == "nested":
            depth = int(how.arg) if isinstance(how.arg, int | float) else 100_000
            await self.send(b"* 1 FETCH (UID 1 BODYSTRUCTURE ")
            await self.stream(b"(" * CHUNK_BYTES, depth)
            await self.send(b'"TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1')
            await self.stream(b")" * CHUNK_BYTES, depth)
            await self.send(b")\r\n")
            return await answer_normally()
        if kind == "endless-line":
            await self.send(self._untagged_prefix(command))
            await self.stream(b"x" * CHUNK_BYTES, ENDLESS_MAX_BYTES)
            return False
        if kind == "literal":
            size = int(how.arg) if isinstance(how.arg, int | float) else 2**31
            await self.send(self._untagged_prefix(command) + b"{%d}\r\n" % size)
            await self.stream(b"a" * CHUNK_BYTES, size)
            await self.send(b"\r\n")
            return await answer_normally()
        # flood
        line = how.arg if isinstance(how.arg, bytes) else self._flood_line(command)
        await self.stream(
            (line + b"\r\n") * max(1, CHUNK_BYTES // (len(line) + 2)), ENDLESS_MAX_BYTES
        )
        return False

    @staticmethod
    def _untagged_prefix(command: str) -> bytes:
        return {
            "GREETING": b"* OK ",
            "LIST": b'* LIST (\\HasNoChildren) "/" ',
            "LSUB": b'* LSUB (\\HasNoChildren) "/" ',
            "FETCH": b'* 1 FETCH (UID 1 RFC822.SIZE 10 INTERNALDATE "01-Jan-2026 12:00:00 +0000" '
            b"FLAGS () BODY[] ",
            "SEARCH": b"* SEARCH ",
            "STATUS": b"* STATUS ",
        }.get(command, b"* OK [ALERT] ")

    @staticmethod
    def _flood_line(command: str) -> bytes:
        if command == "SEARCH":
            return b"* SEARCH " + b" ".join(str(i).encode() for i in range(1, 200))
        if command in ("LIST", "LSUB"):
            return b'* LIST (\\HasNoChildren) "/" "Flood"'
        if command == "FETCH":
            return b"* 1 FETCH (FLAGS (\\Seen))"
        return b"* 1 EXISTS"

    # --- normal behaviour -----------------------------------------------------------------
    def _uidvalidity(self, folder: FakeFolder) -> int:
        if self.config.uidvalidity_per_session:
            return folder.uidvalidity + self.number
        return folder.uidvalidity

    def _internaldate(self, folder: FakeFolder) -> datetime:
        return folder.internaldate or (datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))

    def _fetch_line(
        self, uid: int, raw: bytes, *, seq: int | None = None, items: bytes = b"BODY[]"
    ) -> bytes:
        when = self.selected.internaldate if self.selected else None
        date = _imap_date(when or datetime.now(UTC) - timedelta(days=1)).encode()
        if self.selected and uid in self.selected.raw_internaldates:
            date = self.selected.raw_internaldates[uid]  # e.g. a date no calendar has
        head = b'* %d FETCH (UID %d RFC822.SIZE %d FLAGS () INTERNALDATE "%s"' % (
            seq if seq is not None else uid,
            uid,
            len(raw),
            date,
        )
        upper = items.upper()
        for section, part in (
            (b"HEADER", raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"),
            (b"TEXT", raw.split(b"\r\n\r\n", 1)[-1]),
        ):
            if b"[" + section + b"]" in upper:
                return head + b" BODY[%s] {%d}\r\n%s)\r\n" % (section, len(part), part)
        if (
            b"BODY[]" in upper
            or b"BODY.PEEK[]" in upper
            or b"RFC822" in upper.replace(b"RFC822.SIZE", b"")
        ):
            return head + b" BODY[] {%d}\r\n%s)\r\n" % (len(raw), raw)
        return head + b")\r\n"

    def _find(self, token: bytes) -> FakeFolder | None:
        name = _unquote(token)
        for folder in self.config.folders:
            if folder.name == name or (
                name.upper() == b"INBOX" and folder.name.upper() == b"INBOX"
            ):
                return folder
        return None

    async def _normal(self, tag: bytes, command: str, args: bytes, uid: bool) -> bool:
        ok = tag + b" OK " + command.encode() + b" completed\r\n"
        tokens = _tokens(args)
        if command == "CAPABILITY":
            await self.send(b"* CAPABILITY " + self.capabilities().encode() + b"\r\n" + ok)
        elif command == "LOGIN":
            password = _unquote(tokens[1]).decode("utf-8", "replace") if len(tokens) > 1 else ""
            if self.config.password is not None and password != self.config.password:
                await self.send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
            else:
                self.authenticated = True
                await self.send(
                    tag + b" OK [CAPABILITY " + self.capabilities().encode() + b"] Logged in\r\n"
                )
        elif command == "STARTTLS":
            if self.config.tls != "starttls":
                await self.send(tag + b" BAD STARTTLS not offered\r\n")
                return True
            await self.send(tag + b" OK Begin TLS negotiation now\r\n" + self.inject_after_starttls)
            await self.writer.start_tls(self.server._ssl_context())
            self.tls_started = True
        elif command == "LOGOUT":
            await self.send(b"* BYE Logging out\r\n" + ok)
            return False
        elif command in ("NOOP", "CHECK"):
            pending = self.server.pending_noop
            notices = b""
            while command == "NOOP" and pending:
                notices += pending.popleft() + b"\r\n"
            await self.send(notices + ok)
        elif command == "ID":
            await self.send(b'* ID ("name" "fake-imap")\r\n' + ok)
        elif command == "ENABLE":
            offered = self.capabilities().upper().split()
            enabled = [t.upper() for t in tokens if t.upper().decode("ascii", "replace") in offered]
            await self.send(b" ".join([b"* ENABLED", *enabled]) + b"\r\n" + ok)
        elif command == "NAMESPACE":
            await self.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n' + ok)
        elif command in ("LIST", "LSUB"):
            await self._list(command, ok)
        elif command in ("SELECT", "EXAMINE"):
            return await self._select(tag, command, tokens, ok)
        elif command == "STATUS":
            folder = self._find(tokens[0]) if tokens else None
            if folder is None:
                await self.send(tag + b" NO [NONEXISTENT] No such folder\r\n")
            else:
                n = len(folder.messages)
                await self.send(
                    b"* STATUS %s (MESSAGES %d UIDNEXT %d UIDVALIDITY %d UNSEEN 0)\r\n"
                    % (_quote(folder.name), n, n + 1, self._uidvalidity(folder))
                    + ok
                )
        elif command in ("CLOSE", "UNSELECT"):
            self.selected = None
            await self.send(ok)
        elif command == "SEARCH":
            await self._search(tokens, uid, ok)
        elif command == "FETCH":
            await self._fetch(tokens, uid, ok)
        elif command == "STORE":
            await self.send(ok)
        elif command == "APPEND":
            folder = self._find(tokens[0]) if tokens else None
            if folder is None:
                await self.send(tag + b" NO [TRYCREATE] No such folder\r\n")
            else:
                folder.messages.append(_unquote(tokens[-1]))
                await self.send(ok)
        elif command == "IDLE":
            if not self.idle_continued:
                await self.send(b"+ idling\r\n")
            self.idle_continued = False
            try:
                done = await asyncio.wait_for(self.read_line(), IDLE_MAX_S)
            except TimeoutError:
                return False
            self.server.commands.append((self.number, done))
            if done.upper() != b"DONE":
                await self.send(tag + b" BAD Expected DONE\r\n")
                return True
            await self.send(ok)
        else:
            await self.send(tag + b" BAD Unknown command\r\n")
        return True

    async def _list(self, command: str, ok: bytes) -> None:
        out: list[bytes] = []
        for folder in self.config.folders:
            attrs = " ".join(folder.attributes).encode()
            out.append(b'* %s (%s) "/" %s\r\n' % (command.encode(), attrs, _quote(folder.name)))
            if len(out) >= 256:
                await self.send(b"".join(out))
                out.clear()
        await self.send(b"".join(out) + ok)

    async def _select(self, tag: bytes, command: str, tokens: list[bytes], ok: bytes) -> bool:
        folder = self._find(tokens[0]) if tokens else None
        if folder is None:
            self.selected = None
            await self.send(tag + b" NO [NONEXISTENT] No such folder\r\n")
            return True
        self.selected = folder
        n = len(folder.messages)
        mode = b"READ-ONLY" if command == "EXAMINE" else b"READ-WRITE"
        await self.send(
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] ok\r\n"
            b"* %d EXISTS\r\n* 0 RECENT\r\n"
            b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
            b"%s%s"
            b"%s OK [%s] %s completed\r\n"
            % (
                n,
                self._uidvalidity(folder),
                b"* OK [UIDNEXT %d] Predicted next UID\r\n" % (n + 1)
                if self.config.select_uidnext
                else b"",
                b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % folder.highestmodseq
                if "CONDSTORE" in self.capabilities().split()
                else b"",
                tag,
                mode,
                command.encode(),
            )
        )
        return True

    async def _search(self, tokens: list[bytes], uid: bool, ok: bytes) -> None:
        folder = self.selected
        found: list[int] = []
        if folder is not None:
            n = len(folder.messages)
            candidates = set(range(1, n + 1))
            upper = [t.upper() for t in tokens]
            for i, token in enumerate(upper):
                if token == b"UID" and i + 1 < len(tokens):
                    chosen = _parse_set(tokens[i + 1], n)
                    candidates &= chosen if chosen is not None else set()
                elif token == b"SINCE" and i + 1 < len(tokens):
                    day = datetime.strptime(_unquote(tokens[i + 1]).decode(), "%d-%b-%Y").replace(
                        tzinfo=UTC
                    )
                    if self._internaldate(folder) < day:
                        candidates = set()
            found = sorted(candidates)
        numbers = b" ".join(str(u).encode() for u in found)
        await self.send(b"* SEARCH" + (b" " + numbers if numbers else b"") + b"\r\n" + ok)

    async def _fetch(self, tokens: list[bytes], uid: bool, ok: bytes) -> None:
        folder = self.selected
        if folder is None or not tokens:
            await self.send(ok)
            return
        n = len(folder.messages)
        wanted = _parse_set(tokens[0], n) or set()
        items = b" ".join(tokens[1:])
        out: list[bytes] = []
        for number in sorted(wanted):
            if 1 <= number <= n:  # UIDs are the sequence numbers here
                out.append(self._fetch_line(number, folder.messages[number - 1], items=items))
        await self.send(b"".join(out) + ok)


async def _finish(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left and let closed transports finish, before the loop closes."""
    pending = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for _ in range(3):  # connection_lost callbacks run on the next iterations
        await asyncio.sleep(0)


class FakeImapServer:
    """The fake server, run in a background thread (a context manager).

    ``port`` is known once entered; ``commands`` lists ``(session number, command line)`` as
    received (an IDLE's ``DONE`` too), ``sessions`` counts connections, ``bytes_streamed`` counts
    hostile bytes sent; ``pending_noop`` holds untagged lines (without CRLF) the next NOOP
    answers first.
    """

    def __init__(self, config: FakeImapConfig | None = None, *, port: int = 0) -> None:
        self.config = config or FakeImapConfig()
        self.port = port
        self.commands: list[tuple[int, bytes]] = []
        self.bytes_streamed = 0
        self.sessions = 0
        self.pending_noop: collections.deque[bytes] = collections.deque()
        self._live: set[_Session] = set()
        self._occurrences: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def logins(self) -> int:
        """How many LOGIN commands arrived (refused ones too)."""
        return self.command_names().count("LOGIN")

    def push(self, line: bytes) -> None:
        """Send an untagged ``line`` (without CRLF) to every connected client, now."""

        def write() -> None:
            for session in self._live:
                if not session.writer.is_closing():
                    session.writer.write(line + b"\r\n")

        self._in_loop(write)

    def drop_all(self) -> None:
        """Close every client connection (after what was already written to it)."""

        def close() -> None:
            for session in self._live:
                session.writer.close()

        self._in_loop(close)

    def _in_loop(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the server's loop and return once it ran."""
        loop = self._loop
        if loop is None or self._thread is None or threading.current_thread() is self._thread:
            action()
            return
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        if not done.wait(STOP_TIMEOUT_S):
            raise RuntimeError("the fake IMAP server's loop did not run the action")

    def command_names(self) -> list[str]:
        """The commands received, by name (``UID FETCH`` as ``FETCH``), in order."""
        names: list[str] = []
        for _, line in self.commands:
            if line.upper() == b"DONE":
                names.append("DONE")
                continue
            parts = line.split(b" ")
            word = parts[1] if len(parts) > 1 else b""
            if word.upper() == b"UID" and len(parts) > 2:
                word = parts[2]
            names.append(word.upper().decode("ascii", "replace"))
        return names

    def _ssl_context(self) -> ssl.SSLContext:
        if self.config.cert_file is None or self.config.key_file is None:
            raise ValueError("TLS needs cert_file and key_file (tests.support.services.TlsFiles)")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.config.cert_file), str(self.config.key_file))
        return ctx

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        session = _Session(self, reader, writer)
        self._live.add(session)
        try:
            await session.run()
        except (ConnectionError, OSError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            self._live.discard(session)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1)
            writer.transport.abort()  # a flood's unread buffer would keep it half-closed
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def serve(self, on_ready: Callable[[int], None] | None = None) -> None:
        """Serve until :meth:`stop` (or forever): the asyncio entry point."""
        self._stopping = asyncio.Event()
        ctx = self._ssl_context() if self.config.tls == "ssl" else None
        server = await asyncio.start_server(
            self._handle, HOST, self.port, ssl=ctx, limit=COMMAND_LINE_MAX
        )
        self.port = server.sockets[0].getsockname()[1]
        if on_ready is not None:
            on_ready(self.port)
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.serve(lambda _port: self._ready.set()))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(_finish(loop))
            loop.close()

    def start(self) -> FakeImapServer:
        """Start serving in a daemon thread; returns once it accepts connections."""
        self._thread = threading.Thread(target=self._run, name="fake-imap", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            raise RuntimeError(f"fake IMAP server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Close every connection and stop the thread."""
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> FakeImapServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class FakeImapProcess:
    """The fake server in its own process (``python -m tests.support.fake_imap``), for tests
    whose client is another process: a context manager with ``port`` and ``pid``."""

    def __init__(self, *args: str, script: str = "normal") -> None:
        self.args = ["--script", script, *args]
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> FakeImapProcess:
        """Spawn it and wait until it listens."""
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_imap", "--port", "0", *self.args],
            cwd=root,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = b""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith(b"listening on "):
                self.port = int(line.rsplit(b":", 1)[1])
                return self
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"fake IMAP process did not start: {line!r}")

    def stop(self) -> None:
        """Terminate it (it is its own process group: nothing else is signalled)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> FakeImapProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def config_from_args(argv: list[str] | None = None) -> tuple[FakeImapConfig, int]:
    """The command line's configuration and port."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_imap")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--script", default="normal", choices=sorted(SCRIPTS))
    parser.add_argument("--list-scripts", action="store_true")
    parser.add_argument("--on", action="append", default=[], metavar="CMD=KIND[:ARG][@FOLDER]")
    parser.add_argument("--greeting", metavar="KIND[:ARG]")
    parser.add_argument("--folders", type=int, help="INBOX plus empty folders, this many")
    parser.add_argument("--password", help="the only password LOGIN accepts (default: any)")
    parser.add_argument("--uidvalidity-per-session", action="store_true")
    parser.add_argument("--tls", choices=("plain", "ssl", "starttls"), default="plain")
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    args = parser.parse_args(argv)
    if args.list_scripts:
        print("\n".join(sorted(SCRIPTS)))
        raise SystemExit(0)
    config = SCRIPTS[args.script]()
    hostile = dict(config.hostile)
    for spec in args.on:
        command, _, how = spec.partition("=")
        hostile[command.upper()] = Hostility.parse(how)
    config = replace(
        config,
        hostile=hostile,
        greeting=Hostility.parse(args.greeting) if args.greeting else config.greeting,
        folders=many_folders(args.folders) if args.folders else config.folders,
        password=args.password if args.password is not None else config.password,
        uidvalidity_per_session=args.uidvalidity_per_session or config.uidvalidity_per_session,
        tls=args.tls,
        cert_file=args.cert,
        key_file=args.key,
    )
    return config, args.port


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT."""
    config, port = config_from_args(argv)
    server = FakeImapServer(config, port=port)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def ready(bound: int) -> None:
            print(f"listening on {HOST}:{bound}", flush=True)

        serving = asyncio.create_task(server.serve(ready))
        await stop.wait()
        assert server._stopping is not None
        server._stopping.set()
        await serving

    asyncio.run(run())


if __name__ == "__main__":
    main()
