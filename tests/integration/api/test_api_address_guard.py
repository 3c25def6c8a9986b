"""Hosts named through the API are checked by the address guard (pipeline.netguard).

Here the operator allows no private network for mail hosts (the default), so every host on this
machine or an internal network is refused before any connection, with one message whatever
listens there; webhook destinations keep the fixture's 127.0.0.0/8 allowance, which must not
open IPv6 tunnel or translator spellings of it.
"""

from __future__ import annotations

import pytest
from api_support import ApiServer, Receiver, connect_body
from pydantic import SecretStr
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.dev.ports import free_port
from pipeline.models import Grant
from tests.support.services import MailUser

pytestmark = pytest.mark.services


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    """The operator allowed no private network (IMAP_PIPELINE_MAIL_ALLOWED_NETWORKS unset)."""
    from api_support import API_KEY, OTHER_KEY

    return settings.model_copy(update={"api_keys": SecretStr(f"{API_KEY},{OTHER_KEY}")})


def _grants(api: ApiServer) -> int:
    with session_scope(api.settings.require_database_url()) as db:
        return int(db.scalar(select(func.count()).select_from(Grant)) or 0)


def test_internal_imap_hosts_are_refused_with_one_message(
    api: ApiServer, mail_user: MailUser, redis_url: str
) -> None:
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    targets = [
        ("127.0.0.1", mail_user.server.port),  # an IMAP server that would accept the login
        ("127.0.0.1", free_port()),  # nothing listens
        ("127.0.0.1", 5432),  # Postgres
        ("localhost", redis_port),  # Redis
        ("169.254.169.254", 993),
        ("[::127.0.0.1]", 993),
        ("::ffff:7f00:1", 993),
        ("2002:7f00:1::1", 993),
        ("0x7f.1", 993),
    ]
    messages = set()
    with api.http() as http:
        for host, port in targets:
            body = connect_body(mail_user)
            body["settings"].update({"imap_host": host, "imap_port": port})  # type: ignore[attr-defined]
            r = http.post("/v3/connect/custom", json=body)
            assert r.status_code == 504, (host, port, r.text)
            error = r.json()["error"]
            assert error["type"] == "provider_error"
            messages.add(error["message"].replace(f"{host}:{port}", "HOST:PORT"))
    assert len(messages) == 1, messages
    assert _grants(api) == 0
    assert api.enqueued == []


def test_plaintext_smtp_is_refused_without_an_opt_in(api: ApiServer, mail_user: MailUser) -> None:
    body = connect_body(mail_user)
    body["settings"].update(  # type: ignore[attr-defined]
        {"smtp_host": "smtp.example.test", "smtp_port": 25, "smtp_tls": "plain"}
    )
    with api.http() as http:
        r = http.post("/v3/connect/custom", json=body)
    assert r.status_code == 400, r.text
    assert "SMTP password without TLS" in r.json()["error"]["message"]
    assert _grants(api) == 0


@pytest.mark.parametrize(
    "host",
    ["[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "[::ffff:0:7f00:1]", "[::a9fe:a9fe]"],
)
def test_webhook_urls_in_ipv6_spellings_of_internal_addresses_are_refused(
    api: ApiServer, receiver: Receiver, host: str
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    with api.http() as http:
        r = http.post(
            "/v3/webhooks",
            json={
                "webhook_url": f"http://{host}:{port}/hook",
                "trigger_types": ["message.created"],
            },
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert http.get("/v3/webhooks").json()["data"] == []
    assert receiver.received == []


def test_internal_smtp_hosts_are_refused_before_a_tls_probe(
    api: ApiServer, mail_user: MailUser, redis_url: str
) -> None:
    # An SMTP port given without smtp_tls is probed at sign-in; an internal host is refused
    # first, with one message whatever listens there.
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    messages = set()
    with api.http() as http:
        for port in (redis_port, free_port()):
            body = connect_body(mail_user)
            body["settings"].update(  # type: ignore[attr-defined]
                {"smtp_host": "127.0.0.1", "smtp_port": port}
            )
            r = http.post("/v3/connect/custom", json=body)
            assert r.status_code in (400, 504), r.text
            messages.add(r.json()["error"]["message"].replace(str(port), "PORT"))
    assert len(messages) == 1, messages
    assert _grants(api) == 0
