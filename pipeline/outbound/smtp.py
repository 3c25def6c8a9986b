"""One SMTP connection to a grant's server, logged in, reused for many messages.

Bounds: connect + TLS + EHLO + STARTTLS + AUTH share one deadline (:data:`LOGIN_DEADLINE_S`),
each message one more (:data:`MESSAGE_DEADLINE_S`: MAIL, RCPT, DATA and the answer), however
slowly the server trickles: a timer shuts the socket down when a deadline passes, which ends
the blocked read. Every single read also has :data:`READ_TIMEOUT_S`, and smtplib refuses reply
lines over 8 KiB. Hosts a user named are checked by the address guard and connected to at the
checked address (TLS verifies the name), as the API did.

Errors are :class:`SendError` with the HTTP status and v3 error type the API answers with, and
``certain``: True when the server refused before the data (nothing was sent).
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.errors import ImapConnectError, PipelineError
from pipeline.grants.service import (
    GUARD_KEY,
    SMTP_UNREACHABLE,
    USER_NAMED,
    checked_address,
    grant_secrets,
)
from pipeline.models import Grant
from pipeline.tls import client_context

READ_TIMEOUT_S = 60.0  # one read or write; a silent server
LOGIN_DEADLINE_S = 60.0  # connect, TLS, greeting, EHLO, STARTTLS, AUTH in all
MESSAGE_DEADLINE_S = 120.0  # one message: MAIL FROM, RCPT TO, DATA and the server's answer


class SendError(PipelineError):
    """A send failed; ``status``/``type`` are the API's answer, ``certain`` says nothing was
    handed over (the server refused before the data, or was never reached)."""

    def __init__(self, status: int, type_: str, message: str, *, certain: bool) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.certain = certain

    def as_dict(self) -> dict[str, object]:
        """What the outbox row keeps."""
        return {"status": self.status, "type": self.type, "message": str(self)}


def _context(grant: Grant, settings: Settings) -> ssl.SSLContext:
    return client_context(grant.verify_tls, settings.imap.ca_file)


class _PinnedSmtp(smtplib.SMTP):
    """smtplib's client, connecting to an address checked by pipeline.netguard (no second
    lookup); STARTTLS verifies the certificate for the host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self._address = address
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._address, port), timeout, self.source_address)


class _PinnedSmtpSsl(smtplib.SMTP_SSL):
    """Implicit TLS to a checked address; SNI and the certificate check use the host name."""

    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        self._address = address
        self._hostname = host  # set before super() connects
        super().__init__(host, port, timeout=timeout, context=context)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((self._address, port), timeout, self.source_address)
        wrapped: socket.socket = self.context.wrap_socket(sock, server_hostname=self._hostname)
        return wrapped


@contextmanager
def _deadline(client: smtplib.SMTP, seconds: float) -> Iterator[None]:
    """Shut the connection's socket down if the block is not done within ``seconds``."""

    def expire() -> None:
        sock = getattr(client, "sock", None)
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def smtp_address(grant: Grant, settings: Settings) -> str:
    """The address to connect to: checked by the guard when a user named the host.

    Raises:
        SendError: 400 when the host is refused or does not resolve.
    """
    assert grant.smtp_host and grant.smtp_port
    secrets = grant_secrets(grant, settings)
    if secrets.get(GUARD_KEY) != USER_NAMED:
        return grant.smtp_host
    try:
        return str(
            checked_address(
                grant.smtp_host, grant.smtp_port, settings.mail_address_policy, SMTP_UNREACHABLE
            )
        )
    except ImapConnectError as exc:
        raise SendError(400, "invalid_request_error", str(exc), certain=True) from exc


def _broken(where: str, exc: BaseException, *, certain: bool) -> SendError:
    if isinstance(exc, ssl.SSLError):
        return SendError(
            504,
            "provider_error",
            f"TLS with the SMTP server {where} failed ({exc.reason}).",
            certain=certain,
        )
    return SendError(
        504,
        "provider_error",
        f"The SMTP server {where} could not take the message ({type(exc).__name__}).",
        certain=certain,
    )


