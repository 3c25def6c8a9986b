"""Each stored message's search row (``api_message_search``) carries the message's own date
and thread.

A ``search_query_native`` page walks the search rows by their ``date`` and pages on it
(``pipeline.messages.queries.list_messages_query``, migration 0322): a row whose date differed from
its message's would put the message out of order, or on no page at all. A thread list finds a
thread's matches by the row's ``thread_id`` (migration 0325): a row left on its old thread
after a merge would list the wrong thread, or none. Whatever writes the rows (today triggers on
``messages``) must keep them equal to the message, on insert and on update.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.imap import FetchedMessage
from pipeline.messages.repository import MessageRepository
from pipeline.models import Message, Thread
from pipeline.search.tables import message_search
from tests.support.store import offline_grant, write_fetched

pytestmark = pytest.mark.services

SENT = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def _raw(subject: str, n: int) -> bytes:
    return (
        f"From: Ann <ann@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
        f"Date: Mon, 2 Nov 2026 1{n}:00:00 +0000\r\nMessage-ID: <{n}@example.org>\r\n\r\nbody\r\n"
    ).encode()


def _dates(pg_sessions: sessionmaker[Session]) -> dict[str, tuple[datetime, datetime]]:
    """message id -> (messages.date, its search row's date)."""
    s = message_search
    with pg_sessions.begin() as db:
        rows = db.execute(
            select(Message.id, Message.date, s.c.date).join(s, s.c.message_id == Message.id)
        ).all()
    return {str(mid): (date, row_date) for mid, date, row_date in rows}


def _stored_grant(pg_sessions: sessionmaker[Session]) -> tuple[str, str]:
    """A grant with an INBOX holding three messages of three threads (distinct subjects, no
    references): the grant's and the folder's ids."""
    grant_id, (folder_id,) = offline_grant(pg_sessions, "s")
    fetched = [
        FetchedMessage(
            uid=n,
            flags=(),
            internaldate=SENT + timedelta(hours=n),
            size=100,
            modseq=None,
            raw=_raw(f"subject {n}", n),
        )
        for n in (1, 2, 3)
    ]
    write_fetched(pg_sessions, grant_id, folder_id, fetched)
    return grant_id, folder_id


def _threads(pg_sessions: sessionmaker[Session]) -> dict[str, tuple[str | None, str | None]]:
    """message id -> (messages.thread_id, its search row's thread_id)."""
    s = message_search
    with pg_sessions.begin() as db:
        rows = db.execute(
            select(Message.id, Message.thread_id, s.c.thread_id).join(
                s, s.c.message_id == Message.id
            )
        ).all()
    return {
        str(mid): (None if t is None else str(t), None if r is None else str(r))
        for mid, t, r in rows
    }


def test_search_rows_carry_the_message_date_on_insert_and_update(
    pg_sessions: sessionmaker[Session],
) -> None:
    _stored_grant(pg_sessions)
    stored = _dates(pg_sessions)
    assert len(stored) == 3
    assert all(date == row_date for date, row_date in stored.values()), stored

    moved = sorted(stored)[0]
    with pg_sessions.begin() as db:
        db.execute(
            update(Message).where(Message.id == moved).values(date=SENT - timedelta(days=30))
        )
    after = _dates(pg_sessions)
    assert after[moved] == (SENT - timedelta(days=30), SENT - timedelta(days=30))
    assert all(date == row_date for date, row_date in after.values()), after


def test_search_rows_follow_the_message_thread_through_merges_and_deletes(
    pg_sessions: sessionmaker[Session],
) -> None:
    _stored_grant(pg_sessions)
    stored = _threads(pg_sessions)
    assert len(stored) == 3
    assert all(t is not None and t == row for t, row in stored.values()), stored
    threads = sorted({t for t, _ in stored.values() if t is not None})
    assert len(threads) == 3, stored

    into, merged, deleted = threads
    with pg_sessions.begin() as db:
        MessageRepository(db).merge_threads(into, [merged])
    after = _threads(pg_sessions)
    assert sorted(t for t, _ in after.values()) == sorted([into, into, deleted])
    assert all(t == row for t, row in after.values()), after

    with pg_sessions.begin() as db:  # ON DELETE SET NULL on messages.thread_id
        db.execute(delete(Thread).where(Thread.id == deleted))
    last = _threads(pg_sessions)
    assert sorted(t or "" for t, _ in last.values()) == sorted(["", into, into])
    assert all(t == row for t, row in last.values()), last
