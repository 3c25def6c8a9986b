"""The outbox's dispatch where it needs a database of its own: a destination made after an event
gets nothing of it (Postgres' ``now()``, which one rolled-back transaction would hold still),
and a drainer letting go waits for a dispatch's commit (two connections). Writing events is
tests/unit/webhooks/test_webhook_outbox_writes.py; the fan-out by trigger type and batches,
tests/unit/webhooks/test_webhook_dispatch.py."""

from __future__ import annotations

import functools
import threading
import uuid
from contextlib import AbstractContextManager

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from webhook_receiver import Receiver

from pipeline.webhooks import outbox, repository
from pipeline.webhooks.models import WebhookDelivery
from pipeline.webhooks.service import WebhookService

pytestmark = pytest.mark.services

Uow = functools.partial[AbstractContextManager[Session]]


def _dest(
    uow: Uow, service: WebhookService, receiver: Receiver, path: str, triggers: list[str]
) -> str:
    with uow() as s:
        return service.create(s, {"webhook_url": receiver.url(path), "trigger_types": triggers}).id


def test_paused_destinations_and_later_destinations_get_nothing(
    uow: Uow, service: WebhookService, receiver: Receiver
) -> None:
    paused = _dest(uow, service, receiver, "/p", ["message.created"])
    with uow() as s:
        service.update(s, paused, {"status": "pause"})
    with uow() as s:
        outbox.emit(s, grant_id=None, type="message.created", obj={"id": "early"})
    late = _dest(uow, service, receiver, "/late", ["message.created"])
    with uow() as s:
        result = outbox.dispatch_batch(s, limit=10)
    assert result.events == 1 and result.deliveries == 0
    with uow() as s:
        assert s.scalars(select(WebhookDelivery)).all() == []
    assert late


def test_a_destination_whose_drainer_works_is_not_woken_and_the_drainer_sees_the_work(
    uow: Uow, service: WebhookService, receiver: Receiver
) -> None:
    dest = _dest(uow, service, receiver, "/busy", ["message.created"])
    idle = _dest(uow, service, receiver, "/idle", ["message.created"])
    token = str(uuid.uuid4())
    with uow() as s:  # a drainer is at work on /busy
        assert repository.acquire_lease(s, dest, token, 60.0) is not None
    with uow() as s:
        for i in range(3):
            outbox.emit(s, grant_id=None, type="message.created", obj={"i": i})

    claimed: list[int] = []
    with uow() as dispatching:
        result = outbox.dispatch_batch(dispatching, limit=10)
        assert result.destination_ids == {idle}  # only the idle one needs a wake-up

        def drainer_lets_go() -> None:
            # The drainer's last step: renew, claim what is due, else release and look again.
            with uow() as s:
                repository.acquire_lease(s, dest, token, 60.0)  # waits for the dispatch
                claimed.extend(
                    c.delivery_id for c in repository.claim_due(s, dest, 10, in_flight_s=60)
                )

        thread = threading.Thread(target=drainer_lets_go)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive(), "the drainer should wait for the dispatch to commit"
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(claimed) == 3  # the dispatch's deliveries, seen before the drainer let go
