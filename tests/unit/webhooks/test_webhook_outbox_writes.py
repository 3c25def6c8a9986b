"""The webhook outbox's writes on the rolled-back store (:mod:`tests.support.rollback`): events
live and die with the writer's transaction (emit never commits), get increasing sequence numbers
and unique ids, and a NUL in an object is stored, not fatal.

``uow`` is a unit of work as ``session_scope`` makes one (commit on success, rollback on an
exception); here its commit releases a savepoint of the test's transaction and its rollback
rolls back to it, so an emit that committed behind the caller's back would leave its rows for
the next unit of work to see, as on a database of its own. Dispatching them to destinations is
tests/integration/webhooks/test_webhook_outbox.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.webhooks import outbox
from pipeline.webhooks.models import OutboxEvent

pytestmark = pytest.mark.services

Uow = Callable[[], AbstractContextManager[Session]]


@pytest.fixture
def uow(pg_sessions: sessionmaker[Session]) -> Uow:
    """A unit of work on the rolled-back store: commits on success, rolls back on an error."""
    return pg_sessions.begin


def test_emit_writes_in_the_callers_transaction_and_never_commits(uow: Uow) -> None:
    grant = str(uuid.uuid4())
    with pytest.raises(RuntimeError), uow() as s:
        outbox.emit(s, grant_id=grant, type="message.created", obj={"id": "m"}, subject_id="m")
        raise RuntimeError("the change failed")
    with uow() as s:
        assert s.scalars(select(OutboxEvent)).all() == []
    with uow() as s:
        outbox.emit(s, grant_id=grant, type="message.created", obj={"id": "m1"}, subject_id="m1")
        outbox.emit(s, grant_id=grant, type="message.updated", obj={"id": "m1"}, subject_id="m1")
        outbox.emit(s, grant_id=None, type="grant.deleted", obj={"id": grant}, subject_id=grant)
        s.rollback()  # emit did not commit behind our back
    with uow() as s:
        assert s.scalars(select(OutboxEvent)).all() == []


def test_rows_get_increasing_sequence_and_unique_ids(uow: Uow) -> None:
    for i in range(3):
        with uow() as s:
            for j in range(3):
                outbox.emit(s, grant_id=None, type="folder.updated", obj={"i": i, "j": j})
    with uow() as s:
        rows = s.scalars(select(OutboxEvent).order_by(OutboxEvent.seq)).all()
        assert [(r.object["i"], r.object["j"]) for r in rows] == [
            (i, j) for i in range(3) for j in range(3)
        ]
        assert len({r.id for r in rows}) == 9
        assert [r.seq for r in rows] == sorted(r.seq for r in rows)


def test_nul_characters_are_stored_not_fatal(uow: Uow) -> None:
    with uow() as s:
        outbox.emit(s, grant_id=None, type="message.created", obj={"body": "a\x00b"})
    with uow() as s:
        assert s.scalars(select(OutboxEvent.object)).one() == {"body": "a\ufffdb"}
