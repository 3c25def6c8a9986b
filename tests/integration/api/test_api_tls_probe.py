"""A port given without a TLS mode (Nylas' settings have no TLS field): the engine probes it.

Driven with the official nylas SDK, as a Nylas client connects an IMAP account with
``/v3/connect/custom``: a greeting means plaintext with STARTTLS, silence means implicit TLS.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from api_support import ApiServer, SmtpServer, connect_body
from nylas.models.errors import NylasApiError

from pipeline.db import session_scope
from pipeline.models import Grant
from tests.support.mail import create_folder
from tests.support.services import LocalDovecot, MailUser, TlsFiles

pytestmark = pytest.mark.services


def _stored(api: ApiServer, grant_id: str) -> tuple[str, str | None]:
    with session_scope(api.settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        return grant.imap_tls, grant.smtp_tls


def _smtp(
    tls_files: TlsFiles, user: MailUser, *, implicit_tls: bool, no_tls: bool = False
) -> SmtpServer:
    return SmtpServer(
        str(tls_files.cert_file),
        str(tls_files.key_file),
        user.name,
        user.password,
        implicit_tls=implicit_tls,
        no_tls=no_tls,
    )


@pytest.fixture
def starttls_smtp(tls_files: TlsFiles, mail_user: MailUser) -> Iterator[SmtpServer]:
    server = _smtp(tls_files, mail_user, implicit_tls=False)
    yield server
    server.close()


@pytest.fixture
def implicit_smtp(tls_files: TlsFiles, mail_user: MailUser) -> Iterator[SmtpServer]:
    server = _smtp(tls_files, mail_user, implicit_tls=True)
    yield server
    server.close()


def test_implicit_tls_imap_on_another_port_is_found(api: ApiServer, mail_user: MailUser) -> None:
    assert isinstance(mail_user.server, LocalDovecot)
    assert mail_user.server.imaps_port != 993
    body = connect_body(mail_user)
    body["settings"]["imap_port"] = mail_user.server.imaps_port  # type: ignore[index]
    grant = api.nylas().auth.custom_authentication(body).data  # type: ignore[arg-type]
    assert _stored(api, grant.id)[0] == "ssl"


def test_starttls_imap_on_a_plaintext_port_is_found(api: ApiServer, mail_user: MailUser) -> None:
    assert isinstance(mail_user.server, LocalDovecot)
    assert mail_user.server.port != 143
    grant = api.nylas().auth.custom_authentication(connect_body(mail_user)).data  # type: ignore[arg-type]
    assert _stored(api, grant.id)[0] == "starttls"


def _send_through(api: ApiServer, user: MailUser, smtp: SmtpServer) -> tuple[str | None, int]:
    create_folder(user.server, user.name, user.password, "Sent")
    body = connect_body(user)
    body["settings"].update(  # type: ignore[attr-defined]
        {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,  # no smtp_tls: as Nylas' settings
            "smtp_username": user.name,
            "smtp_password": user.password,
        }
    )
    client = api.nylas()
    grant = client.auth.custom_authentication(body).data  # type: ignore[arg-type]
    client.messages.send(grant.id, {"to": [{"email": "bob@example.test"}], "subject": "probe"})
    return _stored(api, grant.id)[1], len(smtp.messages)


def test_smtp_on_a_starttls_port_sends(
    api: ApiServer, mail_user: MailUser, starttls_smtp: SmtpServer
) -> None:
    assert _send_through(api, mail_user, starttls_smtp) == ("starttls", 1)


def test_implicit_tls_smtp_on_another_port_sends(
    api: ApiServer, mail_user: MailUser, implicit_smtp: SmtpServer
) -> None:
    assert implicit_smtp.port != 465
    assert _send_through(api, mail_user, implicit_smtp) == ("ssl", 1)


class _NotTls:
    """A port that waits for the client to speak, then answers in plaintext (an HTTP server)."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._sock.accept()
                with conn:
                    conn.settimeout(30)
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._sock.close()
        self._thread.join(timeout=5)


def test_a_port_that_is_neither_says_what_was_tried(api: ApiServer, mail_user: MailUser) -> None:
    server = _NotTls()
    try:
        body = connect_body(mail_user)
        body["settings"]["imap_port"] = server.port  # type: ignore[index]
        with api.http() as http:
            r = http.post("/v3/connect/custom", json=body)
    finally:
        server.close()
    assert r.status_code == 504, r.text
    message = r.json()["error"]["message"]
    assert "plaintext greeting (none within" in message
    assert "then implicit TLS (the handshake failed" in message
    with session_scope(api.settings.require_database_url()) as db:
        assert db.query(Grant).count() == 0


def test_a_new_smtp_port_without_a_mode_is_probed_again(
    api: ApiServer, mail_user: MailUser, starttls_smtp: SmtpServer, implicit_smtp: SmtpServer
) -> None:
    assert _send_through(api, mail_user, starttls_smtp) == ("starttls", 1)
    client = api.nylas()
    grant_id = client.grants.find(mail_user.email).data.id
    with api.http() as http:
        r = http.patch(
            f"/v3/grants/{grant_id}", json={"settings": {"smtp_port": implicit_smtp.port}}
        )
    assert r.status_code == 200, r.text
    client.messages.send(grant_id, {"to": [{"email": "bob@example.test"}], "subject": "again"})
    assert _stored(api, grant_id)[1] == "ssl"
    assert len(implicit_smtp.messages) == 1


def test_smtp_that_greets_but_offers_no_starttls_is_refused_at_sign_in(
    api: ApiServer, mail_user: MailUser, tls_files: TlsFiles
) -> None:
    """A plaintext SMTP port whose EHLO lists no STARTTLS would have to take the password in the
    clear: the sign-in (connect/custom, then PATCH to that port) says so and stores nothing,
    instead of a grant whose every send fails."""
    smtp = _smtp(tls_files, mail_user, implicit_tls=False, no_tls=True)
    body = connect_body(mail_user)
    body["settings"].update(  # type: ignore[attr-defined]
        {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,  # no smtp_tls: as Nylas' settings
            "smtp_username": mail_user.name,
            "smtp_password": mail_user.password,
        }
    )
    client = api.nylas()
    try:
        with pytest.raises(NylasApiError) as refused:
            client.auth.custom_authentication(body)  # type: ignore[arg-type]
        assert refused.value.status_code == 400
        assert "does not offer STARTTLS" in refused.value.args[0]
        assert f"127.0.0.1:{smtp.port}" in refused.value.args[0]
        assert client.grants.list().data == []
        grant = client.auth.custom_authentication(connect_body(mail_user)).data  # type: ignore[arg-type]
        with pytest.raises(NylasApiError) as patched:
            client.grants.update(
                grant.id, {"settings": {"smtp_host": "127.0.0.1", "smtp_port": smtp.port}}
            )
        assert patched.value.status_code == 400
        assert "does not offer STARTTLS" in patched.value.args[0]
        assert client.grants.find(grant.id).data.settings["smtp_port"] != smtp.port  # type: ignore[index]
    finally:
        smtp.close()
    assert smtp.messages == []
