"""Connecting an account: a real login in every TLS mode before anything is stored."""

from __future__ import annotations

import imaplib
import ipaddress
from dataclasses import replace

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.crypto import SecretBox
from pipeline.db import session_scope
from pipeline.dev.ports import free_port
from pipeline.errors import ConfigurationError, ImapAuthError, ImapConnectError, ImapTlsError
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant, open_grant_session
from pipeline.imap import Endpoint, open_session
from pipeline.models import Grant
from pipeline.netguard import AddressPolicy
from tests.support.courier import LocalCourier
from tests.support.grants import connect
from tests.support.services import MailUser
from tests.support.settings import section_changed

pytestmark = pytest.mark.services


def _request(user: MailUser, port: int, tls: str, **extra: object) -> GrantRequest:
    return GrantRequest.model_validate(
        {
            "email": user.email,
            "password": user.password,
            "imap_host": "127.0.0.1",
            "imap_port": port,
            "imap_tls": tls,
            "imap_username": user.name,
            **extra,
        }
    )


def _grant_count(settings: Settings) -> int:
    with session_scope(settings.require_database_url()) as db:
        return int(db.scalar(select(func.count()).select_from(Grant)) or 0)


@pytest.mark.parametrize("mode", ["ssl", "starttls", "plain"])
def test_each_tls_mode_logs_in_and_stores_the_grant(
    settings: Settings, mail_user: MailUser, mode: str
) -> None:
    port = mail_user.server.imaps_port if mode == "ssl" else mail_user.server.port
    assert port is not None
    request = _request(mail_user, port, mode, allow_plaintext=(mode == "plain"))
    with session_scope(settings.require_database_url()) as db:
        result = create_grant(db, settings, request)
        assert result.created
        grant_id = result.grant.id
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        assert grant.grant_status == "valid"
        assert grant.imap_tls == mode
        assert "IDLE" in grant.capabilities
        # the password is sealed at rest, and opens with the configured key
        assert mail_user.password not in grant.secrets_sealed
        opened = SecretBox(settings.encryption_key_list).open_json(grant.secrets_sealed)
        assert opened["imap_password"] == mail_user.password


def test_plaintext_needs_explicit_permission(settings: Settings, mail_user: MailUser) -> None:
    with (
        pytest.raises(ConfigurationError, match="without TLS"),
        session_scope(settings.require_database_url()) as db,
    ):
        create_grant(db, settings, _request(mail_user, mail_user.server.port, "plain"))
    assert _grant_count(settings) == 0


def test_wrong_password_is_a_clear_error_and_stores_nothing(
    settings: Settings, mail_user: MailUser
) -> None:
    request = _request(mail_user, mail_user.server.port, "starttls").model_copy(
        update={"password": SecretStr("not-the-password")}
    )
    with (
        pytest.raises(ImapAuthError) as info,
        session_scope(settings.require_database_url()) as db,
    ):
        create_grant(db, settings, request)
    assert "refused the login" in str(info.value)
    assert "not-the-password" not in str(info.value)
    assert _grant_count(settings) == 0


def test_unreachable_host(settings: Settings, mail_user: MailUser) -> None:
    closed = free_port()
    with (
        pytest.raises(ImapConnectError, match="Cannot connect"),
        session_scope(settings.require_database_url()) as db,
    ):
        create_grant(db, settings, _request(mail_user, closed, "ssl"))
    assert _grant_count(settings) == 0


def test_implicit_tls_against_a_plain_port_is_a_tls_error(
    settings: Settings, mail_user: MailUser
) -> None:
    with (
        pytest.raises(ImapTlsError),
        session_scope(settings.require_database_url()) as db,
    ):
        create_grant(db, settings, _request(mail_user, mail_user.server.port, "ssl"))
    assert _grant_count(settings) == 0


