"""A draft sent through a slow SMTP server: the API stops waiting (504) while the worker is
still at it, the draft stays, and sending it again gives the first send's answer: one mail."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from api_support import ApiServer, SmtpServer
from nylas.models.errors import NylasApiError
from sqlalchemy import text
from test_api_drafts import connect, server_drafts

from pipeline.config import Settings
from pipeline.db import session_scope
from tests.support.services import MailUser, TlsFiles
from tests.support.settings import section_changed
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

SMTP_DELAY_S = 4.0
WAIT_S = 1.0  # the API's wait for the worker, shorter than the server's answer


def settled(api: ApiServer) -> bool:
    """Whether the grant's one send is final with its Sent copy filed."""
    with session_scope(api.settings.require_database_url()) as db:
        row = db.execute(text("SELECT state, raw IS NULL FROM send_outbox")).one()
    return bool(row[0] == "sent" and row[1])


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    return section_changed(api_settings, "api", send_wait_s=WAIT_S)


@pytest.fixture
def smtp(tls_files: TlsFiles, mail_user: MailUser) -> Iterator[SmtpServer]:
    server = SmtpServer(
        str(tls_files.cert_file),
        str(tls_files.key_file),
        mail_user.name,
        mail_user.password,
        delay_s=SMTP_DELAY_S,
    )
    yield server
    server.close()


def test_a_draft_send_retried_after_a_timeout_sends_once(
    api: ApiServer, mail_user: MailUser, smtp: SmtpServer
) -> None:
    grant_id = connect(api, mail_user, smtp)
    client = api.nylas()
    draft = client.drafts.create(
        grant_id, {"to": [{"email": "bob@example.test"}], "subject": "slow", "body": "x"}
    ).data
    with pytest.raises(NylasApiError) as slow:
        client.drafts.send(grant_id, draft.id)
    assert slow.value.status_code == 504
    assert len(server_drafts(mail_user)) == 1  # not sent yet as far as the API knows

    wait_for(lambda: smtp.messages, "the worker to send it meanwhile", timeout_s=30)
    assert len(smtp.messages) == 1
    # the row settles once the Sent copy is filed too (its MIME dropped)
    wait_for(lambda: settled(api), "the outbox row to settle", timeout_s=30)

    sent = client.drafts.send(grant_id, draft.id).data  # the retry: the first send's answer
    assert sent.subject == "slow"
    time.sleep(SMTP_DELAY_S + 1)  # a second send would have reached the server by now
    assert len(smtp.messages) == 1
    assert server_drafts(mail_user) == []
