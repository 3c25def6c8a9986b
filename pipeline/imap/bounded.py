"""An imaplib connection whose every read is bounded, and whose every command has a deadline.

imaplib trusts the server: it reads a response line of any length (imap-tools raises the cap to
20 MB for every program that imports it), a literal of whatever size the server announces
(``{2147483648}`` is a 2 GB allocation), keeps every untagged response in
``untagged_responses`` until someone pops it, and its socket timeout is per read, so a server
that sends one byte every few seconds holds a command forever. :class:`BoundedIMAP4` reads
from the socket itself, through one small buffer, and enforces per command (and for the greeting
and login phase as a whole):

- ``max_line_bytes``: the longest response line;
- ``max_literal_bytes``: the largest literal; a bigger one is refused before a byte of it is
  read (the session is then closed: the rest of the stream cannot be trusted);
- ``max_untagged``: untagged responses per command (a flood ends there);
- ``max_command_bytes``: bytes received per command, in all;
- ``command_deadline_s``: total time per command, and ``login_deadline_s`` for connect, TLS,
  greeting, STARTTLS, login and CAPABILITY together.

A broken bound raises :class:`pipeline.errors.ImapLimitError` naming the bound and the setting
that raises it, and marks the connection ``broken`` (it is shut down, never logged out).
``untagged_responses`` is emptied when each command starts, so what a server volunteers between
or during commands is dropped instead of piling up over a pooled session's life (callers read
what they need, e.g. ``response("UIDVALIDITY")``, right after their command).

Memory per connection: at most one line or one literal being read (plus one copy while it is
turned into ``bytes``), and what one command keeps, bounded by ``max_command_bytes``.
"""

from __future__ import annotations

import imaplib
import math
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ImapLimitError, ImapTlsError

RECV_BYTES = 64 * 1024  # one socket read; also the most the buffer holds beyond a line

MAX_LINE_BYTES = 16 * 1024 * 1024  # a UID SEARCH answer of about 2 million UIDs
MAX_LITERAL_BYTES = 64 * 1024 * 1024  # above the 25-50 MB providers accept per message
# A metadata FETCH asks for 5,000, a LIST of 10,000 folders fits, and so do the flag changes of
# a large folder marked read at once (CHANGEDSINCE); a flood of tiny lines ends at ~30 MB.
MAX_UNTAGGED = 500_000
MAX_COMMAND_BYTES = 96 * 1024 * 1024  # the largest literal plus a 16 MiB batch's headroom
COMMAND_DEADLINE_S = 300.0  # a 16 MiB batch at 0.5 Mbit/s; a trickle ends here
LOGIN_DEADLINE_S = 60.0  # connect + TLS + greeting + login + CAPABILITY, however trickled
LOGOUT_DEADLINE_S = 10.0  # a goodbye is not worth waiting for: the socket closes anyway


@dataclass(frozen=True)
class ImapLimits:
    """The bounds one IMAP session keeps (settings ``IMAP_PIPELINE_IMAP_*``)."""

    max_line_bytes: int = MAX_LINE_BYTES
    max_literal_bytes: int = MAX_LITERAL_BYTES
    max_untagged: int = MAX_UNTAGGED
    max_command_bytes: int = MAX_COMMAND_BYTES
    command_deadline_s: float = COMMAND_DEADLINE_S
    login_deadline_s: float = LOGIN_DEADLINE_S


def _size(count: int) -> str:
    return f"{count:,} bytes"


