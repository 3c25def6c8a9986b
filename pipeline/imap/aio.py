"""A small asyncio IMAP client: just enough protocol for a listener to log in and IDLE.

Why an event loop and not imaplib in threads: one listener holds 2,000 connections. Measured by
``tests/benchmarks/listener_scale.py`` (1,000 grants, STARTTLS, Dovecot on the same 2-core
machine): 63 KiB of resident memory per connection here against 85 KiB per imaplib connection
on its own thread, 2 % of one core while 2,000 connections idle, and APPEND -> event within
a few milliseconds of a bare IDLE client (what made the loop that lean, shared TLS contexts and
small TLS read buffers, is in :mod:`pipeline.imap.transport`). aioimaplib is GPL-3.0, so this
module carries its own line reader. It speaks only what the listener
(:mod:`pipeline.listener.idle`) needs:

    greeting -> [STARTTLS] -> CAPABILITY -> LOGIN | AUTHENTICATE PLAIN -> ENABLE -> EXAMINE
             -> IDLE ... DONE (repeat) | NOOP (poll) -> LOGOUT

Responses are read line by line; a line ending in a literal ``{n}`` is completed with the next
``n`` bytes. Untagged responses are never collected: each is looked at once
(:func:`~pipeline.imap.responses.classify` says which mean "the folder changed") and dropped,
so a command returns at most one line per kind of change (:class:`Notices`). One hostile
server must cost only its own connection, so every read is bounded (the constants below: line,
literal, response, untagged responses and bytes per command and per minute of IDLE) and every
command has one total deadline, sending and answer together, however slowly the server
trickles. Every failure is raised in the :mod:`pipeline.errors` IMAP subtree
(``ImapConnectError`` for a dropped or silent connection, ``ImapAuthError`` for refused
credentials, ``ImapThrottledError`` for "come back later", ``ImapLimitError`` for a broken
bound or deadline).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterator

from pipeline.errors import (
    ImapAuthError,
    ImapConnectError,
    ImapFolderError,
    ImapLimitError,
    ImapProtocolError,
    ImapThrottledError,
    ImapTlsError,
)
from pipeline.imap.client import Endpoint
from pipeline.imap.responses import (
    BYE_TEXT_BYTES,
    NUMBERED,
    Notices,
    Snapshot,
    folder_name_bytes,
    is_throttle,
)
from pipeline.imap.transport import keepalive, ssl_context

# Read bounds: whatever a server sends, one connection holds at most about
# 2 * LINE_MAX_BYTES in its stream buffer (asyncio pauses the socket above twice the limit) plus
# one response of RESPONSE_MAX_BYTES being assembled. Lines are never kept beyond their parsing.
LINE_MAX_BYTES = 64 * 1024  # one response line; IDLE notices are tens of bytes, FLAGS a few KiB
LITERAL_MAX_BYTES = 64 * 1024  # the listener asks for no message data: a bigger literal is
# refused unread (the connection ends), never buffered
RESPONSE_MAX_BYTES = 256 * 1024  # one response with all its literals
COMMAND_MAX_BYTES = 4 * 1024 * 1024  # read while waiting for one tagged answer, and per
# FLOOD_WINDOW_S of IDLE: 50,000 typical notices; a flood ends long before it costs much CPU
FLOOD_WINDOW_S = 60.0  # IDLE's untagged responses and bytes are counted per window this long
DEFAULT_MAX_UNTAGGED = 10_000  # untagged responses per command and per window of IDLE
LITERAL_DIGITS_MAX = 12  # longer sizes are refused before int() (which caps at 4,300 digits)

_TAGGED = re.compile(rb"^(?P<tag>[A-Za-z0-9]+) (?P<status>OK|NO|BAD)\b ?(?P<text>.*)$", re.I)
_LITERAL = re.compile(rb"\{(\d+)\+?\}$")
_CODE = re.compile(rb"^\[(?P<code>[^\]]*)\]")
_CAPABILITY = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.I)
_RESP_CODE_NUM = re.compile(rb"\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d{1,20})\]", re.I)
_AUTH_FAILURE_CODES = {b"AUTHENTICATIONFAILED", b"AUTHORIZATIONFAILED", b"EXPIRED"}


def quote(value: str) -> str:
    """An IMAP quoted string (no CR/LF allowed; callers check)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ReadBudget:
    """What a server may still send while we wait for one answer, or in one window of IDLE.

    Counts untagged responses and bytes; going over either raises :class:`ImapLimitError`.
    Nothing is kept: the budget is two integers whatever the server sends.
    """

    def __init__(self, what: str, max_responses: int, max_bytes: int = COMMAND_MAX_BYTES) -> None:
        self.what = what
        self.max_responses = max_responses
        self.max_bytes = max_bytes
        self.responses = 0
        self.bytes = 0

    def spend(self, nbytes: int) -> None:
        """Count ``nbytes`` read (before they are kept, so a refusal buffers nothing more)."""
        self.bytes += nbytes
        if self.bytes > self.max_bytes:
            raise ImapLimitError(
                f"The server sent more than {self.max_bytes // 1024:,} KiB {self.what}; "
                "disconnected."
            )

    def count(self) -> None:
        """Count one untagged response."""
        self.responses += 1
        if self.responses > self.max_responses:
            raise ImapLimitError(
                f"The server sent more than {self.max_responses:,} untagged responses "
                f"{self.what} (a flood); disconnected.",
                bound="untagged responses",
                setting="IMAP_PIPELINE_LISTENER_MAX_UNTAGGED",
            )