def test_untrusted_certificate_is_refused_unless_the_grant_allows_it(
    settings: Settings, mail_user: MailUser
) -> None:
    untrusting = section_changed(settings, "imap", ca_file=None)
    port = mail_user.server.imaps_port
    assert port is not None
    with (
        pytest.raises(ImapTlsError, match="could not be verified"),
        session_scope(settings.require_database_url()) as db,
    ):
        create_grant(db, untrusting, _request(mail_user, port, "ssl"))
    with session_scope(settings.require_database_url()) as db:
        result = create_grant(db, untrusting, _request(mail_user, port, "ssl", verify_tls=False))
        assert result.grant.verify_tls is False


def test_same_email_again_reauthenticates_the_existing_grant(
    settings: Settings, mail_user: MailUser
) -> None:
    request = _request(mail_user, mail_user.server.port, "starttls")
    with session_scope(settings.require_database_url()) as db:
        first = create_grant(db, settings, request).grant.id
    with session_scope(settings.require_database_url()) as db:
        again = create_grant(db, settings, request)
        assert not again.created
        assert again.grant.id == first
    assert _grant_count(settings) == 1


# --- hosts named by users (pipeline.netguard through create_grant's policy) ----------------


def _scrubbed(message: str, host: str, port: int) -> str:
    return message.replace(f"{host}:{port}", "HOST:PORT")


def test_user_named_hosts_get_one_answer_whatever_listens_there(
    settings: Settings, mail_user: MailUser, redis_url: str
) -> None:
    """Nothing allowed: loopback Dovecot, a closed port, Postgres, Redis and the metadata address
    are all refused before any connection, with the same words."""
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    targets = [
        ("127.0.0.1", mail_user.server.port),  # a real IMAP server
        ("127.0.0.1", free_port()),  # nothing listens
        ("127.0.0.1", 5432),  # Postgres
        ("localhost", redis_port),  # Redis, by name
        ("169.254.169.254", 143),  # cloud metadata
        ("[::127.0.0.1]", 143),
        ("64:ff9b::a9fe:a9fe", 143),  # NAT64 of the metadata address
    ]
    answers = set()
    for host, port in targets:
        request = _request(mail_user, port, "starttls").model_copy(update={"imap_host": host})
        with (
            pytest.raises(ImapConnectError) as info,
            session_scope(settings.require_database_url()) as db,
        ):
            create_grant(db, settings, request, policy=AddressPolicy())
        answers.add(_scrubbed(str(info.value), host, port))
    assert len(answers) == 1, answers
    assert _grant_count(settings) == 0


def test_allowed_networks_get_one_answer_for_whatever_is_not_an_imap_server(
    settings: Settings, mail_user: MailUser, redis_url: str
) -> None:
    """Loopback allowed by the operator: a closed port, Postgres, Redis and an IMAP server spoken
    to in the wrong TLS mode look alike; the real server still logs in."""
    allowed = AddressPolicy.of(["127.0.0.0/8"])
    settings = section_changed(settings, "imap", timeout_s=2.0)  # Postgres never greets
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    targets = [
        (free_port(), "starttls"),
        (5432, "starttls"),
        (5432, "ssl"),
        (redis_port, "starttls"),
        (redis_port, "ssl"),
        (mail_user.server.port, "ssl"),  # IMAP, but not implicit TLS
    ]
    answers = set()
    for port, tls in targets:
        with (
            pytest.raises(ImapConnectError) as info,
            session_scope(settings.require_database_url()) as db,
        ):
            create_grant(db, settings, _request(mail_user, port, tls), policy=allowed)
        answers.add(_scrubbed(str(info.value), "127.0.0.1", port))
    assert len(answers) == 1, answers
    with session_scope(settings.require_database_url()) as db:
        request = _request(mail_user, mail_user.server.port, "starttls")
        assert create_grant(db, settings, request, policy=allowed).created