class BoundedIMAP4(imaplib.IMAP4):
    """``imaplib.IMAP4`` with bounded reads and total deadlines (see the module docstring).

    Args:
        host: The server.
        port: Its port.
        limits: The bounds.
        read_timeout_s: The longest wait for any one read or write (a silent server).
        deadline: Monotonic time by which connect, greeting and login must be done; the
            owner calls :meth:`end_login_phase` once logged in.
        ssl_context: Given, the connection starts with TLS (implicit TLS, port 993).
        address: The IP address to connect to, already checked by :mod:`pipeline.netguard`
            (no second lookup of ``host``); TLS still verifies the certificate for ``host``.
            None: resolve ``host``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        limits: ImapLimits,
        read_timeout_s: float,
        deadline: float,
        ssl_context: ssl.SSLContext | None = None,
        address: str | None = None,
    ) -> None:
        self.limits = limits
        self._address = address
        self.broken = False  # a bound was broken: shut down, never log out
        self.closed = False
        self.busy = False  # a command was sent and its answer not read to the end
        self._read_timeout_s = read_timeout_s
        self._phase_deadline = deadline
        self._implicit_tls = ssl_context
        self._buffer = bytearray()
        self._deadline = deadline
        self._what = "the greeting"
        self._untagged = 0
        self._received = 0
        # what the phase's deadline is called in errors; _late_* what the current one is
        self._deadline_setting = "IMAP_PIPELINE_IMAP_LOGIN_DEADLINE_S"
        self._deadline_s = limits.login_deadline_s
        self._late_s, self._late_setting = self._deadline_s, self._deadline_setting
        super().__init__(host, port, timeout=min(read_timeout_s, self._remaining()))

    # --- phases and commands --------------------------------------------------------------
    def end_login_phase(self) -> None:
        """Logged in: from now on only each command's own deadline applies."""
        self._phase_deadline = math.inf
        self._deadline_setting = "IMAP_PIPELINE_IMAP_COMMAND_DEADLINE_S"
        self._deadline_s = self.limits.command_deadline_s

    @contextmanager
    def total_deadline(self, seconds: float, *, setting: str) -> Iterator[None]:
        """Every command inside the block ends within ``seconds`` of its start, in all (each
        command's own deadline still applies). A command still running then breaks the
        ``deadline`` bound naming ``setting`` (what to raise). Blocks nest: the earlier end wins.

        Example::

            with imap.raw.total_deadline(20.0, setting="the search's 20 s"):
                for folder in folders: ...  # SELECT + UID SEARCH of each, 20 s in all
        """
        saved = (self._phase_deadline, self._deadline_s, self._deadline_setting)
        end = time.monotonic() + seconds
        if end < self._phase_deadline:
            self._phase_deadline, self._deadline_s, self._deadline_setting = end, seconds, setting
        try:
            yield
        finally:
            self._phase_deadline, self._deadline_s, self._deadline_setting = saved

    def _begin(self, what: str) -> None:
        self._what = what
        self._untagged = 0
        self._received = 0
        own = LOGOUT_DEADLINE_S if what == "LOGOUT" else self.limits.command_deadline_s
        own_end = time.monotonic() + own
        if own_end <= self._phase_deadline:
            self._deadline = own_end
            self._late_s, self._late_setting = own, "IMAP_PIPELINE_IMAP_COMMAND_DEADLINE_S"
        else:  # the phase (login, or a total_deadline block) ends first
            self._deadline = self._phase_deadline
            self._late_s, self._late_setting = self._deadline_s, self._deadline_setting
        # Whatever the server volunteered since the last command (and nobody read) goes.
        self.untagged_responses = {}

    def _command(self, name: str, *args: Any) -> Any:
        if name == "UID" and args:
            sub = args[0]
            self._begin(f"UID {sub.decode() if isinstance(sub, bytes) else sub}")
        else:
            self._begin(name)  # never the arguments: LOGIN carries the password
        self.busy = True
        return super()._command(name, *args)  # type: ignore[misc]

    def _command_complete(self, name: str, tag: bytes) -> Any:
        # Only an answer read to its tagged line leaves the stream in step; an exception of
        # any kind (a bound, a time limit, a signal) leaves ``busy`` set, and the session is
        # then shut down rather than spoken to again.
        try:
            result = super()._command_complete(name, tag)  # type: ignore[misc]
        except self.abort:
            raise
        except self.error:  # BAD: its tagged line was read, the stream is in step
            self.busy = False
            raise
        self.busy = False
        return result

    def _append_untagged(self, typ: str, dat: Any) -> None:
        self._untagged += 1
        if self._untagged > self.limits.max_untagged:
            raise self._breach(
                "untagged responses",
                f"sent more than {self.limits.max_untagged:,} untagged responses",
                "IMAP_PIPELINE_IMAP_MAX_UNTAGGED",
            )
        super()._append_untagged(typ, dat)  # type: ignore[misc]

    # --- the socket -----------------------------------------------------------------------
    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _timeout(self) -> float:
        """The next read's or write's timeout; past the deadline, the deadline's breach."""
        remaining = self._remaining()
        if remaining <= 0:
            raise self._late()
        return min(self._read_timeout_s, remaining)

    def _late(self) -> ImapLimitError:
        return self._breach(
            "deadline",
            f"did not complete {self._what} within {self._late_s:g} s",
            self._late_setting,
        )

    def _create_socket(self, timeout: float | None) -> socket.socket:
        target = self._address or self.host or None
        sock = socket.create_connection((target, self.port), self._timeout())
        if self._implicit_tls is None:
            return sock
        sock.settimeout(self._timeout())  # the whole handshake, not each read of it
        try:
            return self._implicit_tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    def _fill(self) -> bool:
        """Read what the server sent next into the buffer; False at end of stream."""
        timeout = self._timeout()
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(RECV_BYTES)
        except TimeoutError:
            if timeout < self._read_timeout_s:
                raise self._late() from None
            raise
        self._received += len(chunk)
        if self._received > self.limits.max_command_bytes:
            raise self._breach(
                "bytes per command",
                f"sent more than {_size(self.limits.max_command_bytes)}",
                "IMAP_PIPELINE_IMAP_MAX_COMMAND_BYTES",
            )
        self._buffer += chunk
        return bool(chunk)

    def readline(self) -> bytes:
        """One response line (with its CRLF), at most ``max_line_bytes`` long."""
        limit = self.limits.max_line_bytes
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched)
            if end >= 0:
                if end + 1 > limit:
                    raise self._long_line()
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > limit:
                raise self._long_line()
            searched = len(self._buffer)
            if not self._fill():
                line = bytes(self._buffer)  # imaplib reports the unterminated line
                self._buffer.clear()
                return line

    def _long_line(self) -> ImapLimitError:
        return self._breach(
            "line length",
            f"sent a response line longer than {_size(self.limits.max_line_bytes)}",
            "IMAP_PIPELINE_IMAP_MAX_LINE_BYTES",
        )

    def read(self, size: int) -> bytes:
        """A literal of ``size`` bytes; refused unread above ``max_literal_bytes``."""
        if size > self.limits.max_literal_bytes:
            raise self._breach(
                "literal size",
                f"announced a literal of {_size(size)}, above the limit of "
                f"{_size(self.limits.max_literal_bytes)}",
                "IMAP_PIPELINE_IMAP_MAX_LITERAL_BYTES",
            )
        while len(self._buffer) < size:
            if not self._fill():
                break  # short: imaplib fails on the next line
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def send(self, data: Any) -> None:
        """Write a command, within the command's deadline."""
        timeout = self._timeout()
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            if timeout < self._read_timeout_s:
                raise self._late() from None
            raise

    def shutdown(self) -> None:
        """Close the connection (and drop what was buffered)."""
        self.closed = True
        self._buffer = bytearray()
        self.untagged_responses = {}
        super().shutdown()

    def starttls(self, ssl_context: ssl.SSLContext) -> tuple[Any, list[None]]:  # type: ignore[override]
        """STARTTLS, refusing a server that sends anything between its OK and the handshake
        (plaintext injected there would be read as if it came over TLS)."""
        if "STARTTLS" not in self.capabilities:
            raise self.abort("TLS not supported by server")
        typ, dat = self._simple_command("STARTTLS")
        if typ != "OK":
            raise self.error("Couldn't establish TLS session")
        if self._buffer:
            self.broken = True
            raise ImapTlsError(
                f"{self.host}:{self.port} sent data after agreeing to STARTTLS; refused as a "
                "possible injection. Use implicit TLS (port 993) if the server offers it."
            )
        self.sock.settimeout(self._timeout())
        self.sock = ssl_context.wrap_socket(self.sock, server_hostname=self.host)
        self.file = self.sock.makefile("rb")  # imaplib's shutdown closes it
        self._tls_established = True
        self._ask_capabilities()  # over TLS: nothing said before it counts
        return typ, dat

    def _get_capabilities(self) -> None:
        """At connect: the greeting's ``[CAPABILITY ...]`` when it has one (RFC 3501 7.1;
        Dovecot and Cyrus send it), else ask as imaplib does: a command less per connection,
        which a poll pays every minute. (After STARTTLS :meth:`starttls` always asks.)"""
        _, announced = self.response("CAPABILITY")
        if announced and announced[-1]:
            self.capabilities = tuple(str(announced[-1], "ascii", "replace").upper().split())
            return
        self._ask_capabilities()

    def _ask_capabilities(self) -> None:
        """CAPABILITY, as imaplib asks it."""
        _, dat = self.capability()
        if dat == [None] or not dat:
            raise self.error("no CAPABILITY response from server")
        self.capabilities = tuple(str(dat[-1], "ascii", "replace").upper().split())

    # --- errors ---------------------------------------------------------------------------
    def _breach(self, bound: str, detail: str, setting: str) -> ImapLimitError:
        self.broken = True
        return ImapLimitError(
            f"The IMAP server {self.host}:{self.port} {detail} during {self._what}; the "
            f"session was closed. If this server is trusted, raise {setting}.",
            bound=bound,
            setting=setting,
        )
