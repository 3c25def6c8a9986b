"""Helpers of the API tests: the running server's handle, and mail put on Dovecot and synced."""

from __future__ import annotations

import contextlib
import imaplib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from nylas import Client
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.models import Grant, Message
from pipeline.sync.run import sync_grant_inline
from tests.support.mail import create_folder, imap_login, make_message
from tests.support.services import MailUser
from tests.support.waiting import wait_for

API_KEY = "test-api-key-0123456789"
OTHER_KEY = "second-key-abcdef"
SERVER_START_TIMEOUT_S = 10
HTTP_TIMEOUT_S = 30


@dataclass
class ApiServer:
    """A running API: its base URL and what it enqueued."""

    url: str
    settings: Settings
    enqueued: list[tuple[str, str]] = field(default_factory=list)
    enqueued_uncommitted: list[str] = field(default_factory=list)
    kicks: int = 0  # webhook dispatch kicks after commits

    def http(self, key: str | None = API_KEY) -> httpx.Client:
        """An httpx client for the API (with the API key unless ``key`` is None)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=HTTP_TIMEOUT_S)

    def outbox(self) -> list[tuple[str, str | None]]:
        """Webhook notifications written so far: (type, subject id), oldest first."""
        from sqlalchemy import text

        from pipeline.db import session_scope

        with session_scope(self.settings.require_database_url()) as db:
            rows = db.execute(text("SELECT type, subject_id FROM webhook_outbox ORDER BY seq"))
            return [(str(t), s) for t, s in rows]

    def outbox_objects(self) -> list[tuple[str, dict[str, Any]]]:
        """Webhook notifications written so far: (type, ``data.object``), oldest first."""
        from sqlalchemy import text

        with session_scope(self.settings.require_database_url()) as db:
            rows = db.execute(text("SELECT type, object FROM webhook_outbox ORDER BY seq"))
            return [(str(t), dict(p)) for t, p in rows]

    def outbox_rows(self) -> list[tuple[str, str | None, dict[str, Any], dict[str, Any] | None]]:
        """Webhook notifications written so far: (type, subject id, ``data.object``, the other
        ``data`` fields), oldest first."""
        from sqlalchemy import text

        with session_scope(self.settings.require_database_url()) as db:
            rows = db.execute(
                text("SELECT type, subject_id, object, data FROM webhook_outbox ORDER BY seq")
            )
            return [(str(t), s, dict(o), dict(d) if d else None) for t, s, o, d in rows]

    def nylas(self) -> Client:
        """The official SDK pointed at this server."""
        return Client(API_KEY, api_uri=self.url, timeout=HTTP_TIMEOUT_S)


def connect_body(user: MailUser, password: str | None = None) -> dict[str, object]:
    """The /v3/connect/custom body for a test Dovecot user (STARTTLS on the plain port)."""
    return {
        "provider": "imap",
        "settings": {
            "imap_username": user.name,
            "imap_password": password or user.password,
            "imap_host": "127.0.0.1",
            "imap_port": user.server.port,
            "email": user.email,
        },
    }


def connect_with_smtp(
    api: object,
    user: MailUser,
    smtp: SmtpServer,
    password: str | None = None,
    *,
    folders: tuple[str, ...] = (),
) -> str:
    """A grant with SMTP (STARTTLS on the test server, ``password`` or the user's), created
    through the API once ``folders`` exist on the IMAP server, and synced in this process."""
    from typing import cast

    server = cast("ApiServer", api)
    for folder in folders:
        create_folder(user.server, user.name, user.password, folder)
    body = connect_body(user)
    body["settings"].update(  # type: ignore[attr-defined]
        {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_tls": "starttls",
            "smtp_username": user.name,
            "smtp_password": password or user.password,
        }
    )
    with server.http() as http:
        response = http.post("/v3/connect/custom", json=body)
    assert response.status_code == 201, response.text
    grant_id = str(response.json()["data"]["id"])
    sync(server.settings, grant_id)
    return grant_id


def append_many(user: MailUser, messages: list[tuple[bytes, str, datetime]]) -> None:
    """APPEND messages over one IMAP session: (raw, flags, INTERNALDATE)."""
    conn = imap_login(user.server, user.name, user.password)
    try:
        for raw, flags, when in messages:
            typ, data = conn.append(
                '"INBOX"', f"({flags})" if flags else None, imaplib.Time2Internaldate(when), raw
            )
            assert typ == "OK", data
    finally:
        conn.logout()


def sync(settings: Settings, grant_id: str) -> None:
    """Run the grant's sync in this process."""
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)


