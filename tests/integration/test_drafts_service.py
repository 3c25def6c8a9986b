"""A draft's changes without HTTP (pipeline.drafts.service), as the CLI or a task would make
them, against Dovecot: create APPENDs with \\Draft and stores the server's copy, an update
replaces it keeping the id, a scheduled draft's send is made again from the new version, remove
cancels it and expunges the draft, and a send no worker confirms leaves the draft in place."""

from __future__ import annotations

import email
import email.policy
import ipaddress
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from pipeline.config import Settings
from pipeline.drafts import repository, service
from pipeline.drafts.schemas import DraftRequest
from pipeline.errors import InvalidRequest
from pipeline.models import Grant
from pipeline.outbound.outbox import send_outbox
from pipeline.outbound.submit import SendRefused
from pipeline.sync.run import sync_grant_inline
from tests.support.grants import connect
from tests.support.mail import create_folder, imap_login
from tests.support.sender import RecordingSender
from tests.support.services import MailUser

pytestmark = pytest.mark.services

WAIT_S = 0.1  # no worker runs: a send is never confirmed
FUTURE_S = 3600  # a send_at this far ahead never falls due during the test


@pytest.fixture
def sender(settings: Settings) -> Iterator[RecordingSender]:
    # the test Dovecot listens on 127.0.0.1, as an operator would allow it
    local = settings.model_copy(
        update={"mail_allowed_networks": [ipaddress.ip_network("127.0.0.0/8")]}
    )
    sender = RecordingSender.for_settings(local)
    yield sender
    sender.close()


@pytest.fixture
def grant(settings: Settings, mail_user: MailUser, sender: RecordingSender) -> Grant:
    """A grant whose server has a Drafts folder, synced once."""
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Drafts")
    grant_id = connect(settings, mail_user)
    sync_grant_inline(sender.sessions, sender.settings, grant_id)
    with sender.sessions() as db:
        found = db.get(Grant, grant_id)
        assert found is not None
        return found


def server_drafts(user: MailUser) -> list[tuple[str, str]]:
    """(FLAGS, Subject) of every message in the server's Drafts folder."""
    conn = imap_login(user.server, user.name, user.password)
    try:
        conn.select('"Drafts"', readonly=True)
        _, fetched = conn.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
    finally:
        conn.logout()
    found = []
    for item in fetched:
        if isinstance(item, tuple):
            message = email.message_from_bytes(item[1], policy=email.policy.default)
            found.append((item[0].decode(), str(message["Subject"])))
    return found


def _request(**fields: object) -> DraftRequest:
    return DraftRequest.model_validate(fields)


def test_create_update_remove_on_the_server(
    sender: RecordingSender, grant: Grant, mail_user: MailUser
) -> None:
    with sender.sessions() as db:
        draft = service.create(
            db, sender, grant, _request(to=[{"email": "bob@example.test"}], subject="First"), None
        )
        draft_id = draft.id
    ((flags, subject),) = server_drafts(mail_user)
    assert "\\Draft" in flags
    assert subject == "First"

    with sender.sessions() as db:
        current = repository.get_draft(db, grant.id, draft_id)
        assert current is not None
        updated = service.update(db, sender, grant, current, _request(subject="Second"), None)
        assert updated.id == draft_id  # rewritten in place
        assert updated.subject == "Second"
    assert [s for _, s in server_drafts(mail_user)] == ["Second"]  # the old copy expunged

    with sender.sessions() as db:
        current = repository.get_draft(db, grant.id, draft_id)
        assert current is not None
        service.remove(db, sender, grant, current)
        assert repository.get_draft(db, grant.id, draft_id) is None
    assert server_drafts(mail_user) == []
    assert sender.drains == []  # no send was ever queued


def test_a_scheduled_draft_is_rescheduled_by_an_update_and_cancelled_by_remove(
    sender: RecordingSender, grant: Grant
) -> None:
    send_at = int(time.time()) + FUTURE_S
    with sender.sessions() as db:
        draft = service.create(
            db,
            sender,
            grant,
            _request(to=[{"email": "bob@example.test"}], subject="Later", send_at=send_at),
            None,
        )
        service.update(db, sender, grant, draft, _request(subject="Later, changed"), None)
        rows = db.execute(select(send_outbox)).all()
        assert sorted((r.state, r.request["subject"]) for r in rows) == [
            ("cancelled", "Later"),  # it held the old version
            ("queued", "Later, changed"),
        ]
        assert all(int(r.send_at.timestamp()) == send_at for r in rows)  # the time it had
        with pytest.raises(InvalidRequest, match="send_at must be in the future"):
            service.update(db, sender, grant, draft, _request(send_at=1), None)
        service.remove(db, sender, grant, draft)
        states = db.scalars(select(send_outbox.c.state)).all()
    assert sorted(states) == ["cancelled", "cancelled"]  # a removed draft is never sent
    assert sender.drains == [grant.id, grant.id]


def test_a_send_no_worker_confirms_keeps_the_draft(
    sender: RecordingSender, grant: Grant, mail_user: MailUser
) -> None:
    with sender.sessions() as db:
        draft = service.create(
            db, sender, grant, _request(to=[{"email": "bob@example.test"}], subject="Now"), None
        )
        with pytest.raises(SendRefused) as late:
            service.send(db, sender, grant, draft, fields="standard", wait_s=WAIT_S)
        assert late.value.status == 504
        assert repository.get_draft(db, grant.id, draft.id) is not None
        (row,) = db.execute(select(send_outbox)).all()
        assert row.state == "queued"  # it goes once, when a worker drains
        assert row.idempotency_key == f"draft:{draft.id}:{draft.header_hash}"
    assert [s for _, s in server_drafts(mail_user)] == ["Now"]
    assert sender.drains == [grant.id]
