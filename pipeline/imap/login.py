"""Connect to an IMAP server and log in: :func:`open_session` hands over an
:class:`~pipeline.imap.client.ImapSession`.

Implicit TLS, STARTTLS or, when allowed, plaintext; connect, TLS, greeting, STARTTLS, LOGIN and
CAPABILITY together within one deadline (``ImapLimits.login_deadline_s``), every read bounded
by :class:`~pipeline.imap.bounded.BoundedIMAP4`. Every driver error becomes one of the
:mod:`pipeline.errors` IMAP subtree, with a message that says what to check.
"""

from __future__ import annotations

import contextlib
import imaplib
import socket
import ssl
import time

from pipeline.errors import (
    ImapAuthError,
    ImapConnectError,
    ImapError,
    ImapLimitError,
    ImapProtocolError,
    ImapThrottledError,
    ImapTlsError,
)
from pipeline.imap.bounded import BoundedIMAP4
from pipeline.imap.client import Endpoint, ImapSession
from pipeline.imap.responses import as_text, is_throttle
from pipeline.imap.transport import ssl_context


def _login_args(username: str, password: str) -> tuple[bytes, bytes | None, str | None]:
    """LOGIN's arguments: quoted when ASCII; a non-ASCII password goes as a UTF-8 literal."""

    def quoted(value: bytes) -> bytes:
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'

    user = quoted(username.encode("utf-8"))
    if password.isascii():
        return user, quoted(password.encode("ascii")), None
    return user, None, password


def _connect(endpoint: Endpoint, deadline: float) -> BoundedIMAP4:
    ctx = ssl_context(endpoint) if endpoint.tls != "plain" else None
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
        if is_throttle(message):
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
        if is_throttle(str(exc)):
            raise ImapThrottledError(f"{where} refused the login for now: {exc}") from exc
        if "LOGINDISABLED" in str(exc).upper() or "plaintext" in str(exc).lower():
            raise ImapAuthError(f"{where} does not allow a login without TLS.") from exc
        raise ImapAuthError(f"{where} refused the login for {endpoint.username!r}: {exc}") from exc
    except (ConnectionError, EOFError) as exc:
        raise ImapConnectError(f"The connection to {where} dropped during login: {exc}") from exc
    if typ != "OK":
        detail = as_text(data[-1] if data else b"")
        if is_throttle(detail):
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