def now() -> datetime:
    """Aware UTC now."""
    return datetime.now(UTC)


def connect_and_sync(api: object, user: MailUser) -> str:
    """Create the grant through the API (plain HTTP) and sync it in this process."""
    from typing import cast

    server = cast("ApiServer", api)
    with server.http() as http:
        response = http.post("/v3/connect/custom", json=connect_body(user))
    assert response.status_code == 201, response.text
    grant_id = str(response.json()["data"]["id"])
    sync(server.settings, grant_id)
    return grant_id


class InlineDrains:
    """The API's send enqueuer for in-process tests: each request runs a real outbox drain
    (:func:`pipeline.outbound.deliver.drain`) on a thread of this process, after its countdown."""

    def __init__(self, settings: Settings, after_commit: Any) -> None:
        import threading

        import redis

        from pipeline.limits import RateLimiter
        from pipeline.outbound.deliver import DirectAccess

        self.settings = settings
        self.sessions = sessionmaker_for(settings.require_database_url())
        self.redis = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=10)
        self.access = DirectAccess(settings, RateLimiter(self.redis), after_commit)
        self._threads: list[threading.Thread | threading.Timer] = []
        self._lock = threading.Lock()

    def enqueue(self, grant_id: str, countdown: float | None) -> None:
        """Drain the grant's outbox on a thread (after ``countdown`` seconds)."""
        import threading

        from pipeline.outbound.deliver import drain

        def run() -> None:  # as the worker's task (workers/tasks/send.py) follows a drain
            result = drain(self.sessions, self.settings, self.redis, grant_id, self.access)
            if result.more:
                self.enqueue(grant_id, 1.0)
            elif result.again_in_s is not None:
                self.enqueue(grant_id, result.again_in_s + 1.0)

        worker = threading.Timer(countdown or 0.0, run)
        worker.daemon = True
        with self._lock:
            self._threads.append(worker)
        worker.start()

    def close(self) -> None:
        """Cancel pending drains, wait for running ones."""
        for worker in self._threads:
            if isinstance(worker, threading_timer_type()):
                worker.cancel()
            worker.join(timeout=30)


def threading_timer_type() -> type:
    """threading.Timer (a function: the module is imported lazily here)."""
    import threading

    return threading.Timer


