"""A thread list with ``search_query_native`` lists the same threads however it walks them.

A search whose text Postgres expects to match a few hundred to a few thousand messages walks
the threads with the set of the text's threads in hand and tests the whole search only on a
thread of that set (``pipeline.threads.queries._thread_has_match``, ``thread_set``); otherwise
Postgres joins the threads to their matching search rows. The two must list the same threads
in the same order, page for page, including a thread whose only text match has no current
copy (in a folder whose UIDVALIDITY changed: the set has that thread, the search does not) and
a thread that matches only with a flag of its copy. A search without text keys whose flag or
internal date an index of the messages serves (UNSEEN, SINCE) walks with the set of the
threads of the messages those keys admit, the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from sqlalchemy import Connection, event
from sqlalchemy.orm import Session, sessionmaker

from pipeline.imap import FetchedMessage
from pipeline.messages.filters import MessageFilter
from pipeline.pages import Cursor
from pipeline.search import criteria, store
from pipeline.threads import queries as thread_queries
from pipeline.threads.queries import ThreadCriteria, list_threads, list_threads_query
from tests.support.store import offline_grant, write_fetched

pytestmark = pytest.mark.services

SENT = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
THREADS = 30


def _fetched(
    uid: int, n: int, subject: str, minutes: int, flags: tuple[str, ...], reply_to: int = 0
) -> FetchedMessage:
    """Message ``n`` (a reply to ``reply_to`` unless 0), sent ``minutes`` after SENT."""
    sent = SENT + timedelta(minutes=minutes)
    parent = f"In-Reply-To: <{reply_to}@example.org>\r\n" if reply_to else ""
    raw = (
        f"From: Ann <ann@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
        f"Date: {format_datetime(sent)}\r\nMessage-ID: <{n}@example.org>\r\n{parent}"
        "\r\nbody\r\n"
    ).encode()
    return FetchedMessage(uid=uid, flags=flags, internaldate=sent, size=100, modseq=None, raw=raw)


def _store(pg_sessions: sessionmaker[Session]) -> str:
    """A grant whose INBOX holds THREADS threads of two messages (the reply of every third one
    has 'invoice' in its subject, unseen in every sixth), and whose 'Old' folder (UIDVALIDITY
    changed since its copies were stored) holds the newest threads, with 'invoice' too."""
    grant_id, (inbox_id, old_id) = offline_grant(pg_sessions, "t", (("INBOX", 1), ("Old", 2)))
    current: list[FetchedMessage] = []
    for k in range(THREADS):
        first, reply = 2 * k + 1, 2 * k + 2
        subject = f"Re: report {k}" + (" invoice" if k % 3 == 0 else "")
        flags = () if k % 6 == 0 else ("\\Seen",)
        current.append(_fetched(first, first, f"report {k}", 10 * k, ("\\Seen",)))
        current.append(_fetched(reply, reply, subject, 10 * k + 1, flags, reply_to=first))
    stale = [_fetched(n + 1, 1000 + n, f"newest {n} invoice", 10_000 + n, ()) for n in range(3)]
    for folder_id, fetched in ((inbox_id, current), (old_id, stale)):
        write_fetched(pg_sessions, grant_id, folder_id, fetched)
    return grant_id


def _pages(conn: Connection, grant_id: str, query: str, limit: int, thread_set: bool) -> list[str]:
    """Every page of the thread list of ``query``, ``limit`` threads a page: the threads'
    subjects in order."""
    flt = MessageFilter(search=store.condition(criteria.parse(query), None, grant_id=grant_id))
    out: list[str] = []
    after = None
    for _ in range(THREADS + 5):  # bounded: one thread a page at least
        rows = conn.execute(
            list_threads_query(ThreadCriteria(grant_id, flt, limit, after), thread_set=thread_set)
        ).all()
        out.extend(row.subject for row in rows)
        if len(rows) < limit:
            return out
        after = Cursor(rows[-1].latest_message_at, str(rows[-1].id))
    raise AssertionError("the pages never ended")


def test_a_thread_search_lists_the_same_threads_with_the_set_or_without(
    pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    grant_id = _store(pg_sessions)
    invoices = [f"report {k}" for k in reversed(range(0, THREADS, 3))]
    unseen_invoices = [f"report {k}" for k in reversed(range(0, THREADS, 6))]
    with pg_sessions.begin() as db:
        conn = db.connection()
        for query, want in (
            ("SUBJECT invoice", invoices),
            ("SUBJECT invoice UNSEEN", unseen_invoices),
            ("OR SUBJECT invoice SUBJECT nowhere", invoices),
            (
                'SUBJECT "report 1"',
                [f"report {k}" for k in (19, 18, 17, 16, 15, 14, 13, 12)]
                + ["report 11", "report 10", "report 1"],
            ),
            # no text: the set is the threads of the messages the flag or date admits (unread,
            # received since), the newest of them in 'Old', whose copies are stale
            ("UNSEEN", unseen_invoices),
            ("NOT SEEN", unseen_invoices),
            ("SINCE 2-Nov-2026 UNSEEN", unseen_invoices),
            ("UNSEEN FLAGGED", []),
            ("SINCE 3-Nov-2026 UNSEEN", []),
        ):
            for limit in (3, 50):
                assert _pages(conn, grant_id, query, limit, thread_set=False) == want, query
                assert _pages(conn, grant_id, query, limit, thread_set=True) == want, query

        # as the API lists them: estimated, then walked with the set (bounds that admit it). A
        # flag's search is estimated by the messages it admits (the unread ones): the stale
        # copies' threads in its set are probed and left out
        monkeypatch.setattr(thread_queries, "THREAD_SET_MATCHES", (0, 1000))
        for query, want in (("SUBJECT invoice", invoices), ("UNSEEN", unseen_invoices)):
            flt = MessageFilter(
                search=store.condition(criteria.parse(query), None, grant_id=grant_id)
            )
            estimate = thread_queries.matches_estimate(conn, grant_id, flt)
            assert estimate is not None and thread_queries.walks_with_set(flt, estimate), query
            page = list_threads(conn, ThreadCriteria(grant_id, flt))
            assert [t.subject for t in page] == want, query
            assert all(len(t.messages) == 2 for t in page), query


def test_a_search_texts_estimate_is_planned_once_for_its_pages(
    pg_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the row estimate that chooses how a thread search walks is planned by one EXPLAIN, and
    # a client walking the search's pages asks the same search each time: the same statement's
    # estimate is reused for a while, another search's (or grant's) planned afresh
    grant_id = _store(pg_sessions)
    planned: list[str] = []

    def record(*args: object) -> None:
        if str(args[2]).startswith("EXPLAIN"):
            planned.append(str(args[2]))

    def estimate(query: str) -> float | None:
        flt = MessageFilter(search=store.condition(criteria.parse(query), None, grant_id=grant_id))
        return thread_queries.matches_estimate(conn, grant_id, flt)

    with pg_sessions.begin() as db:
        conn = db.connection()
        event.listen(conn.engine, "before_cursor_execute", record)
        try:
            first = estimate("SUBJECT invoice")
            assert first is not None and estimate("SUBJECT invoice") == first
            assert len(planned) == 1
            assert estimate("SUBJECT report") is not None
            assert len(planned) == 2
            monkeypatch.setattr(thread_queries, "ESTIMATE_REUSE_S", -1.0)  # every estimate stale
            assert estimate("SUBJECT invoice") == first
            assert len(planned) == 3
        finally:
            event.remove(conn.engine, "before_cursor_execute", record)
