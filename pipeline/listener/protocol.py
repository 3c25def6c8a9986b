"""A small asyncio IMAP client: just enough protocol for a listener to log in and IDLE.

Why an event loop and not imaplib in threads: one listener holds 2,000 connections. Measured by
``tests/benchmarks/listener_scale.py`` (1,000 grants, STARTTLS, Dovecot on the same 2-core
machine): 63 KiB of resident memory per connection here against 85 KiB per imaplib connection
on its own thread, 2 % of one core while 2,000 connections idle, and APPEND -> event within
a few milliseconds of a bare IDLE client. Two things made the loop that lean: one shared
:class:`ssl.SSLContext` per trust setting (a context with the system CA store is ~800 KiB) and
:func:`limit_tls_read_buffers` (asyncio zero-fills a 256 KiB read buffer per TLS connection).
aioimaplib is GPL-3.0, so this module carries its own line reader. It speaks only what the
listener needs:

    greeting -> [STARTTLS] -> CAPABILITY -> LOGIN | AUTHENTICATE PLAIN -> ENABLE -> EXAMINE
             -> IDLE ... DONE (repeat) | NOOP (poll) -> LOGOUT

Responses are read line by line; a line ending in a literal ``{n}`` is completed with the next
``n`` bytes. Untagged responses are returned as raw lines; :func:`classify` says which of them
mean "the folder changed". Every wait has a timeout; every failure is raised in the
:mod:`pipeline.errors` IMAP subtree (``ImapConnectError`` for a dropped or silent connection,
``ImapAuthError`` for refused credentials, ``ImapThrottledError`` for "come back later").
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import base64
import contextlib
import functools
import re
import socket
import ssl
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pipeline.errors import (
    ImapAuthError,
    ImapConnectError,
    ImapFolderError,
    ImapProtocolError,
    ImapThrottledError,
    ImapTlsError,
)
from pipeline.imap.client import THROTTLE_MARKERS, Endpoint

STREAM_LIMIT_BYTES = 256 * 1024  # longest line we accept; IDLE lines are tens of bytes
MAX_LITERAL_BYTES = 1024 * 1024  # no listener response carries a bigger literal
TCP_KEEPALIVE_IDLE_S = 60  # kernel probes a silent peer after this long...
TCP_KEEPALIVE_INTERVAL_S = 20  # ...every this long...
TCP_KEEPALIVE_COUNT = 3  # ...and gives up after this many unanswered probes
TLS_READ_BUFFER_BYTES = 17 * 1024  # one TLS record (16 KiB) plus headroom; asyncio's is 256 KiB

_TAGGED = re.compile(rb"^(?P<tag>[A-Za-z0-9]+) (?P<status>OK|NO|BAD)\b ?(?P<text>.*)$", re.I)
_LITERAL = re.compile(rb"\{(\d+)\+?\}$")
_CODE = re.compile(rb"^\[(?P<code>[^\]]*)\]")
_CAPABILITY = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.I)
_NUMBERED = re.compile(rb"^\* (\d+) ([A-Za-z]+)", re.I)
_RESP_CODE_NUM = re.compile(rb"\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]", re.I)
_AUTH_FAILURE_CODES = {b"AUTHENTICATIONFAILED", b"AUTHORIZATIONFAILED", b"EXPIRED"}


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
    match = _NUMBERED.match(line)
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


def quote(value: str) -> str:
    """An IMAP quoted string (no CR/LF allowed; callers check)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ssl_context(endpoint: Endpoint) -> ssl.SSLContext:
    """The TLS context for an endpoint: shared by every connection with the same trust settings.

    Sharing matters at scale: a context loaded with the system's CA store holds about 800 KiB,
    which per connection would cost gigabytes for 2,000 connections.
    """
    return _shared_context(endpoint.verify_tls, endpoint.ca_file)


@functools.lru_cache(maxsize=16)
def _shared_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def limit_tls_read_buffers(size: int = TLS_READ_BUFFER_BYTES) -> None:
    """Shrink asyncio's per-connection TLS read buffer for this process (call at start-up).

    asyncio allocates and zero-fills ``SSLProtocol.max_size`` (256 KiB) for every TLS
    connection: 500 MiB for 2,000 IDLE connections that each receive a few bytes a minute.
    One TLS record is at most 16 KiB, so a smaller buffer only means more reads for bulk
    transfers, which a listener never makes. This changes a class attribute of the standard
    library for the whole process, so only the listener's entry point calls it.
    """
    asyncio.sslproto.SSLProtocol.max_size = size


