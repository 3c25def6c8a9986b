"""The rolling retention purge (:func:`pipeline.maintenance.purge.purge`) on the rolled-back
store: mail whose INTERNALDATE crossed the window goes with everything hanging off it, and
nothing else does.

That a purge never waits for a row a sync holds needs two connections:
tests/integration/maintenance/test_retention_purge.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Connection, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from pipeline.maintenance.purge import SYNC_FAILURE_RETENTION_DAYS, purge
from pipeline.models import Attachment, Message, Placement, SyncFailure, Thread
from tests.support.stored_mail import Mailbox, T, mailbox

pytestmark = pytest.mark.services

DAY = 24 * 60  # minutes
RETENTION_DAYS = 90


def count(conn: Connection, model: type) -> int:
    return int(conn.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def mail(pg_sessions: sessionmaker[Session], pg_connection: Connection) -> Mailbox:
    """A thread whose root is 89 days old and whose reply is 30, an 88.5-day-old message with an
    attachment, a recent one, and two sync failures (one past its own retention)."""
    box = mailbox(pg_sessions, pg_connection)
    with box.batch():
        box.add("INBOX", "old root", 89 * DAY, message_id="<root@example.org>")
        box.add("INBOX", "Re: old root", 30 * DAY, in_reply_to="<root@example.org>")
        box.add("INBOX", "old alone", 88.5 * DAY, attachment=True)
        box.add("INBOX", "recent", 1 * DAY)
    inbox = box.folders["INBOX"]
    with pg_sessions.begin() as db:
        for uid, error, days in ((99, "broken", 0), (98, "old", SYNC_FAILURE_RETENTION_DAYS + 1)):
            db.add(
                SyncFailure(
                    grant_id=box.grant_id, folder_id=inbox, uidvalidity=1, uid=uid, error=error,
                    recorded_at=T - timedelta(days=days),
                )
            )  # fmt: skip
    return box


def test_mail_that_just_crossed_the_window_goes_with_everything_hanging_off_it(
    mail: Mailbox, pg_sessions: sessionmaker[Session], pg_connection: Connection
) -> None:
    conn = pg_connection
    threads = dict(conn.execute(select(Message.subject, Message.thread_id)).all())
    assert threads["old root"] == threads["Re: old root"]
    assert count(conn, Attachment) == 1
    outbox_before = conn.scalar(text("SELECT count(*) FROM webhook_outbox"))

    # two days later the two oldest messages are past the 90-day window
    result = purge(
        pg_sessions, retention_days=RETENTION_DAYS, now=T + timedelta(days=2), batch_rows=1
    )  # fmt: skip  (many batches)

    assert (result.messages, result.threads, result.sync_failures) == (2, 1, 1)
    assert result.complete and result.batches == 3
    assert sorted(conn.scalars(select(Message.subject))) == ["Re: old root", "recent"]
    assert count(conn, Placement) == 2
    assert count(conn, Attachment) == 0
    # the thread the reply still belongs to stays, the emptied one is gone
    assert conn.scalar(select(Thread.id).where(Thread.id == threads["Re: old root"])) is not None
    assert conn.scalar(select(Thread.id).where(Thread.id == threads["old alone"])) is None
    assert list(conn.scalars(select(SyncFailure.error))) == ["broken"]
    # no notification for purged mail
    assert conn.scalar(text("SELECT count(*) FROM webhook_outbox")) == outbox_before

    again = purge(pg_sessions, retention_days=RETENTION_DAYS, now=T + timedelta(days=2))
    assert (again.messages, again.threads, again.sync_failures) == (0, 0, 0)
    assert count(conn, Message) == 2


def test_the_window_is_the_internaldate_and_its_edge_stays(
    pg_sessions: sessionmaker[Session], pg_connection: Connection
) -> None:
    box = mailbox(pg_sessions, pg_connection)
    edge = T - timedelta(days=RETENTION_DAYS)
    box.add("INBOX", "on the edge", 0, internaldate=edge)
    box.add("INBOX", "a second past it", 0, internaldate=edge - timedelta(seconds=1))
    box.add("INBOX", "dated old, arrived now", RETENTION_DAYS * DAY + 5, internaldate=T)
    other = mailbox(pg_sessions, pg_connection, user="other")
    other.add("INBOX", "another grant's old mail", 100 * DAY)

    result = purge(pg_sessions, retention_days=RETENTION_DAYS, now=T)

    assert result.messages == 2
    assert sorted(pg_connection.scalars(select(Message.subject))) == [
        "dated old, arrived now",  # the Date header does not count, the INTERNALDATE does
        "on the edge",
    ]