@dataclass
class SmtpConnection:
    """A logged-in connection to one grant's SMTP server."""

    client: smtplib.SMTP
    where: str
    opened_at: float
    used_at: float
    sent: int = 0

    @classmethod
    def open(cls, grant: Grant, settings: Settings, *, guard: bool = True) -> SmtpConnection:
        """Connect, secure and log in.

        Raises:
            SendError: 400 without an SMTP server or for a refused host, 401 for a refused
                login, 504 when the server cannot be reached, fails TLS or offers no STARTTLS.
        """
        if not grant.smtp_host or not grant.smtp_port:
            raise SendError(
                400,
                "invalid_request_error",
                "This grant has no SMTP server: set settings.smtp_host and smtp_port "
                "(PATCH /v3/grants/{id}).",
                certain=True,
            )
        secrets = grant_secrets(grant, settings)
        password = secrets.get("smtp_password") or secrets["imap_password"]
        username = grant.smtp_username or grant.imap_username
        where = f"{grant.smtp_host}:{grant.smtp_port}"
        address = smtp_address(grant, settings) if guard else grant.smtp_host
        ctx = _context(grant, settings)
        # Only an explicit opt-in stores "plain" (GrantRequest.resolve); any other value means TLS.
        tls = grant.smtp_tls if grant.smtp_tls in ("ssl", "plain") else "starttls"
        client: smtplib.SMTP | None = None
        started = time.monotonic()
        try:
            if tls == "ssl":
                client = _PinnedSmtpSsl(
                    grant.smtp_host, grant.smtp_port, address, READ_TIMEOUT_S, context=ctx
                )
            else:
                client = _PinnedSmtp(grant.smtp_host, grant.smtp_port, address, READ_TIMEOUT_S)
            with _deadline(client, max(1.0, LOGIN_DEADLINE_S - (time.monotonic() - started))):
                client.ehlo()
                if tls == "starttls":
                    if not client.has_extn("starttls"):
                        raise SendError(
                            504,
                            "provider_error",
                            f"The SMTP server {where} does not offer STARTTLS, and the password "
                            "is not sent in the clear. Give the server's TLS port "
                            "(settings.smtp_port, smtp_tls), or plaintext explicitly for a "
                            "trusted network.",
                            certain=True,
                        )
                    client.starttls(context=ctx)
                    client.ehlo()
                if client.has_extn("auth"):
                    client.login(username, password)
        except SendError:
            _quietly_close(client)
            raise
        except smtplib.SMTPAuthenticationError as exc:
            _quietly_close(client)
            raise SendError(
                401,
                "unauthorized",
                f"{where} refused the SMTP login for {username!r} ({exc.smtp_code}). Check the "
                "SMTP username and password (many providers need an app password).",
                certain=True,
            ) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            _quietly_close(client)
            raise _broken(where, exc, certain=True) from exc
        now = time.monotonic()
        return cls(client=client, where=where, opened_at=now, used_at=now)

    def send(
        self,
        raw: bytes,
        mail_from: str,
        recipients: list[str],
        before_data: Callable[[], bool],
    ) -> None:
        """Send one message. ``before_data`` runs after the envelope was accepted and before
        the data goes (the outbox commits ``sending`` there); False aborts with RSET.

        Raises:
            SendError: ``certain`` when refused before the data (400 sender/recipients) or the
                connection broke before it; not ``certain`` when it broke after.
            Aborted: ``before_data`` said no (cancelled meanwhile).
        """
        client = self.client
        where = self.where
        handed_over = False
        try:
            with _deadline(client, MESSAGE_DEADLINE_S):
                code, resp = client.mail(mail_from)
                if code != 250:
                    client.rset()
                    raise smtplib.SMTPSenderRefused(code, resp, mail_from)
                refused = {}
                for rcpt in recipients:
                    code, resp = client.rcpt(rcpt)
                    if code not in (250, 251):
                        refused[rcpt] = (code, resp)
                if refused:
                    client.rset()
                    raise smtplib.SMTPRecipientsRefused(refused)  # type: ignore[arg-type]
                if not before_data():
                    client.rset()
                    raise Aborted
                handed_over = True
                code, resp = client.data(raw)
                if code != 250:
                    client.rset()
                    raise smtplib.SMTPDataError(code, resp)
        except Aborted:
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            names = ", ".join(sorted(exc.recipients))
            raise SendError(
                400,
                "invalid_request_error",
                f"{where} refused the recipient(s) {names}.",
                certain=True,
            ) from exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            error = exc.smtp_error
            detail = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
            # a refusal is an answer: the server did not take the message
            raise SendError(
                400,
                "invalid_request_error",
                f"{where} refused the message ({exc.smtp_code} {detail}).",
                certain=True,
            ) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise _broken(where, exc, certain=not handed_over) from exc
        self.sent += 1
        self.used_at = time.monotonic()

    def alive(self) -> bool:
        """NOOP answered (bounded by the read timeout)."""
        try:
            with _deadline(self.client, READ_TIMEOUT_S):
                return self.client.noop()[0] == 250
        except (smtplib.SMTPException, OSError):
            return False

    def close(self) -> None:
        """QUIT (bounded), then close."""
        try:
            with _deadline(self.client, 10.0):
                self.client.quit()
        except (smtplib.SMTPException, OSError):
            pass
        _quietly_close(self.client)


class Aborted(Exception):
    """The row was cancelled or taken by another drain just before its data went."""


def _quietly_close(client: smtplib.SMTP | None) -> None:
    if client is not None:
        with suppress(OSError):
            client.close()
