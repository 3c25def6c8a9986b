"""Hosted authentication: the sign-in page, the redirect with a code, the code exchange.

Driven over HTTP as a browser would (form GET and POST); ``test_api_hosted_auth_browser`` drives
a real one. This module's application id is ``CLIENT_ID`` (``IMAP_PIPELINE_API_CLIENT_ID``), not
the default, so a check against a constant would fail here.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape as html_escape
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from api_support import ApiServer
from nylas.models.errors import NylasApiError, NylasOAuthError
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.models import Grant
from tests.support.services import MailUser

pytestmark = pytest.mark.services

CALLBACK = "http://localhost:8765/callback"
CLIENT_ID = "my-app"
_FLOW = re.compile(r"name='flow' value='([^']+)'")


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    """The API's settings with this module's application id."""
    return api_settings.model_copy(
        update={"api": api_settings.api.model_copy(update={"client_id": CLIENT_ID})}
    )


def browser(api: ApiServer) -> httpx.Client:
    """A client without the API key, as a user's browser is."""
    return httpx.Client(base_url=api.url, timeout=30, follow_redirects=False)


def form_values(user: MailUser, password: str) -> dict[str, str]:
    return {
        "email": user.email,
        "password": password,
        "imap_username": user.name,
        "imap_host": "127.0.0.1",
        "imap_port": str(user.server.port),
    }


def grants(api: ApiServer) -> int:
    with session_scope(api.settings.require_database_url()) as db:
        return int(db.scalar(select(func.count()).select_from(Grant)) or 0)