def test_the_login_goes_to_the_checked_address_and_tls_verifies_the_name(
    settings: Settings, mail_user: MailUser
) -> None:
    """A pinned endpoint never looks its host up again: a name that does not resolve still
    reaches the pinned address, and the certificate is checked against the name."""
    base = Endpoint(
        host="localhost",
        port=mail_user.server.port,
        tls="starttls",
        username=mail_user.name,
        ca_file=settings.imap.ca_file,
        address="127.0.0.1",
    )
    with open_session(base, mail_user.password) as imap:  # the certificate names localhost
        assert "IMAP4REV1" in imap.capabilities
    unresolvable = replace(base, host="imap.does-not-resolve.invalid")
    with pytest.raises(ImapTlsError, match="could not be verified"):
        open_session(unresolvable, mail_user.password)  # connected: only the name check failed
    with open_session(replace(unresolvable, verify_tls=False), mail_user.password) as imap:
        assert imap.capabilities


def test_plaintext_smtp_needs_explicit_permission(settings: Settings, mail_user: MailUser) -> None:
    request = _request(
        mail_user,
        mail_user.server.port,
        "starttls",
        smtp_host="127.0.0.1",
        smtp_port=25,
        smtp_tls="plain",
    )
    with (
        pytest.raises(ConfigurationError, match="SMTP password without TLS"),
        session_scope(settings.require_database_url()) as db,
    ):
        create_grant(db, settings, request)
    assert _grant_count(settings) == 0
    allowed = request.model_copy(update={"allow_plaintext": True})
    with session_scope(settings.require_database_url()) as db:
        assert create_grant(db, settings, allowed).grant.smtp_tls == "plain"


def test_a_server_a_user_named_is_checked_again_by_every_later_session(
    settings: Settings, mail_user: MailUser
) -> None:
    """A worker opening a session of a grant made through the API checks the host again (a
    name could resolve to an internal address by then); one the operator named is not."""
    request = _request(mail_user, mail_user.server.port, "starttls")
    loopback = [ipaddress.ip_network("127.0.0.0/8")]
    with session_scope(settings.require_database_url()) as db:
        grant_id = create_grant(db, settings, request, policy=AddressPolicy.of(loopback)).grant.id
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        with pytest.raises(ImapConnectError, match="may connect to"):
            open_grant_session(db, settings, grant)  # this worker allows no private network
        assert grant.grant_status == "valid"
        allowing = settings.model_copy(update={"mail_allowed_networks": loopback})
        open_grant_session(db, allowing, grant).close()
    with session_scope(settings.require_database_url()) as db:
        assert not create_grant(db, settings, request).created  # the operator re-authenticates
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        open_grant_session(db, settings, grant).close()


def test_a_login_asks_capability_again_only_when_the_login_did_not_announce_it(
    settings: Settings, server_user: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every poll logs in: the greeting's capabilities spare the CAPABILITY before the login
    (all three servers send them; after STARTTLS the server is asked, over TLS), and a server
    that lists its capabilities in the LOGIN's OK (Dovecot, Cyrus) is not asked again; one
    that does not (Courier) is. Either way the session knows what the server offers once
    logged in (what a CAPABILITY command says then)."""
    grant_id = connect(settings, server_user)
    sent: list[str] = []
    command = imaplib.IMAP4._command

    def counted(self: imaplib.IMAP4, name: str, *args: object) -> object:
        sent.append(name)
        return command(self, name, *args)

    monkeypatch.setattr(imaplib.IMAP4, "_command", counted)
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        imap = open_grant_session(db, settings, grant)
    try:
        login = list(sent)
        typ, data = imap.raw.capability()
        assert typ == "OK"
        assert imap.capabilities == frozenset(data[-1].decode().upper().split())
    finally:
        imap.close()
    announced = not isinstance(server_user.server, LocalCourier)
    starttls = ["STARTTLS", "CAPABILITY"] if server_user.starttls else []
    expected = [*starttls, "LOGIN"] + ([] if announced else ["CAPABILITY"])
    assert login == expected
