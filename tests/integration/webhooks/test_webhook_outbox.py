"""The outbox's dispatch: events fan out to the destinations (verified through a receiver) that
asked for them, in order. Writing events (they live and die with the writer's transaction) is
tests/unit/webhooks/test_webhook_outbox_writes.py."""

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


def test_dispatch_fans_out_by_trigger_type(
    uow: Uow, service: WebhookService, receiver: Receiver
) -> None:
    created_only = _dest(uow, service, receiver, "/a", ["message.created"])
    everything = _dest(uow, service, receiver, "/b", ["message.created", "message.deleted"])
    folders = _dest(uow, service, receiver, "/c", ["folder.created"])
    with uow() as s:
        outbox.emit(s, grant_id=None, type="message.created", obj={"id": "1"}, subject_id="1")
        outbox.emit(s, grant_id=None, type="message.deleted", obj={"id": "1"}, subject_id="1")
        outbox.emit(s, grant_id=None, type="message.updated", obj={"id": "1"}, subject_id="1")
    with uow() as s:
        result = outbox.dispatch_batch(s, limit=100)
    assert (result.events, result.deliveries, result.more) == (3, 3, False)
    assert result.destination_ids == {created_only, everything}
    with uow() as s:
        assert [d.type for d in repository.deliveries_for(s, created_only)] == ["message.created"]
        assert [d.type for d in repository.deliveries_for(s, everything)] == [
            "message.created",
            "message.deleted",
        ]
        assert repository.deliveries_for(s, folders) == []
        assert not repository.has_pending_events(s)
    with uow() as s:  # dispatching again changes nothing
        assert outbox.dispatch_batch(s, limit=100).events == 0


def test_dispatch_works_in_batches_and_reports_more(
    uow: Uow, service: WebhookService, receiver: Receiver
) -> None:
    dest = _dest(uow, service, receiver, "/a", ["folder.created"])
    with uow() as s:
        for i in range(5):
            outbox.emit(s, grant_id=None, type="folder.created", obj={"id": str(i)})
    with uow() as s:
        first = outbox.dispatch_batch(s, limit=3)
    with uow() as s:
        second = outbox.dispatch_batch(s, limit=3)
    assert (first.events, first.more, second.events, second.more) == (3, True, 2, False)
    with uow() as s:
        seqs = [d.event_seq for d in repository.deliveries_for(s, dest)]
    assert seqs == sorted(seqs) and len(seqs) == 5


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