class ImapConnection:
    """One IMAP connection on the running event loop. Use :meth:`open`, end with :meth:`close`.

    Every read is bounded (:data:`LINE_MAX_BYTES`, :data:`LITERAL_MAX_BYTES`,
    :data:`RESPONSE_MAX_BYTES`, ``max_untagged`` responses and :data:`COMMAND_MAX_BYTES` per
    command and per :data:`FLOOD_WINDOW_S` of IDLE) and every command, send and answer
    together, has one deadline of ``command_timeout_s``. A broken bound raises
    :class:`ImapLimitError`; the caller drops the connection.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        endpoint: Endpoint,
        command_timeout_s: float,
        max_untagged: int = DEFAULT_MAX_UNTAGGED,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.endpoint = endpoint
        self.command_timeout_s = command_timeout_s
        self.max_untagged = max_untagged
        self.capabilities: frozenset[str] = frozenset()
        self._tag = 0
        self.idling_tag: bytes | None = None
        self._idle_budget = ReadBudget("", 0)
        self._idle_window_ends = 0.0

    # --- set-up -------------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        *,
        connect_timeout_s: float,
        command_timeout_s: float,
        max_untagged: int = DEFAULT_MAX_UNTAGGED,
    ) -> ImapConnection:
        """Connect (implicit TLS, STARTTLS or plain) and read the greeting.

        ``connect_timeout_s`` bounds everything here together: TCP, TLS, the greeting (however
        slowly it trickles) and STARTTLS.

        Raises:
            ImapConnectError: unreachable, refused, or no complete greeting in time.
            ImapTlsError: the TLS handshake or certificate check failed.
            ImapProtocolError: the peer does not greet like an IMAP server.
            ImapLimitError: the greeting broke a read bound (a huge line or literal).
            ImapThrottledError: the greeting is a BYE saying "too many connections" or alike.
        """
        where = f"{endpoint.host}:{endpoint.port}"
        tls = ssl_context(endpoint) if endpoint.tls == "ssl" else None
        try:
            async with asyncio.timeout(connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    endpoint.address or endpoint.host,  # the address netguard checked, if any
                    endpoint.port,
                    ssl=tls,
                    server_hostname=endpoint.host if tls else None,
                    limit=LINE_MAX_BYTES,
                )
                conn = cls(reader, writer, endpoint, command_timeout_s, max_untagged)
                try:
                    await conn._greeted(where)
                except BaseException:
                    conn.abort()
                    raise
        except ssl.SSLError as exc:
            raise ImapTlsError(f"TLS with {where} failed: {exc.reason}.") from exc
        except TimeoutError as exc:
            raise ImapConnectError(
                f"{where} did not connect and greet within {connect_timeout_s:.0f} s."
            ) from exc
        except OSError as exc:
            raise ImapConnectError(f"Cannot connect to {where}: {exc.strerror or exc}.") from exc
        keepalive(conn._writer)
        return conn

    async def _greeted(self, where: str) -> None:
        greeting = await self.read_line(ReadBudget("in its greeting", 1))
        if not greeting.upper().startswith((b"* OK", b"* PREAUTH")):
            if is_throttle(greeting):  # "* BYE Too many connections"
                text = greeting[:BYE_TEXT_BYTES].decode("utf-8", "replace")
                raise ImapThrottledError(f"{where} refused the connection for now: {text}")
            raise ImapProtocolError(f"{where} did not greet as an IMAP server.")
        self._remember_capabilities(greeting)
        if self.endpoint.tls == "starttls":
            await self._starttls(where)

    async def _starttls(self, where: str) -> None:
        status, _, text = await self.command("STARTTLS")
        if status != "OK":
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
        found: list[bytes] = []

        def keep(line: bytes) -> None:
            if line[:13].upper() == b"* CAPABILITY ":
                found[:] = [line[13:]]  # the last one counts; never more than one kept

        await self.command("CAPABILITY", check=True, on_untagged=keep)
        if found:
            self.capabilities = frozenset(
                c.decode("ascii", "replace").upper() for c in found[0].split()
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
            status, _, text = await self.command(f"LOGIN {quote(username)} {quote(password)}")
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
            return await self.command(f"AUTHENTICATE PLAIN {token}")
        tag = self._next_tag()
        budget = ReadBudget("in answer to AUTHENTICATE", self.max_untagged)
        notices = Notices()
        async with self._within("answer AUTHENTICATE"):
            await self._send(tag + b" AUTHENTICATE PLAIN\r\n")
            line = await self.read_line(budget)
            while line.startswith(b"* "):
                budget.count()
                line = await self.read_line(budget)
            if not line.startswith(b"+"):
                status, text = self._tagged_result(tag, line)
                return status, [], text
            await self._send(token.encode("ascii") + b"\r\n")
            status, text = await self._until_tagged(tag, budget, notices.add)
        return status, notices.lines, text

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
            ImapLimitError: the answer broke a read bound (a flood, a huge line or literal).
        """
        values: dict[bytes, int] = {}
        exists: list[int] = []

        def note(line: bytes) -> None:  # parsed as it comes: the lines themselves are not kept
            for name, number in _RESP_CODE_NUM.findall(line[:BYE_TEXT_BYTES]):
                values[name.upper()] = int(number)
            match = NUMBERED.match(line)
            if match and match[2].upper() == b"EXISTS":
                exists[:] = [int(match[1])]

        # the folder's own bytes (a raw 8-bit name too), carried through str as surrogates
        name = folder_name_bytes(raw_name).decode("utf-8", "surrogateescape")
        status, _, text = await self.command(f"EXAMINE {quote(name)}", on_untagged=note)
        if status != "OK" and is_throttle(text.encode()):
            raise ImapThrottledError(f"{self.endpoint.host} refused EXAMINE for now: {text}")
        if status != "OK":
            raise ImapFolderError(f"Cannot open folder {raw_name!r}: {text}")
        note(text.encode())
        return Snapshot(
            uidvalidity=values.get(b"UIDVALIDITY"),
            uidnext=values.get(b"UIDNEXT"),
            exists=exists[0] if exists else None,
            highestmodseq=values.get(b"HIGHESTMODSEQ"),
        )

    # --- IDLE ---------------------------------------------------------------------------------
    async def idle_start(self) -> list[bytes]:
        """Send IDLE and wait for the continuation; returns untagged lines seen meanwhile,
        coalesced (:class:`Notices`).

        Raises:
            ImapProtocolError: the server refused IDLE.
            ImapLimitError: a flood, or no continuation within ``command_timeout_s``.
        """
        tag = self._next_tag()
        budget = ReadBudget("in answer to IDLE", self.max_untagged)
        notices = Notices()
        async with self._within("answer IDLE"):
            await self._send(tag + b" IDLE\r\n")
            while True:
                line = await self.read_line(budget)
                if line.startswith(b"+"):
                    self.idling_tag = tag
                    self._idle_window_ends = 0.0  # a fresh flood window
                    return notices.lines
                if line.startswith(b"* "):
                    budget.count()
                    notices.add(line)
                    continue
                status, text = self._tagged_result(tag, line)
                raise ImapProtocolError(f"The server refused IDLE ({status} {text}).")

    async def idle_wait(self, timeout_s: float) -> bytes | None:
        """The next untagged line while idling, or None when ``timeout_s`` passes in silence.

        Only the start of a response is waited for up to ``timeout_s``; once it came, the rest
        (a literal, say) must follow within ``command_timeout_s``. Responses and bytes are
        counted per :data:`FLOOD_WINDOW_S`.

        Raises:
            ImapLimitError: a flood (more than ``max_untagged`` responses or
                :data:`COMMAND_MAX_BYTES` in one window), a huge line or literal, or a
                response that did not complete in time.
        """
        loop = asyncio.get_running_loop()
        if loop.time() >= self._idle_window_ends:
            self._idle_window_ends = loop.time() + FLOOD_WINDOW_S
            self._idle_budget = ReadBudget(
                f"within {FLOOD_WINDOW_S:.0f} s of IDLE", self.max_untagged
            )
        budget = self._idle_budget
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                first = await self._read_raw_line(budget)
        except TimeoutError:
            return None
        budget.count()
        async with self._within("complete a response"):
            return await self._complete(first, budget)

    async def idle_done(self) -> list[bytes]:
        """End IDLE with DONE; returns untagged lines that arrived before the tagged OK,
        coalesced (:class:`Notices`)."""
        tag, self.idling_tag = self.idling_tag, None
        if tag is None:
            return []
        budget = ReadBudget("in answer to DONE", self.max_untagged)
        notices = Notices()
        async with self._within("answer DONE"):
            await self._send(b"DONE\r\n")
            status, text = await self._until_tagged(tag, budget, notices.add)
        if status != "OK":
            raise ImapProtocolError(f"IDLE ended with {status} {text}.")
        return notices.lines

    # --- commands -----------------------------------------------------------------------------
    async def command(
        self,
        text: str,
        *,
        check: bool = False,
        on_untagged: Callable[[bytes], None] | None = None,
    ) -> tuple[str, list[bytes], str]:
        """Send one command; returns (status, untagged lines coalesced, text of the tagged reply).

        ``on_untagged`` sees every untagged line as it comes (then it is dropped). Errors name
        the command by its first word only: the rest may hold a password.

        Raises:
            ImapConnectError: the connection dropped.
            ImapLimitError: the answer broke a read bound or did not come within
                ``command_timeout_s`` (sending and answer together).
            ImapProtocolError: ``check`` is set and the answer was not OK.
        """
        verb = text.split(" ", 1)[0].upper()
        tag = self._next_tag()
        budget = ReadBudget(f"in answer to {verb}", self.max_untagged)
        notices = Notices()

        def seen(line: bytes) -> None:
            notices.add(line)
            if on_untagged is not None:
                on_untagged(line)

        async with self._within(f"answer {verb}"):
            await self._send(tag + b" " + text.encode("utf-8", "surrogateescape") + b"\r\n")
            status, reply = await self._until_tagged(tag, budget, seen)
        if check and status != "OK":
            raise ImapProtocolError(f"IMAP {verb} answered {status}: {reply}")
        return status, notices.lines, reply

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

    @contextlib.asynccontextmanager
    async def _within(self, what: str) -> AsyncIterator[None]:
        """One total deadline (``command_timeout_s``) for everything in the block."""
        try:
            async with asyncio.timeout(self.command_timeout_s):
                yield
        except TimeoutError as exc:
            raise ImapLimitError(
                f"The server did not {what} within {self.command_timeout_s:.0f} s "
                "(a dead or trickling server); disconnected.",
                bound="command deadline",
                setting="IMAP_PIPELINE_LISTENER_COMMAND_TIMEOUT_S",
            ) from exc

    async def _send(self, data: bytes) -> None:
        """Write and wait for the socket buffer to drain (the caller's deadline applies)."""
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise ImapConnectError(f"The IMAP connection dropped: {exc}") from exc

    async def read_line(self, budget: ReadBudget) -> bytes:
        """One response without CRLF, literals inlined; bytes are charged to ``budget``.

        Raises:
            ImapConnectError: the connection closed or broke.
            ImapLimitError: a line, literal or response too big for a listener, or the
                budget spent.
        """
        return await self._complete(await self._read_raw_line(budget), budget)

    async def _read_raw_line(self, budget: ReadBudget) -> bytes:
        """One line up to CRLF (kept), at most :data:`LINE_MAX_BYTES`. Safe to cancel: a
        line not complete yet stays in the stream's buffer."""
        with self._reading():
            line = await self._reader.readuntil(b"\r\n")
        budget.spend(len(line))
        return line

    async def _complete(self, line: bytes, budget: ReadBudget) -> bytes:
        """Read the literals a line announces (``{n}`` at its end) and the lines after them."""
        total = len(line)
        segment = line  # only the newest segment can announce a literal (at its end)
        with self._reading():
            while True:
                match = _LITERAL.search(segment, 0, len(segment) - 2)
                if not match:
                    return line[:-2]
                digits = match[1]
                size = int(digits) if len(digits) <= LITERAL_DIGITS_MAX else RESPONSE_MAX_BYTES + 1
                if size > LITERAL_MAX_BYTES:
                    raise ImapLimitError(
                        f"The server announced a literal of {size:,} bytes; a listener reads "
                        f"at most {LITERAL_MAX_BYTES // 1024} KiB. Disconnected without "
                        "reading it."
                    )
                total += size
                if total > RESPONSE_MAX_BYTES:
                    raise ImapLimitError(
                        f"The server sent a response longer than {RESPONSE_MAX_BYTES // 1024} "
                        "KiB; disconnected."
                    )
                budget.spend(size)
                literal = await self._reader.readexactly(size)
                segment = await self._reader.readuntil(b"\r\n")
                budget.spend(len(segment))
                total += len(segment)
                line = line[:-2] + literal + segment

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Stream errors as :mod:`pipeline.errors`."""
        try:
            yield
        except asyncio.IncompleteReadError as exc:
            raise ImapConnectError("The IMAP server closed the connection.") from exc
        except asyncio.LimitOverrunError as exc:
            raise ImapLimitError(
                f"The server sent a line longer than {LINE_MAX_BYTES // 1024} KiB; disconnected."
            ) from exc
        except ssl.SSLError as exc:
            raise ImapConnectError(f"TLS error on the IMAP connection: {exc.reason}") from exc
        except OSError as exc:
            raise ImapConnectError(f"The IMAP connection dropped: {exc}") from exc

    async def _until_tagged(
        self, tag: bytes, budget: ReadBudget, on_untagged: Callable[[bytes], None]
    ) -> tuple[str, str]:
        """Read until the tagged answer of ``tag``; untagged lines go to ``on_untagged``, one at
        a time, and are not kept. The caller holds the deadline."""
        while True:
            line = await self.read_line(budget)
            if line.startswith(b"* "):
                budget.count()
                on_untagged(line)
                continue
            if line.startswith(b"+"):
                budget.count()  # a continuation we did not ask for: ignored, but counted
                continue
            return self._tagged_result(tag, line)

    def _tagged_result(self, tag: bytes, line: bytes) -> tuple[str, str]:
        match = _TAGGED.match(line)
        if not match:
            raise ImapProtocolError(
                f"Unexpected IMAP line {line[:80].decode('utf-8', 'replace')!r}."
            )
        if match["tag"] != tag:
            raise ImapProtocolError(
                f"Answer for tag {match['tag'][:20].decode('utf-8', 'replace')} while waiting "
                f"for {tag.decode()}."
            )
        return match["status"].decode().upper(), match["text"].decode("utf-8", "replace")
