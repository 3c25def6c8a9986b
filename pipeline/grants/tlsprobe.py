"""Find the TLS mode of an IMAP or SMTP port that was given without one.

Nylas' custom-connection settings carry no TLS field, so a port other than the well-known ones
(993/143 for IMAP, 465/587/25 for SMTP) says nothing about how to talk to it. Both protocols
have the server speak first: a greeting that arrives within :data:`GREETING_WAIT_S` means a
plaintext port (where STARTTLS is then required, unless plaintext was allowed explicitly);
silence means the server waits for a TLS ClientHello, and a TLS handshake is tried on the same
connection. What worked is stored on the grant, so later sessions never guess again.

The probe is bounded like every other exchange: one connection, a total deadline, and at most
:data:`GREETING_PEEK_BYTES` read before TLS (the greeting is only looked at, not parsed).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from dataclasses import dataclass

from pipeline.presets import TlsMode

# Dovecot, Courier, Cyrus, Postfix and Exim greet within milliseconds; an implicit-TLS port
# stays silent until the ClientHello. 3 s leaves a loaded server its greeting and costs an
# implicit-TLS sign-in 3 s once (the result is stored).
GREETING_WAIT_S = 3.0
# Enough to tell a greeting arrived; the protocol client reads (and bounds) the real one later.
GREETING_PEEK_BYTES = 64
# An SMTP greeting and EHLO answer are a few hundred bytes; more is not an SMTP server we trust.
EHLO_ANSWER_MAX_BYTES = 8 * 1024
EHLO_NAME = "imap-pipeline.invalid"  # RFC 5321 4.1.1.1: a name for ourselves; we have no FQDN

WELL_KNOWN_IMAP: dict[int, TlsMode] = {993: "ssl", 143: "starttls"}  # RFC 8314, RFC 3501
WELL_KNOWN_SMTP: dict[int, TlsMode] = {465: "ssl", 587: "starttls", 25: "starttls"}  # RFC 8314


class ProbeFailed(Exception):
    """Neither a greeting nor a TLS handshake; ``tried`` says what was attempted, in words."""

    def __init__(self, tried: str, certificate: str | None = None) -> None:
        super().__init__(tried)
        self.tried = tried
        self.certificate = certificate  # the verify message when only the certificate failed


class NoStartTls(ProbeFailed):
    """An SMTP server greeted in plaintext and its EHLO offers no STARTTLS: the password could
    only go in the clear."""


@dataclass(frozen=True)
class ProbeResult:
    """What a probe found, and what it tried to find it (for messages)."""

    tls: TlsMode
    tried: str


def probe_tls(
    host: str,
    address: str,
    port: int,
    context: ssl.SSLContext,
    *,
    deadline_s: float,
    greeting_wait_s: float = GREETING_WAIT_S,
    smtp: bool = False,
) -> ProbeResult:
    """Connect to ``address``:``port`` once and find whether it greets in plaintext or speaks TLS.

    ``host`` is the name for SNI and the certificate check; ``address`` the one to connect to
    (already checked by :mod:`pipeline.netguard` when the host was named by a user).
    ``deadline_s`` bounds the whole probe (connect, greeting wait, handshake).

    With ``smtp``, a plaintext greeting is followed by EHLO, and STARTTLS must be among the
    extensions the server lists (the password never goes in the clear).

    Raises:
        NoStartTls: ``smtp``, a plaintext greeting, and no STARTTLS offered.
        ProbeFailed: No connection, no greeting and no TLS handshake, or the connection was
            closed without a word.
    """
    deadline = time.monotonic() + deadline_s
    wait = min(greeting_wait_s, deadline_s)

    def remaining() -> float:
        return max(0.01, deadline - time.monotonic())

    try:
        sock = socket.create_connection((address, port), timeout=remaining())
    except TimeoutError as exc:
        raise ProbeFailed(f"a TCP connection (timed out after {deadline_s:g} s)") from exc
    except OSError as exc:
        raise ProbeFailed(f"a TCP connection ({exc.strerror or type(exc).__name__})") from exc
    with sock:
        sock.settimeout(min(wait, remaining()))
        try:
            first = sock.recv(GREETING_PEEK_BYTES)
        except TimeoutError:
            first = None
        except OSError as exc:
            raise ProbeFailed(f"a plaintext greeting (connection failed: {exc})") from exc
        if first:
            if smtp:
                sock.settimeout(remaining())
                _require_starttls(sock, first)
            return ProbeResult("starttls", "a plaintext greeting (received), then STARTTLS")
        if first == b"":
            raise ProbeFailed("a plaintext greeting (the server closed the connection at once)")
        no_greeting = f"a plaintext greeting (none within {wait:g} s), then implicit TLS"
        sock.settimeout(remaining())
        try:
            with context.wrap_socket(sock, server_hostname=host):
                return ProbeResult("ssl", no_greeting)
        except ssl.SSLCertVerificationError as exc:
            raise ProbeFailed(
                f"{no_greeting} (the certificate did not verify)", certificate=exc.verify_message
            ) from exc
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise ProbeFailed(f"{no_greeting} (the handshake failed: {reason})") from exc


def _require_starttls(sock: socket.socket, seen: bytes) -> None:
    """Send EHLO after an SMTP greeting (``seen``: its first bytes) and check that STARTTLS is
    offered; reads at most :data:`EHLO_ANSWER_MAX_BYTES` within the socket's timeout."""
    tried = "a plaintext greeting (received), then EHLO"
    try:
        sock.sendall(f"EHLO {EHLO_NAME}\r\n".encode("ascii"))
        buffer = bytearray(seen)
        while True:
            lines = bytes(buffer).split(b"\r\n")
            answer = [line for line in lines[:-1] if line[:3] != b"220"]
            if any(len(line) >= 4 and line[3:4] == b" " for line in answer):
                break  # the last line of the EHLO answer ("250 ..." or an error)
            if len(buffer) > EHLO_ANSWER_MAX_BYTES:
                raise ProbeFailed(f"{tried} (the answer exceeded {EHLO_ANSWER_MAX_BYTES} bytes)")
            chunk = sock.recv(1024)
            if not chunk:
                raise ProbeFailed(f"{tried} (the server closed the connection)")
            buffer += chunk
    except TimeoutError as exc:
        raise ProbeFailed(f"{tried} (no answer in time)") from exc
    except OSError as exc:
        raise ProbeFailed(f"{tried} (connection failed: {exc})") from exc
    if not answer or not answer[-1].startswith(b"250"):
        raise ProbeFailed(f"{tried} (refused: {answer[-1][:80].decode('ascii', 'replace')})")
    extensions = {line[4:].split(b" ", 1)[0].upper() for line in answer}
    if b"STARTTLS" not in extensions:
        raise NoStartTls(f"{tried} (STARTTLS is not among the extensions offered)")
    with contextlib.suppress(OSError):  # closing anyway
        sock.sendall(b"QUIT\r\n")
