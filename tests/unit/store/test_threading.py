"""Threads as the batch writer makes them (``pipeline.sync.store``), batch after batch on the
rolled-back store: References / In-Reply-To first (in either arrival order, joining threads a
message links), then the subject without its reply prefixes; a thread's latest message time
follows its newest member."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.models import Message, Thread
from tests.support.stored_mail import Mailbox, T, mailbox

pytestmark = pytest.mark.services


@pytest.fixture
def box(pg_sessions: sessionmaker[Session], pg_connection: Connection) -> Mailbox:
    return mailbox(pg_sessions, pg_connection)


def thread_of(box: Mailbox) -> dict[str, str]:
    rows = box.conn.execute(
        select(Message.subject, Message.thread_id).where(Message.grant_id == box.grant_id)
    )
    return {subject: str(thread) for subject, thread in rows}


def threads(box: Mailbox) -> int:
    return int(
        box.conn.scalar(
            select(func.count()).select_from(Thread).where(Thread.grant_id == box.grant_id)
        )
        or 0
    )


def latest(box: Mailbox, thread_id: str) -> object:
    return box.conn.scalar(select(Thread.latest_message_at).where(Thread.id == thread_id))


def test_a_reply_stored_before_its_parent_joins_it_when_the_parent_comes(box: Mailbox) -> None:
    box.add("INBOX", "Re: Plans", 60, message_id="<reply@x>", in_reply_to="<root@x>")
    box.add("INBOX", "Plans", 120, message_id="<root@x>")  # a later batch

    of = thread_of(box)
    assert of["Plans"] == of["Re: Plans"]
    assert threads(box) == 1
    assert latest(box, of["Plans"]) == T - timedelta(minutes=60)  # the older one moved nothing


def test_a_message_linking_two_threads_merges_them(box: Mailbox) -> None:
    box.add("INBOX", "Budget", 300, message_id="<a@x>")
    box.add("INBOX", "Costs", 200, message_id="<b@x>")
    assert threads(box) == 2

    box.add("INBOX", "Re: Budget and costs", 10, message_id="<c@x>", references="<a@x> <b@x>")

    of = thread_of(box)
    assert of["Budget"] == of["Costs"] == of["Re: Budget and costs"]
    assert threads(box) == 1  # the merged thread is gone, not left empty
    assert latest(box, of["Budget"]) == T - timedelta(minutes=10)


def test_without_references_the_subject_joins_a_thread_without_its_reply_prefix(
    box: Mailbox,
) -> None:
    box.put(
        "INBOX",
        box.letter("Plans", 180, message_id="<root@x>"),
        box.letter("Re: Plans", 120, message_id="<reply@x>", in_reply_to="<root@x>"),
    )
    box.add("INBOX", "RE: Fwd: plans", 60, message_id="<orphan@x>")  # its parent never seen
    box.add("INBOX", "Plans for lunch", 30, message_id="<other@x>")

    of = thread_of(box)
    assert of["RE: Fwd: plans"] == of["Plans"] == of["Re: Plans"]
    assert of["Plans for lunch"] != of["Plans"]
    assert latest(box, of["Plans"]) == T - timedelta(minutes=60)


def test_an_other_grants_thread_is_never_joined(
    box: Mailbox, pg_sessions: sessionmaker[Session], pg_connection: Connection
) -> None:
    other = mailbox(pg_sessions, pg_connection, user="other")
    other.add("INBOX", "Plans", 120, message_id="<root@x>")
    box.add("INBOX", "Re: Plans", 60, message_id="<reply@x>", in_reply_to="<root@x>")
    assert thread_of(box)["Re: Plans"] != thread_of(other)["Plans"]