class Receiver:
    """A webhook receiver on 127.0.0.1: echoes challenges, records POSTs (headers, body)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlparse

        received: list[tuple[dict[str, str], bytes]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                challenge = parse_qs(urlparse(self.path).query).get("challenge", [""])[0]
                body = challenge.encode()
                self.send_response(200 if challenge else 400)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(
                    ({k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class SmtpServer:
    """A local SMTP server (aiosmtpd) with STARTTLS and AUTH; keeps what it receives.

    ``implicit_tls``: TLS from the first byte instead (submissions port style, RFC 8314), AUTH
    over it. ``no_tls``: neither (an old relay), no AUTH either. ``delay_s``: the answer to
    each message's data comes that much later (the message is kept after the wait);
    ``data_delay_s``: the 250 after the data comes this late, the message kept first, as a
    real server commits it before answering; ``first_rcpt_delay_s``: the first RCPT TO is
    answered this late; ``on_message`` is called with each message (e.g. to file it in Sent
    as Gmail does); ``refused`` recipients get a 550 at RCPT TO. ``logins`` counts successful
    AUTHs.
    """

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        username: str,
        password: str,
        *,
        implicit_tls: bool = False,
        no_tls: bool = False,
        delay_s: float = 0.0,
        data_delay_s: float = 0.0,
        on_message: Any = None,
        first_rcpt_delay_s: float = 0.0,
        refused: frozenset[str] = frozenset(),
    ) -> None:
        import asyncio
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

        from pipeline.dev.ports import free_port

        self.messages: list[tuple[str, list[str], bytes]] = []
        self.logins = 0  # successful AUTHs: one per SMTP connection a sender opened
        self.delaying = 0  # answers being held back now
        received = self.messages
        owner = self

        rcpt_delays = [first_rcpt_delay_s] if first_rcpt_delay_s else []

        class Handler:
            async def handle_RCPT(
                self,
                server: object,
                session: object,
                envelope: Any,
                address: str,
                rcpt_options: list[str],
            ) -> str:
                if rcpt_delays:  # the first RCPT of the server's life waits (once)
                    owner.delaying += 1
                    try:
                        await asyncio.sleep(rcpt_delays.pop())
                    finally:
                        owner.delaying -= 1
                if address in refused:
                    return "550 5.1.1 No such user here"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
                if delay_s:  # a slow server: the answer to the data comes late
                    await asyncio.sleep(delay_s)
                # kept before the answer, as a real server commits the message before its 250
                received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                if on_message is not None:
                    await asyncio.get_running_loop().run_in_executor(
                        None, on_message, envelope.content
                    )
                if data_delay_s:
                    owner.delaying += 1
                    try:
                        await asyncio.sleep(data_delay_s)
                    finally:
                        owner.delaying -= 1
                return "250 OK"

        def authenticate(
            server: object, session: object, envelope: object, mechanism: str, data: object
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == username
                and data.password.decode() == password
            )
            if ok:
                owner.logins += 1
            return AuthResult(success=ok, handled=False)  # aiosmtpd sends the 235/535

        class ImplicitTlsController(Controller):  # type: ignore[misc]
            def factory(self) -> SMTP:
                server = super().factory()
                # aiosmtpd counts only STARTTLS as TLS; on an implicit-TLS port every byte is
                # TLS, so AUTH is offered (set here: the constructor warns about it)
                server._auth_require_tls = False
                return server

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        self.port = free_port()
        self._controller = (ImplicitTlsController if implicit_tls else Controller)(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=None if implicit_tls or no_tls else context,
            require_starttls=not (implicit_tls or no_tls),
            ssl_context=context if implicit_tls else None,
            authenticator=None if no_tls else authenticate,
            auth_required=not no_tls,
        )
        self._controller.start()

    def close(self) -> None:
        """Stop the server, once the answers it holds back went out (at most 60 s): a
        connection stopped mid-answer would leave its socket to the garbage collector."""
        with contextlib.suppress(AssertionError):  # stopped anyway after the 60 s
            wait_for(lambda: not self.delaying, "the held-back answers to go out", timeout_s=60)
        self._controller.stop()


def count_in(user: MailUser, folder: str) -> int:
    """Messages in a folder, as the server counts them."""
    conn = imap_login(user.server, user.name, user.password)
    try:
        typ, data = conn.select(f'"{folder}"', readonly=True)
        assert typ == "OK", data
        return int(data[0] or 0)
    finally:
        conn.logout()


def snapshot(api: ApiServer, grant_id: str) -> dict[str, Any]:
    """Everything of a grant a takeover would change: settings, credentials, status, mail."""
    with session_scope(api.settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        messages = db.scalar(
            select(func.count()).select_from(Message).where(Message.grant_id == grant_id)
        )
        return {
            "email": grant.email,
            "imap": (grant.imap_host, grant.imap_port, grant.imap_tls, grant.imap_username),
            "smtp": (grant.smtp_host, grant.smtp_port, grant.smtp_tls, grant.smtp_username),
            "secrets_sealed": grant.secrets_sealed,
            "status": (grant.grant_status, grant.status_detail),
            "updated_at": grant.updated_at,
            "messages": messages,
            "grants": db.scalar(select(func.count()).select_from(Grant)),
        }


def victim_grant(api: ApiServer, victim: MailUser) -> str:
    t = now()
    append_many(victim, [(make_message(f"private {i}", date=t), "", t) for i in range(3)])
    return connect_and_sync(api, victim)