def test_sign_in_page_redirects_with_a_code_that_works_once(
    api: ApiServer, mail_user: MailUser
) -> None:
    client = api.nylas()
    registered = client.applications.redirect_uris.create({"url": CALLBACK, "platform": "web"})
    assert registered.data.url == CALLBACK
    url = client.auth.url_for_oauth2(
        {
            "client_id": CLIENT_ID,
            "redirect_uri": CALLBACK,
            "provider": "imap",  # type: ignore[typeddict-item]
            "state": "state-123",
            "login_hint": mail_user.email,
        }
    )
    with browser(api) as http:
        page = http.get(url)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "form-action 'self' http://localhost:8765;" in csp  # the 303 may go there
        assert f"value='{mail_user.email}'" in page.text
        assert "app password" in page.text
        flow = _FLOW.search(page.text)
        assert flow is not None

        wrong = http.post(
            "/v3/connect/auth", data={"flow": flow[1], **form_values(mail_user, "nope")}
        )
        assert wrong.status_code == 401
        assert "refused this address and password" in wrong.text
        assert "nope" not in wrong.text  # the password is never echoed
        assert grants(api) == 0

        right = http.post(
            "/v3/connect/auth",
            data={"flow": flow[1], **form_values(mail_user, mail_user.password)},
        )
    assert right.status_code == 303, right.text
    location = urlsplit(right.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK
    query = parse_qs(location.query)
    assert query["state"] == ["state-123"]
    code = query["code"][0]

    exchanged = client.auth.exchange_code_for_token(
        {"redirect_uri": CALLBACK, "client_id": CLIENT_ID, "code": code}
    )
    assert exchanged.email == mail_user.email
    assert client.grants.find(exchanged.grant_id).data.email == mail_user.email
    assert len(api.enqueued) == 1

    with pytest.raises(NylasOAuthError) as again:
        client.auth.exchange_code_for_token(
            {"redirect_uri": CALLBACK, "client_id": CLIENT_ID, "code": code}
        )
    assert again.value.status_code == 400
    assert again.value.error == "invalid_grant"


def test_pkce_and_refusals(api: ApiServer, mail_user: MailUser) -> None:
    client = api.nylas()
    client.applications.redirect_uris.create({"url": CALLBACK, "platform": "web"})
    verifier = "v" * 64
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    params = {
        "client_id": CLIENT_ID,
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "provider": "imap",
        "code_challenge": challenge.decode(),
        "code_challenge_method": "S256",
    }
    with browser(api) as http:
        unregistered = http.get(
            "/v3/connect/auth", params={**params, "redirect_uri": "https://evil.example/cb"}
        )
        assert unregistered.status_code == 400
        assert "not registered" in unregistered.json()["error"]["message"]
        page = http.get("/v3/connect/auth", params=params)
        flow = _FLOW.search(page.text)
        assert flow is not None
        tampered = http.post(
            "/v3/connect/auth",
            data={"flow": flow[1][:-4] + "0000", **form_values(mail_user, mail_user.password)},
        )
        assert tampered.status_code == 400
        assert "expired" in tampered.text
        done = http.post(
            "/v3/connect/auth",
            data={"flow": flow[1], **form_values(mail_user, mail_user.password)},
        )
        assert done.status_code == 303
        code = parse_qs(urlsplit(done.headers["location"]).query)["code"][0]
        token = {"client_id": CLIENT_ID, "grant_type": "authorization_code", "code": code}
        wrong_secret = http.post(
            "/v3/connect/token",
            json={**token, "redirect_uri": CALLBACK, "client_secret": "not-a-key"},
        )
        assert wrong_secret.status_code == 401
        assert wrong_secret.json()["error"] == "invalid_client"
    with pytest.raises(NylasOAuthError) as no_verifier:
        client.auth.exchange_code_for_token(
            {"redirect_uri": CALLBACK, "client_id": CLIENT_ID, "code": code}
        )
    assert no_verifier.value.error == "invalid_grant"
    exchanged = client.auth.exchange_code_for_token(
        {
            "redirect_uri": CALLBACK,
            "client_id": CLIENT_ID,
            "code": code,
            "code_verifier": verifier,
        }
    )
    assert exchanged.grant_id

    uris = client.applications.redirect_uris.list().data
    assert [u.url for u in uris] == [CALLBACK]
    client.applications.redirect_uris.destroy(uris[0].id)
    with pytest.raises(NylasApiError) as gone:
        client.applications.redirect_uris.find(uris[0].id)
    assert gone.value.status_code == 404
    with api.http() as http:
        bad = http.post("/v3/applications/redirect-uris", json={"url": "http://example.com/cb"})
    assert bad.status_code == 400  # plain http only for localhost


def test_pkce_as_the_sdk_does_it(api: ApiServer, mail_user: MailUser) -> None:
    """The SDK's challenge is base64(hex(sha256(verifier))), not RFC 7636's S256: both work."""
    client = api.nylas()
    client.applications.redirect_uris.create({"url": CALLBACK, "platform": "web"})
    pkce = client.auth.url_for_oauth2_pkce(
        {"client_id": CLIENT_ID, "redirect_uri": CALLBACK, "provider": "imap"}  # type: ignore[typeddict-item]
    )
    with browser(api) as http:
        page = http.get(pkce.url)
        assert page.status_code == 200, page.text
        flow = _FLOW.search(page.text)
        assert flow is not None
        done = http.post(
            "/v3/connect/auth",
            data={"flow": flow[1], **form_values(mail_user, mail_user.password)},
        )
    assert done.status_code == 303, done.text
    code = parse_qs(urlsplit(done.headers["location"]).query)["code"][0]
    exchange = {"redirect_uri": CALLBACK, "client_id": CLIENT_ID, "code": code}
    with pytest.raises(NylasOAuthError) as wrong:
        client.auth.exchange_code_for_token({**exchange, "code_verifier": pkce.secret + "x"})  # type: ignore[typeddict-item]
    assert wrong.value.error == "invalid_grant"
    exchanged = client.auth.exchange_code_for_token({**exchange, "code_verifier": pkce.secret})  # type: ignore[typeddict-item]
    assert exchanged.email == mail_user.email


def test_only_the_application_and_its_redirect_uris_are_accepted(
    api: ApiServer, mail_user: MailUser
) -> None:
    client = api.nylas()
    info = client.applications.info().data
    assert info.application_id == CLIENT_ID
    assert info.callback_uris == []
    client.applications.redirect_uris.create({"url": CALLBACK, "platform": "web"})
    assert [u.url for u in client.applications.info().data.callback_uris] == [CALLBACK]
    params = {"client_id": CLIENT_ID, "redirect_uri": CALLBACK, "provider": "imap"}
    refused = [
        ({**params, "client_id": "imap-pipeline"}, "client_id"),  # the default, not this app's
        ({**params, "client_id": ""}, "client_id"),
        ({**params, "client_id": "other-app", "redirect_uri": "https://evil.example/cb"}, "client"),
        ({**params, "redirect_uri": "http://localhost:8765/other"}, "redirect_uri"),
        ({**params, "redirect_uri": CALLBACK + "/"}, "redirect_uri"),  # exact match only
    ]
    with browser(api) as http:
        for query, needle in refused:
            response = http.get("/v3/connect/auth", params=query)
            assert response.status_code == 400, query
            assert response.headers["content-type"] == "application/json"
            assert "location" not in response.headers
            error = response.json()
            assert error["request_id"] == response.headers["x-request-id"]
            assert error["error"]["type"] == "invalid_request_error"
            assert needle in error["error"]["message"], (query, error)
        page = http.get("/v3/connect/auth", params=params)
        assert page.status_code == 200
        flow = _FLOW.search(page.text)
        assert flow is not None
        done = http.post(
            "/v3/connect/auth",
            data={"flow": flow[1], **form_values(mail_user, mail_user.password)},
        )
    assert done.status_code == 303, done.text
    code = parse_qs(urlsplit(done.headers["location"]).query)["code"][0]

    for client_id in ("imap-pipeline", "other-app"):
        with pytest.raises(NylasOAuthError) as unknown:
            client.auth.exchange_code_for_token(
                {"redirect_uri": CALLBACK, "client_id": client_id, "code": code}
            )
        assert unknown.value.status_code == 401
        assert unknown.value.error == "invalid_client"
    # refusing another client's attempt did not use the code up
    exchanged = client.auth.exchange_code_for_token(
        {"redirect_uri": CALLBACK, "client_id": CLIENT_ID, "code": code}
    )
    assert exchanged.email == mail_user.email


@pytest.mark.parametrize("provider", ["icloud", "yahoo"])
def test_hosted_sign_in_for_icloud_and_yahoo(
    api: ApiServer, mail_user: MailUser, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """``/v3/connect/auth?provider=icloud`` (or ``yahoo``), as Nylas' hosted auth for those
    providers: the form asks for the address and the app password, says where to get one, and
    signs in with the engine's preset of that provider (pointed at the test Dovecot here: the
    internet hosts are not reachable from the tests)."""
    from dataclasses import replace

    from pipeline import presets

    local = replace(
        presets.PRESETS[provider],
        imap_host="127.0.0.1",
        imap_port=mail_user.server.port,
        imap_tls="starttls",
        smtp_host=None,
    )
    monkeypatch.setitem(presets.PRESETS, provider, local)
    client = api.nylas()
    client.applications.redirect_uris.create({"url": CALLBACK, "platform": "web"})
    url = client.auth.url_for_oauth2(
        {"client_id": CLIENT_ID, "redirect_uri": CALLBACK, "provider": provider}  # type: ignore[typeddict-item]
    )
    with browser(api) as http:
        page = http.get(url)
        assert page.status_code == 200, page.text
        assert html_escape(local.app_password_help or "") in page.text
        flow = _FLOW.search(page.text)
        assert flow is not None
        # the address, the app password; the Dovecot login name is not the address
        values = {"email": mail_user.email, "password": mail_user.password}
        right = http.post(
            "/v3/connect/auth",
            data={"flow": flow[1], **values, "imap_username": mail_user.name},
        )
    assert right.status_code == 303, right.text
    code = parse_qs(urlsplit(right.headers["location"]).query)["code"][0]
    exchanged = client.auth.exchange_code_for_token(
        {"redirect_uri": CALLBACK, "client_id": CLIENT_ID, "code": code}
    )
    grant = client.grants.find(exchanged.grant_id).data
    assert grant.settings is not None
    assert grant.settings["provider_preset"] == provider
    assert grant.settings["imap_host"] == "127.0.0.1"

    with browser(api) as http:
        other = http.get(url.replace(f"provider={provider}", "provider=google"))
    assert other.status_code == 400
