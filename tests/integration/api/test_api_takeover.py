"""Grant takeover by address: a sign-in naming a connected address with another server or
username changes nothing and never hands out the grant's id (pipeline.grants.service).

The victim is a real Dovecot account, connected and synced. The attacker signs in as the
victim's address through ``/v3/connect/custom`` and the hosted page, against a server that
accepts any password (the fake IMAP server) or with an account of their own on the victim's
server. Afterwards the victim's grant, its sealed credentials and its mail are as they were;
the victim's own re-authentication still works.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_support import ApiServer, connect_body, snapshot, victim_grant

from tests.support.fake_imap import FakeImapConfig, FakeImapServer
from tests.support.services import MailUser, TlsFiles

pytestmark = pytest.mark.services

CALLBACK = "http://localhost:8765/callback"
_FLOW = re.compile(r"name='flow' value='([^']+)'")


@pytest.fixture
def attacker(_mail_user_pool: Iterator[MailUser]) -> MailUser:
    """An account of the attacker's own on the victim's server."""
    return next(_mail_user_pool)


@pytest.fixture
def any_password(tls_files: TlsFiles) -> Iterator[FakeImapServer]:
    """The attacker's own IMAP server: STARTTLS with a trusted certificate, any password."""
    config = FakeImapConfig(
        tls="starttls", cert_file=tls_files.cert_file, key_file=tls_files.key_file
    )
    with FakeImapServer(config) as server:
        yield server


def assert_untouched(
    api: ApiServer, grant_id: str, before: dict[str, Any], victim: MailUser
) -> None:
    assert snapshot(api, grant_id) == before
    with api.http() as http:
        listed = http.get(f"/v3/grants/{grant_id}/messages").json()["data"]
    assert sorted(m["subject"] for m in listed) == ["private 0", "private 1", "private 2"]
    # the victim re-authenticates as before (Nylas clients send the same settings again)
    with api.http() as http:
        again = http.post("/v3/connect/custom", json=connect_body(victim))
    assert again.status_code == 200, again.text
    assert again.json()["data"]["id"] == grant_id


def attacks(victim: MailUser, attacker: MailUser, fake: FakeImapServer) -> list[dict[str, str]]:
    """Settings an attacker names with the victim's address (each a login that would succeed)."""
    dovecot = str(victim.server.port)
    mine = str(fake.port)
    return [
        # a server that accepts any password, with the victim's own username (the case)
        {"imap_username": victim.name, "password": "x", "imap_host": "127.0.0.1", "port": mine},
        {"imap_username": victim.email, "password": "x", "imap_host": "localhost", "port": mine},
        # their own account on the victim's server, by its name and by another
        {
            "imap_username": attacker.name,
            "password": attacker.password,
            "imap_host": "127.0.0.1",
            "port": dovecot,
        },
        {
            "imap_username": attacker.name,
            "password": attacker.password,
            "imap_host": "localhost",
            "port": dovecot,
        },
    ]


def test_the_attackers_server_accepts_any_password(
    api: ApiServer, any_password: FakeImapServer
) -> None:
    """The control: the attacker's server does log anyone in (the refusals below are the rule,
    not a failed login)."""
    body = {
        "provider": "imap",
        "settings": {
            "imap_username": "newcomer@example.test",
            "imap_password": "anything",
            "imap_host": "127.0.0.1",
            "imap_port": any_password.port,
        },
    }
    with api.http() as http:
        r = http.post("/v3/connect/custom", json=body)
    assert r.status_code == 201, r.text
    assert any_password.sessions == 2  # the TLS probe (a port without imap_tls), the login


def test_connect_custom_cannot_take_over_an_address(
    api: ApiServer, mail_user: MailUser, attacker: MailUser, any_password: FakeImapServer
) -> None:
    grant_id = victim_grant(api, mail_user)
    before = snapshot(api, grant_id)
    for attack in attacks(mail_user, attacker, any_password):
        body = connect_body(attacker)
        body["settings"].update(  # type: ignore[attr-defined]
            {
                "email": mail_user.email,
                "imap_username": attack["imap_username"],
                "imap_password": attack["password"],
                "imap_host": attack["imap_host"],
                "imap_port": int(attack["port"]),
            }
        )
        with api.http() as http:
            r = http.post("/v3/connect/custom", json=body)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["type"] == "conflict_error"
        assert "changed nothing" in r.json()["error"]["message"]
        assert grant_id not in r.text
        assert snapshot(api, grant_id) == before
    assert any_password.sessions == 0  # refused before any connection
    assert_untouched(api, grant_id, before, mail_user)


def test_hosted_page_cannot_take_over_an_address(
    api: ApiServer, mail_user: MailUser, attacker: MailUser, any_password: FakeImapServer
) -> None:
    grant_id = victim_grant(api, mail_user)
    client = api.nylas()
    client.applications.redirect_uris.create({"url": CALLBACK, "platform": "web"})
    client_id = client.applications.info().data.application_id
    url = client.auth.url_for_oauth2(
        {"client_id": client_id, "redirect_uri": CALLBACK, "provider": "imap"}  # type: ignore[typeddict-item]
    )
    before = snapshot(api, grant_id)
    with httpx.Client(base_url=api.url, timeout=30, follow_redirects=False) as browser:
        for attack in attacks(mail_user, attacker, any_password):
            page = browser.get(url)
            flow = _FLOW.search(page.text)
            assert flow is not None
            answer = browser.post(
                "/v3/connect/auth",
                data={
                    "flow": flow[1],
                    "email": mail_user.email,
                    "password": attack["password"],
                    "imap_username": attack["imap_username"],
                    "imap_host": attack["imap_host"],
                    "imap_port": attack["port"],
                },
            )
            assert answer.status_code == 409, answer.text
            assert "location" not in answer.headers  # no code, nothing to exchange
            assert "changed nothing" in answer.text
            assert grant_id not in answer.text
            assert snapshot(api, grant_id) == before
    assert any_password.sessions == 0
    assert_untouched(api, grant_id, before, mail_user)
