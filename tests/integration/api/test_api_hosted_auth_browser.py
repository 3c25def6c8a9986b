"""Hosted authentication in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

A user opens the sign-in page, types a wrong password and sees why it failed, opens the
advanced settings, signs in and lands on the application's redirect URI with a code that the
application then exchanges. A screenshot of the page is written for a person to look at once
(``IMAP_PIPELINE_SCREENSHOT_DIR``, default: the test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from api_support import ApiServer, snapshot, victim_grant

from tests.conftest import service_unavailable
from tests.support.fake_imap import FakeImapConfig, FakeImapServer
from tests.support.services import MailUser, TlsFiles

pytestmark = pytest.mark.services

CALLBACK = "http://localhost:8765/callback"
CHROMIUM = "/usr/bin/chromium"
PAGE_TIMEOUT_MS = 30_000


@pytest.fixture
def page() -> Iterator[object]:
    """A fresh Chromium page."""
    if shutil.which(CHROMIUM) is None:
        service_unavailable("Chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            context = browser.new_context()
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def test_sign_in_in_a_browser(
    api: ApiServer, mail_user: MailUser, page: object, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, Route

    assert isinstance(page, Page)
    client = api.nylas()
    client.applications.redirect_uris.create({"url": CALLBACK, "platform": "web"})
    client_id = client.applications.info().data.application_id  # IMAP_PIPELINE_API_CLIENT_ID
    url = client.auth.url_for_oauth2(
        {
            "client_id": client_id,
            "redirect_uri": CALLBACK,
            "provider": "imap",  # type: ignore[typeddict-item]
            "state": "st-1",
            "login_hint": mail_user.email,
        }
    )
    landed: list[str] = []

    def callback(route: Route) -> None:
        landed.append(route.request.url)
        route.fulfill(status=200, content_type="text/plain", body="signed in")

    page.route("http://localhost:8765/**", callback)
    page.goto(url)
    assert page.locator("#email").input_value() == mail_user.email
    shots = Path(os.environ.get("IMAP_PIPELINE_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "hosted-auth.png"), full_page=True)

    page.get_by_text("Advanced: server settings").click()
    page.fill("#imap_username", mail_user.name)
    page.fill("#imap_host", "127.0.0.1")
    page.fill("#imap_port", str(mail_user.server.port))
    page.fill("#password", "definitely-wrong")
    page.click("button[type=submit]")
    page.wait_for_selector("p.error")
    assert "refused this address and password" in page.inner_text("p.error")
    page.screenshot(path=str(shots / "hosted-auth-wrong-password.png"), full_page=True)
    assert landed == []

    page.fill("#password", mail_user.password)
    page.click("button[type=submit]")
    page.wait_for_url("http://localhost:8765/**")
    assert page.inner_text("body") == "signed in"
    query = parse_qs(urlsplit(landed[-1]).query)
    assert query["state"] == ["st-1"]
    exchanged = client.auth.exchange_code_for_token(
        {"redirect_uri": CALLBACK, "client_id": client_id, "code": query["code"][0]}
    )
    assert exchanged.email == mail_user.email


def test_a_sign_in_in_a_browser_cannot_take_over_a_connected_address(
    api: ApiServer, mail_user: MailUser, page: object, tls_files: TlsFiles
) -> None:
    """The issue's attack, in Chromium: the victim's address, the attacker's server (any
    password). The page refuses, nothing is redirected, and the victim's grant, credentials and
    mail are as they were."""
    from playwright.sync_api import Page, Route

    assert isinstance(page, Page)
    grant_id = victim_grant(api, mail_user)
    before = snapshot(api, grant_id)
    client = api.nylas()
    client.applications.redirect_uris.create({"url": CALLBACK, "platform": "web"})
    url = client.auth.url_for_oauth2(
        {
            "client_id": client.applications.info().data.application_id,
            "redirect_uri": CALLBACK,
            "provider": "imap",  # type: ignore[typeddict-item]
            "login_hint": mail_user.email,
        }
    )
    landed: list[str] = []

    def callback(route: Route) -> None:
        landed.append(route.request.url)
        route.fulfill(status=200, content_type="text/plain", body="signed in")

    page.route("http://localhost:8765/**", callback)
    config = FakeImapConfig(
        tls="starttls", cert_file=tls_files.cert_file, key_file=tls_files.key_file
    )
    with FakeImapServer(config) as attackers_server:
        page.goto(url)
        page.get_by_text("Advanced: server settings").click()
        page.fill("#imap_username", mail_user.name)
        page.fill("#imap_host", "127.0.0.1")
        page.fill("#imap_port", str(attackers_server.port))
        page.fill("#password", "any password works there")
        page.click("button[type=submit]")
        page.wait_for_selector("p.error")
        assert "changed nothing" in page.inner_text("p.error")
        assert grant_id not in page.content()
        assert attackers_server.sessions == 0
    assert landed == []
    assert snapshot(api, grant_id) == before
