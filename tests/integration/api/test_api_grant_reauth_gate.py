"""``PATCH /v3/grants/{id}`` with new credentials or a new server logs in to a server whoever
holds the API key names: it runs behind the same sign-in gate as ``/v3/connect/custom``
(threads of its own, a bound per client address, the sign-in deadline), never on the threads
that serve every other request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from api_support import ApiServer, connect_and_sync, snapshot

from pipeline.config import Settings
from tests.support.fake_imap import FakeImapConfig, FakeImapServer, Hostility
from tests.support.services import MailUser, TlsFiles
from tests.support.settings import section_changed
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

DEADLINE_S = 5.0  # the sign-in deadline of these tests
# The trickled LOGIN answer takes over 100 s (a byte every 5 s): an answer within 30 s means the
# deadline ended the wait, however loaded the machine.
ANSWER_WITHIN_S = 30.0
# A gate that queued the second sign-in instead of refusing it would answer at its deadline.
REFUSED_WITHIN_S = DEADLINE_S
WAIT_S = 30.0  # longest wait for the first sign-in to reach the server


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    """A short sign-in deadline and one sign-in per client address."""
    return section_changed(api_settings, "api", sign_in_deadline_s=DEADLINE_S, sign_in_per_client=1)


@pytest.fixture
def trickling(tls_files: TlsFiles) -> Iterator[FakeImapServer]:
    """An IMAP server that greets, then answers LOGIN one byte every 5 s (in this process, so
    the test can see when the LOGIN arrived)."""
    config = FakeImapConfig(
        tls="starttls",
        cert_file=tls_files.cert_file,
        key_file=tls_files.key_file,
        hostile={"LOGIN": Hostility("trickle", 5.0)},
    )
    with FakeImapServer(config) as server:
        yield server


def test_patch_reauth_is_bounded_by_the_sign_in_gate(
    api: ApiServer, mail_user: MailUser, trickling: FakeImapServer
) -> None:
    grant_id = connect_and_sync(api, mail_user)
    before = snapshot(api, grant_id)
    body = {
        "settings": {
            "imap_host": "127.0.0.1",
            "imap_port": trickling.port,
            "imap_tls": "starttls",
            "imap_password": "a new password",
        }
    }
    answers: list[tuple[int, float]] = []

    def patch() -> None:
        with api.http() as http:
            started = time.monotonic()
            status = http.patch(f"/v3/grants/{grant_id}", json=body).status_code
            answers.append((status, time.monotonic() - started))

    first = threading.Thread(target=patch, daemon=True)
    first.start()

    # the first one holds the gate once its LOGIN reached the trickling server
    def reached() -> bool:
        assert first.is_alive(), answers
        return "LOGIN" in trickling.command_names()

    wait_for(reached, "the first PATCH to reach the IMAP server", timeout_s=WAIT_S, interval_s=0.05)
    with api.http() as http:
        started = time.monotonic()
        second = http.patch(f"/v3/grants/{grant_id}", json=body)
        refused_in = time.monotonic() - started
        # meanwhile the API serves everything else at once
        assert http.get(f"/v3/grants/{grant_id}").status_code == 200
    assert second.status_code == 429, second.text
    assert second.headers["Retry-After"]
    assert refused_in < REFUSED_WITHIN_S
    first.join(timeout=30)
    assert not first.is_alive()
    ((status, seconds),) = answers
    assert status == 504
    assert seconds < ANSWER_WITHIN_S
    assert snapshot(api, grant_id) == before  # nothing changed


def test_patch_reauth_still_works(api: ApiServer, mail_user: MailUser) -> None:
    """Through the gate a PATCH still logs in, stores and answers the grant."""
    grant_id = connect_and_sync(api, mail_user)
    with api.http() as http:
        wrong = http.patch(f"/v3/grants/{grant_id}", json={"settings": {"imap_password": "x"}})
        assert wrong.status_code == 401, wrong.text
        right = http.patch(
            f"/v3/grants/{grant_id}", json={"settings": {"imap_password": mail_user.password}}
        )
        assert right.status_code == 200, right.text
        assert right.json()["data"]["id"] == grant_id
        by_address = http.patch(
            f"/v3/grants/{mail_user.email}",
            json={"settings": {"imap_password": mail_user.password}},
        )
        assert by_address.status_code == 200, by_address.text
        unchanged = http.patch(f"/v3/grants/grant:{grant_id}", json={"scope": []})
        assert unchanged.status_code == 200, unchanged.text
        assert unchanged.json()["data"]["email"] == mail_user.email
        missing = http.patch(
            "/v3/grants/00000000-0000-0000-0000-000000000000",
            json={"settings": {"imap_password": "x"}},
        )
        assert missing.status_code == 404, missing.text
