"""Hosted authentication: the sign-in page, the redirect with a code, the code exchange.

Driven over HTTP as a browser would (form GET and POST); not yet in a real headless browser.
"""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from api_support import ApiServer
from nylas.models.errors import NylasApiError, NylasOAuthError
from sqlalchemy import func, select

from pipeline.db import session_scope
from pipeline.models import Grant
from tests.support.services import MailUser

pytestmark = pytest.mark.services

CALLBACK = "http://localhost:8765/callback"
_FLOW = re.compile(r"name='flow' value='([^']+)'")


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
            "client_id": "my-app",
            "redirect_uri": CALLBACK,
            "provider": "imap",  # type: ignore[typeddict-item]
            "state": "state-123",
            "login_hint": mail_user.email,
        }
    )
    with browser(api) as http:
        page = http.get(url)
        assert page.status_code == 200
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
        {"redirect_uri": CALLBACK, "client_id": "my-app", "code": code}
    )
    assert exchanged.email == mail_user.email
    assert client.grants.find(exchanged.grant_id).data.email == mail_user.email
    assert len(api.enqueued) == 1

    with pytest.raises(NylasOAuthError) as again:
        client.auth.exchange_code_for_token(
            {"redirect_uri": CALLBACK, "client_id": "my-app", "code": code}
        )
    assert again.value.status_code == 400
    assert again.value.error == "invalid_grant"


def test_pkce_and_refusals(api: ApiServer, mail_user: MailUser) -> None:
    client = api.nylas()
    client.applications.redirect_uris.create({"url": CALLBACK, "platform": "web"})
    verifier = "v" * 64
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    params = {
        "client_id": "my-app",
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
        assert "not registered" in unregistered.text
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
        token = {"client_id": "my-app", "grant_type": "authorization_code", "code": code}
        wrong_secret = http.post(
            "/v3/connect/token",
            json={**token, "redirect_uri": CALLBACK, "client_secret": "not-a-key"},
        )
        assert wrong_secret.status_code == 401
        assert wrong_secret.json()["error"] == "invalid_client"
    with pytest.raises(NylasOAuthError) as no_verifier:
        client.auth.exchange_code_for_token(
            {"redirect_uri": CALLBACK, "client_id": "my-app", "code": code}
        )
    assert no_verifier.value.error == "invalid_grant"
    exchanged = client.auth.exchange_code_for_token(
        {
            "redirect_uri": CALLBACK,
            "client_id": "my-app",
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