def is_throttle(text: bytes) -> bool:
    """Whether a server's text asks us to come back later ([UNAVAILABLE], too many …)."""
    lowered = text.decode("utf-8", "replace").lower()
    return any(marker in lowered for marker in THROTTLE_MARKERS)


def _keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, TCP_KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, TCP_KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, TCP_KEEPALIVE_COUNT)


class ImapConnection:
    """One IMAP connection on the running event loop. Use :meth:`open`, end with :meth:`close`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        endpoint: Endpoint,
        command_timeout_s: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.endpoint = endpoint
        self.command_timeout_s = command_timeout_s
        self.capabilities: frozenset[str] = frozenset()
        self._tag = 0
        self.idling_tag: bytes | None = None

    # --- set-up -------------------------------------------------------------------------------
    @classmethod
    async def open(
        cls, endpoint: Endpoint, *, connect_timeout_s: float, command_timeout_s: float
    ) -> ImapConnection:
        """Connect (implicit TLS, STARTTLS or plain) and read the greeting.

        Raises:
            ImapConnectError: unreachable, refused, or no greeting in time.
            ImapTlsError: the TLS handshake or certificate check failed.
            ImapProtocolError: the peer does not greet like an IMAP server.
            ImapThrottledError: the greeting is a BYE saying "too many connections" or alike.
        """
        where = f"{endpoint.host}:{endpoint.port}"
        tls = ssl_context(endpoint) if endpoint.tls == "ssl" else None
        try:
            async with asyncio.timeout(connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    endpoint.host,
                    endpoint.port,
                    ssl=tls,
                    server_hostname=endpoint.host if tls else None,
                    limit=STREAM_LIMIT_BYTES,
                )
                conn = cls(reader, writer, endpoint, command_timeout_s)
                greeting = await conn.read_line()
                if not greeting.upper().startswith((b"* OK", b"* PREAUTH")):
                    conn.abort()
                    if is_throttle(greeting):  # "* BYE Too many connections"
                        text = greeting[:120].decode("utf-8", "replace")
                        raise ImapThrottledError(f"{where} refused the connection for now: {text}")
                    raise ImapProtocolError(f"{where} did not greet as an IMAP server.")
                conn._remember_capabilities(greeting)
                if endpoint.tls == "starttls":
                    await conn._starttls(where)
        except ssl.SSLError as exc:
            raise ImapTlsError(f"TLS with {where} failed: {exc.reason}.") from exc
        except TimeoutError as exc:
            raise ImapConnectError(f"Timed out connecting to {where}.") from exc
        except OSError as exc:
            raise ImapConnectError(f"Cannot connect to {where}: {exc.strerror or exc}.") from exc
        _keepalive(conn._writer)
        return conn

    async def _starttls(self, where: str) -> None:
        status, _, text = await self.command("STARTTLS")
        if status != "OK":
            self.abort()
            raise ImapTlsError(f"{where} refused STARTTLS: {text}")
        await self._writer.start_tls(ssl_context(self.endpoint), server_hostname=self.endpoint.host)
        self.capabilities = frozenset()  # RFC 3501: forget what was said before TLS

    def _remember_capabilities(self, line: bytes) -> None:
        match = _CAPABILITY.search(line)
        if match:
            self.capabilities = frozenset(
                c.decode("ascii", "replace").upper() for c in match[1].split()
            )

    def has(self, capability: str) -> bool:
        """Whether the server announced ``capability``."""
        return capability.upper() in self.capabilities

    async def refresh_capabilities(self) -> None:
        """Ask CAPABILITY when the server has not volunteered it."""
        _, untagged, _ = await self.command("CAPABILITY", check=True)
        for line in untagged:
            if line.upper().startswith(b"* CAPABILITY "):
                self.capabilities = frozenset(
                    c.decode("ascii", "replace").upper() for c in line[13:].split()
                )

    async def login(self, username: str, password: str) -> None:
        """Authenticate: AUTHENTICATE PLAIN where offered (any characters), else LOGIN.

        Raises:
            ImapAuthError: the server refused the credentials.
            ImapThrottledError: the server refused the login for now (try later).
        """
        if not self.capabilities:
            await self.refresh_capabilities()
        if self.has("AUTH=PLAIN"):
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
            status, _, text = await self._authenticate_plain(token)
        else:
            if any(c in username + password for c in "\r\n"):
                raise ImapAuthError("Credentials with line breaks cannot be sent with LOGIN.")
            status, _, text = await self.command(
                f"LOGIN {quote(username)} {quote(password)}", log_safe="LOGIN"
            )
        if status != "OK":
            raw = text.encode()
            if is_throttle(raw):
                raise ImapThrottledError(f"{self.endpoint.host} refused the login for now: {text}")
            code = _CODE.match(raw)
            if code and code["code"].split()[0].upper() not in _AUTH_FAILURE_CODES:
                raise ImapThrottledError(
                    f"{self.endpoint.host} refused the login ({code['code'].decode()}); "
                    "retrying later."
                )
            raise ImapAuthError(
                f"{self.endpoint.host} refused the login for {self.endpoint.username!r}: "
                f"{text or 'wrong credentials'}. Re-authenticate the grant with a working "
                "(app) password."
            )
        self._remember_capabilities(text.encode())
        if not self.capabilities or "IMAP4REV1" not in self.capabilities:
            await self.refresh_capabilities()

    async def _authenticate_plain(self, token: str) -> tuple[str, list[bytes], str]:
        if self.has("SASL-IR"):
            return await self.command(f"AUTHENTICATE PLAIN {token}", log_safe="AUTHENTICATE")
        tag = self._next_tag()
        await self._send(tag + b" AUTHENTICATE PLAIN\r\n")
        async with self._deadline():
            line = await self.read_line()
            while line.startswith(b"* "):
                line = await self.read_line()
            if not line.startswith(b"+"):
                return self._tagged_result(tag, line)
        await self._send(token.encode("ascii") + b"\r\n")
        return await self._until_tagged(tag)

    async def enable(self, *extensions: str) -> None:
        """ENABLE extensions the server announced (CONDSTORE/QRESYNC), if it has ENABLE."""
        wanted = [e for e in extensions if self.has(e)]
        if wanted and self.has("ENABLE"):
            await self.command("ENABLE " + " ".join(wanted))

    async def examine(self, raw_name: str) -> Snapshot:
        """EXAMINE a folder (read-only: watching never changes flags).

        Raises:
            ImapFolderError: the folder is gone or cannot be opened.
            ImapThrottledError: the server refused it for now ([UNAVAILABLE], [LIMIT] …).
        """
        status, untagged, text = await self.command(f"EXAMINE {quote(raw_name)}")
        if status != "OK" and is_throttle(text.encode()):
            raise ImapThrottledError(f"{self.endpoint.host} refused EXAMINE for now: {text}")
        if status != "OK":
            raise ImapFolderError(f"Cannot open folder {raw_name!r}: {text}")
        values: dict[bytes, int] = {}
        exists: int | None = None
        for line in [*untagged, text.encode()]:
            for name, number in _RESP_CODE_NUM.findall(line):
                values[name.upper()] = int(number)
            match = _NUMBERED.match(line)
            if match and match[2].upper() == b"EXISTS":
                exists = int(match[1])
        return Snapshot(
            uidvalidity=values.get(b"UIDVALIDITY"),
            uidnext=values.get(b"UIDNEXT"),
            exists=exists,
            highestmodseq=values.get(b"HIGHESTMODSEQ"),
        )

    # --- IDLE ---------------------------------------------------------------------------------
    async def idle_start(self) -> list[bytes]:
        """Send IDLE and wait for the continuation; returns untagged lines seen meanwhile.

        Raises:
            ImapProtocolError: the server refused IDLE.
        """
        tag = self._next_tag()
        await self._send(tag + b" IDLE\r\n")
        seen: list[bytes] = []
        async with self._deadline():
            while True:
                line = await self.read_line()
                if line.startswith(b"+"):
                    self.idling_tag = tag
                    return seen
                if line.startswith(b"* "):
                    seen.append(line)
                    continue
                status, _, text = self._tagged_result(tag, line)
                raise ImapProtocolError(f"The server refused IDLE ({status} {text}).")

    async def idle_wait(self, timeout_s: float) -> bytes | None:
        """The next untagged line while idling, or None when ``timeout_s`` passes in silence."""
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                return await self.read_line()
        except TimeoutError:
            return None

    async def idle_done(self) -> list[bytes]:
        """End IDLE with DONE; returns untagged lines that arrived before the tagged OK."""
        tag, self.idling_tag = self.idling_tag, None
        if tag is None:
            return []
        await self._send(b"DONE\r\n")
        status, untagged, text = await self._until_tagged(tag)
        if status != "OK":
            raise ImapProtocolError(f"IDLE ended with {status} {text}.")
        return untagged

    # --- commands -----------------------------------------------------------------------------
    async def command(
        self, text: str, *, check: bool = False, log_safe: str | None = None
    ) -> tuple[str, list[bytes], str]:
        """Send one command; returns (status, untagged lines, text of the tagged reply).

        ``log_safe`` names the command in errors instead of its text (which may hold a
        password).

        Raises:
            ImapConnectError: the connection dropped or the answer did not come in time.
            ImapProtocolError: ``check`` is set and the answer was not OK.
        """
        tag = self._next_tag()
        await self._send(tag + b" " + text.encode("utf-8") + b"\r\n")
        status, untagged, reply = await self._until_tagged(tag)
        if check and status != "OK":
            raise ImapProtocolError(f"IMAP {log_safe or text} answered {status}: {reply}")
        return status, untagged, reply

    async def logout(self, timeout_s: float = 5.0) -> None:
        """LOGOUT politely, then close; never raises."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                if self.idling_tag is not None:
                    await self.idle_done()
                await self.command("LOGOUT")
        await self.close()

    async def close(self) -> None:
        """Close the transport; never raises."""
        self.abort()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()

    def abort(self) -> None:
        """Close the transport at once (no goodbye)."""
        with contextlib.suppress(Exception):
            self._writer.close()

    # --- plumbing -----------------------------------------------------------------------------
    def _next_tag(self) -> bytes:
        self._tag += 1
        return b"L%d" % self._tag

    def _deadline(self) -> asyncio.Timeout:
        return asyncio.timeout(self.command_timeout_s)

    async def _send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            async with self._deadline():
                await self._writer.drain()
        except TimeoutError as exc:
            raise ImapConnectError("The IMAP server stopped reading (write timed out).") from exc
        except OSError as exc:
            raise ImapConnectError(f"The IMAP connection dropped: {exc}") from exc

    async def read_line(self) -> bytes:
        """One response line without CRLF, literals inlined.

        Raises:
            ImapConnectError: the connection closed or broke.
            ImapProtocolError: a line or literal too long for a listener.
        """
        try:
            line = await self._reader.readuntil(b"\r\n")
            while True:
                match = _LITERAL.search(line[:-2])
                if not match:
                    return line[:-2]
                size = int(match[1])
                if size > MAX_LITERAL_BYTES:
                    raise ImapProtocolError(f"Literal of {size} bytes is too big for a listener.")
                literal = await self._reader.readexactly(size)
                line = line[:-2] + literal + await self._reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ImapConnectError("The IMAP server closed the connection.") from exc
        except asyncio.LimitOverrunError as exc:
            raise ImapProtocolError("An IMAP response line was too long.") from exc
        except ssl.SSLError as exc:
            raise ImapConnectError(f"TLS error on the IMAP connection: {exc.reason}") from exc
        except OSError as exc:
            raise ImapConnectError(f"The IMAP connection dropped: {exc}") from exc

    async def _until_tagged(self, tag: bytes) -> tuple[str, list[bytes], str]:
        untagged: list[bytes] = []
        try:
            async with self._deadline():
                while True:
                    line = await self.read_line()
                    if line.startswith(b"* "):
                        untagged.append(line)
                        continue
                    if line.startswith(b"+"):
                        continue  # a continuation we did not ask for: ignore
                    status, _, text = self._tagged_result(tag, line)
                    return status, untagged, text
        except TimeoutError as exc:
            raise ImapConnectError("The IMAP server did not answer in time.") from exc

    def _tagged_result(self, tag: bytes, line: bytes) -> tuple[str, list[bytes], str]:
        match = _TAGGED.match(line)
        if not match:
            raise ImapProtocolError(
                f"Unexpected IMAP line {line[:80].decode('utf-8', 'replace')!r}."
            )
        if match["tag"] != tag:
            raise ImapProtocolError(
                f"Answer for tag {match['tag'].decode()} while waiting for {tag.decode()}."
            )
        return match["status"].decode().upper(), [], match["text"].decode("utf-8", "replace")
