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
from api_support import ApiServer, append_many, connect_and_sync, connect_body, now
from sqlalchemy import func, select

from pipeline.db import session_scope
from pipeline.models import Grant, Message
from tests.support.mail import make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services

CALLBACK = "http://localhost:8765/callback"
_FLOW = re.compile(r"name='flow' value='([^']+)'")


@pytest.fixture
def attacker(_mail_user_pool: Iterator[MailUser]) -> MailUser:
    """An account of the attacker's own on the victim's server."""
    return next(_mail_user_pool)


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


def attacks(victim: MailUser, attacker: MailUser) -> list[dict[str, str]]:
    """Settings an attacker names with the victim's address (all logins that succeed)."""
    return [
        # their own account on the victim's server
        {"imap_username": attacker.name, "password": attacker.password, "imap_host": "127.0.0.1"},
        # the same server by another name
        {"imap_username": attacker.name, "password": attacker.password, "imap_host": "localhost"},
    ]


def test_connect_custom_cannot_take_over_an_address(
    api: ApiServer, mail_user: MailUser, attacker: MailUser
) -> None:
    grant_id = victim_grant(api, mail_user)
    before = snapshot(api, grant_id)
    for attack in attacks(mail_user, attacker):
        body = connect_body(attacker)
        body["settings"].update(  # type: ignore[attr-defined]
            {
                "email": mail_user.email,
                "imap_username": attack["imap_username"],
                "imap_password": attack["password"],
                "imap_host": attack["imap_host"],
            }
        )
        with api.http() as http:
            r = http.post("/v3/connect/custom", json=body)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["type"] == "conflict_error"
        assert "changed nothing" in r.json()["error"]["message"]
        assert grant_id not in r.text
        assert snapshot(api, grant_id) == before
    assert_untouched(api, grant_id, before, mail_user)


def test_hosted_page_cannot_take_over_an_address(
    api: ApiServer, mail_user: MailUser, attacker: MailUser
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
        for attack in attacks(mail_user, attacker):
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
                    "imap_port": str(mail_user.server.port),
                },
            )
            assert answer.status_code == 409, answer.text
            assert "location" not in answer.headers  # no code, nothing to exchange
            assert "changed nothing" in answer.text
            assert grant_id not in answer.text
            assert snapshot(api, grant_id) == before
    assert_untouched(api, grant_id, before, mail_user)
