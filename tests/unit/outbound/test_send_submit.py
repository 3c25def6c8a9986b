"""Submitting a send without HTTP (pipeline.outbound.submit), as the CLI or a task would: the
same Idempotency-Key gives the same outbox row and never a second send, its first final answer
is kept, another request with it is refused, and a send nobody drains is not waited on past
``wait_s``. No worker runs here: the test settles the row as a worker would.

On the rolled-back store (:mod:`tests.support.rollback`): a wait's looks open sessions of their
own, here savepoints in the test's one transaction, so they see the submit's commit and the
test's settling as they would see another connection's. Sending through a worker
and the HTTP route are tests/integration/api/test_api_send.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.models import Grant
from pipeline.outbound import submit
from pipeline.outbound.compose import Outgoing, SendRequest, prepare
from pipeline.outbound.outbox import send_outbox
from tests.support.rollback import offline_settings
from tests.support.sender import RecordingSender
from tests.support.store import offline_grant

pytestmark = pytest.mark.services

WAIT_S = 0.1  # nobody drains here: the wait only has to end


@pytest.fixture
def sender(pg_sessions: sessionmaker[Session]) -> Iterator[RecordingSender]:
    sender = RecordingSender(settings=offline_settings(), sessions=pg_sessions)
    yield sender
    sender.close()


def _grant(sender: RecordingSender) -> Grant:
    grant_id, _ = offline_grant(sender.sessions, "sender")
    with sender.sessions() as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        return grant


def _composed(db: Session, grant: Grant, subject: str = "Once") -> Outgoing:
    req = SendRequest.model_validate(
        {"to": [{"email": "bob@example.test"}], "subject": subject, "body": "only once"}
    )
    return prepare(db, grant, req, [])


def _settle(sender: RecordingSender, outbox_id: str, **values: Any) -> None:
    """What a worker leaves on the row (a sent row's Sent copy done: ``raw`` cleared)."""
    with sender.sessions() as db:
        db.execute(update(send_outbox).where(send_outbox.c.id == outbox_id).values(**values))
        db.commit()


def test_the_same_key_gives_the_same_row_and_one_send(sender: RecordingSender) -> None:
    grant = _grant(sender)
    with sender.sessions() as db:
        first = submit.submit_and_wait(
            db, sender, grant, _composed(db, grant), "key-1", wait_s=WAIT_S
        )
        again = submit.submit_and_wait(
            db, sender, grant, _composed(db, grant), "key-1", wait_s=WAIT_S
        )
    assert first.kind is submit.Kind.PENDING
    assert first.status == 202
    assert first.answer is not None
    assert first.answer["data"]["schedule_id"] == first.row.id
    assert again.kind is submit.Kind.IN_PROGRESS  # the first is still being sent
    assert again.row.id == first.row.id
    assert sender.drains == [grant.id]  # one row, one drain: never a second send

    _settle(sender, first.row.id, state="sent", raw=None)
    with sender.sessions() as db:
        answered = submit.submit_and_wait(
            db, sender, grant, _composed(db, grant), "key-1", wait_s=WAIT_S
        )
        kept = submit.submit_and_wait(
            db, sender, grant, _composed(db, grant), "key-1", wait_s=WAIT_S
        )
    assert answered.kind is submit.Kind.ANSWERED
    assert answered.repeated
    assert answered.row.id == first.row.id
    assert answered.answer is not None
    assert answered.answer["status"] == 200
    assert answered.answer["data"]["subject"] == "Once"
    assert kept.answer == answered.answer  # the first final answer is kept on the row
    assert sender.drains == [grant.id]


def test_the_same_key_with_another_request_is_refused(sender: RecordingSender) -> None:
    grant = _grant(sender)
    with sender.sessions() as db:
        submit.submit(db, sender, grant, _composed(db, grant), "key-2")
        with pytest.raises(submit.KeyReused):
            submit.submit(db, sender, grant, _composed(db, grant, "Other"), "key-2")
    assert sender.drains == [grant.id]


def test_send_now_raises_what_the_send_failed_with(sender: RecordingSender) -> None:
    grant = _grant(sender)
    with sender.sessions() as db:
        with pytest.raises(submit.SendRefused) as late:
            submit.send_now(db, sender, grant, _composed(db, grant), "key-3", wait_s=WAIT_S)
        assert late.value.status == 504
        assert late.value.type == "provider_error"
        row = submit.submit(db, sender, grant, _composed(db, grant), "key-3").row
        error = {"status": 400, "type": "invalid_request_error", "message": "550 refused"}
        _settle(sender, row.id, state="failed", error=error)
        with pytest.raises(submit.SendRefused) as refused:
            submit.send_now(db, sender, grant, _composed(db, grant), "key-3", wait_s=WAIT_S)
    assert (refused.value.status, refused.value.type) == (400, "invalid_request_error")
    assert str(refused.value) == "550 refused"
