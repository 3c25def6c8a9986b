"""The webhook outbox's dispatch on the rolled-back store (:mod:`tests.support.rollback`): each
event goes to the destinations subscribed to its type, once, in ``seq`` order, a batch at a
time, and a dispatch that finds nothing new changes nothing.

The destinations are stored directly (:func:`repository.add_destination`): dispatching reads
only their rows, and the challenge that verifies a new destination is
tests/integration/webhooks/test_webhook_service.py. What needs a database of its own (``now()``
moving between transactions, a drainer's second connection) is
tests/integration/webhooks/test_webhook_outbox.py.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from sqlalchemy.orm import Session, sessionmaker

from pipeline.webhooks import outbox, repository

pytestmark = pytest.mark.services

Uow = Callable[[], AbstractContextManager[Session]]


@pytest.fixture
def uow(pg_sessions: sessionmaker[Session]) -> Uow:
    """A unit of work on the rolled-back store: commits on success, rolls back on an error."""
    return pg_sessions.begin


def _dest(uow: Uow, path: str, triggers: list[str]) -> str:
    """An active destination subscribed to ``triggers``, as a verified create stores it."""
    with uow() as s:
        return repository.add_destination(
            s,
            webhook_url=f"https://hooks.example.test{path}",
            description="",
            trigger_types=triggers,
            notification_email_addresses=[],
            secret_sealed="sealed",
        ).id


def test_dispatch_fans_out_by_trigger_type(uow: Uow) -> None:
    created_only = _dest(uow, "/a", ["message.created"])
    everything = _dest(uow, "/b", ["message.created", "message.deleted"])
    folders = _dest(uow, "/c", ["folder.created"])
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


def test_dispatch_works_in_batches_and_reports_more(uow: Uow) -> None:
    dest = _dest(uow, "/a", ["folder.created"])
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
