"""The thread list of ``GET /threads`` (:func:`pipeline.threads.queries.list_threads`) on the
real store: threads newest first by their latest message, the message filters applied to their
messages (a thread is listed when one of its messages matches), the window of the latest and the
earliest message, and pages that walk every thread once.

Threading itself (References, then subject) is the writer's (``pipeline.sync.store``); the
search's two ways of walking threads are tests/unit/queries/test_thread_search.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from pipeline.messages.filters import MessageFilter
from pipeline.pages import Cursor
from pipeline.threads.queries import ThreadCriteria, ThreadPage, get_thread, list_threads
from pipeline.threads.views import thread_view, thread_views
from tests.support.stored_mail import Mailbox, T, mailbox

pytestmark = pytest.mark.services

SEEN = ["\\Seen"]


@pytest.fixture
def mail(pg_sessions: sessionmaker[Session], pg_connection: Connection) -> Mailbox:
    """Three threads: Plans (started 5 h ago, answered 5 min ago), Budget (one unread message
    from Carol, 1 h ago) and Trip (2 h ago, answered 90 min ago in the Archive)."""
    box = mailbox(pg_sessions, pg_connection)
    with box.batch():
        box.add("INBOX", "Plans", 300, flags=SEEN, message_id="<plans@example.org>")
        box.add("INBOX", "Re: Plans", 5, flags=SEEN, in_reply_to="<plans@example.org>")
        box.add("INBOX", "Budget", 60, sender="Carol <carol@example.org>")
        box.add("INBOX", "Trip", 120, flags=SEEN, message_id="<trip@example.org>")
        box.add("Archive", "Re: Trip", 90, flags=SEEN, in_reply_to="<trip@example.org>")
    return box


def threads(box: Mailbox, flt: MessageFilter | None = None, **window: datetime) -> list[str]:
    page = list_threads(box.conn, ThreadCriteria(box.grant_id, flt or MessageFilter(), **window))
    return [t.subject for t in page]


def test_threads_are_listed_newest_first_by_their_latest_message(mail: Mailbox) -> None:
    assert threads(mail) == ["Plans", "Budget", "Trip"]

    mail.add("INBOX", "Re: Trip", 1, flags=SEEN, in_reply_to="<trip@example.org>")  # answered

    assert threads(mail) == ["Trip", "Plans", "Budget"]
    page = list_threads(mail.conn, ThreadCriteria(mail.grant_id))
    trip = page[0]
    assert trip.latest_message_at == T - timedelta(minutes=1)
    assert [m.subject for m in trip.messages] == ["Trip", "Re: Trip", "Re: Trip"]  # oldest first
    dates = [m.date for m in trip.messages]
    assert dates == sorted(dates)


def test_a_thread_is_listed_when_one_of_its_messages_matches(mail: Mailbox) -> None:
    assert threads(mail, MessageFilter(unread=True)) == ["Budget"]
    assert threads(mail, MessageFilter(folder_ids=[mail.folders["Archive"]])) == ["Trip"]
    assert threads(mail, MessageFilter(any_email=["carol@example.org"])) == ["Budget"]
    assert threads(mail, MessageFilter(subject="re:")) == ["Plans", "Trip"]
    assert threads(mail, MessageFilter(subject="re:", unread=True)) == []
    # the whole thread comes with it, not only the matching message
    archive = MessageFilter(folder_ids=[mail.folders["Archive"]])
    (trip,) = list_threads(mail.conn, ThreadCriteria(mail.grant_id, archive))
    assert [m.subject for m in trip.messages] == ["Trip", "Re: Trip"]


def test_the_latest_and_earliest_message_windows(mail: Mailbox) -> None:
    assert threads(mail, latest_before=T - timedelta(minutes=30)) == ["Budget", "Trip"]
    assert threads(mail, latest_after=T - timedelta(minutes=90)) == ["Plans", "Budget"]  # strict
    # no message before it: Plans started 5 h ago, Trip 2 h ago
    assert threads(mail, earliest_from=T - timedelta(minutes=150)) == ["Budget", "Trip"]
    assert threads(mail, earliest_from=T - timedelta(minutes=120)) == ["Budget", "Trip"]
    assert threads(mail, earliest_from=T - timedelta(minutes=119)) == ["Budget"]
    window = {"latest_after": T - timedelta(hours=3), "latest_before": T - timedelta(minutes=61)}
    assert threads(mail, **window) == ["Trip"]


def test_the_rendered_page_lists_the_same_threads(mail: Mailbox) -> None:
    for flt in (MessageFilter(), MessageFilter(unread=False), MessageFilter(subject="re:")):
        plain = list_threads(mail.conn, ThreadCriteria(mail.grant_id, flt))
        rendered = list_threads(mail.conn, ThreadCriteria(mail.grant_id, flt), as_json=True)
        assert [t.id for t in rendered] == [t.id for t in plain], flt
        assert all(t.json is not None and t.id in t.json for t in rendered)


@pytest.mark.parametrize("as_json", [False, True])
def test_thread_pages_walk_every_thread_once_while_threads_move_up(
    pg_sessions: sessionmaker[Session], pg_connection: Connection, as_json: bool
) -> None:
    box = mailbox(pg_sessions, pg_connection)
    box.put(
        "INBOX",
        *(box.letter(f"topic {k}", 10 * k, message_id=f"<t{k}@example.org>") for k in range(9)),
    )
    seen: list[ThreadPage] = []
    after: Cursor | None = None
    while True:
        page = list_threads(
            box.conn, ThreadCriteria(box.grant_id, limit=2, after=after), as_json=as_json
        )
        seen.extend(page)
        if len(page) < 2:
            break
        after = Cursor(page[-1].latest_message_at, page[-1].id)
        if len(seen) == 4:  # an answer moves a thread not yet listed to the top
            box.add("INBOX", "Re: topic 7", -1, in_reply_to="<t7@example.org>")
    everything = list_threads(box.conn, ThreadCriteria(box.grant_id))
    subject_of = {t.id: t.subject for t in everything}  # a rendered page has it in its JSON
    subjects = [subject_of[t.id] for t in seen]
    assert everything[0].subject == "topic 7"
    assert subjects == [f"topic {k}" for k in range(9) if k != 7]  # moved above the pages read
    keys = [(t.latest_message_at, t.id) for t in seen]
    assert keys == sorted(keys, reverse=True)


def _unix(minutes_ago: float) -> int:
    return int((T - timedelta(minutes=minutes_ago)).timestamp())


def test_received_and_sent_dates_tell_the_accounts_messages_from_the_others(
    pg_sessions: sessionmaker[Session], pg_connection: Connection
) -> None:
    # Nylas: latest_message_received_date is the most recent message received, and
    # latest_message_sent_date the most recent the account sent (here: held in its Sent
    # folder); a thread with none of one kind has no such key (the SDKs' optional fields).
    # The page rendered by Postgres, the page and the single thread built in Python agree.
    box = mailbox(
        pg_sessions,
        pg_connection,
        folders=(("INBOX", "inbox"), ("Sent", "sent"), ("Drafts", "drafts")),
    )
    me = "Reader <reader@example.org>"
    with box.batch():
        box.add("INBOX", "Plans", 300, message_id="<p1@example.org>")
        box.add(
            "Sent",
            "Re: Plans",
            120,
            sender=me,
            message_id="<p2@example.org>",
            in_reply_to="<p1@example.org>",
        )
        box.add(
            "INBOX", "Re: Plans", 60, message_id="<p3@example.org>", in_reply_to="<p2@example.org>"
        )
        box.add(
            "Sent",
            "Re: Plans",
            10,
            sender=me,
            message_id="<p4@example.org>",
            in_reply_to="<p3@example.org>",
        )
        # a draft is neither received nor sent
        box.add(
            "Drafts",
            "Re: Plans",
            5,
            sender=me,
            flags=["\\Draft"],
            message_id="<p5@example.org>",
            in_reply_to="<p4@example.org>",
        )
        box.add("INBOX", "Budget", 90)
        box.add("Sent", "Memo", 45, sender=me)
    # a message to oneself, in the Inbox and in Sent: the account sent it
    note = box.letter("Note", 30, sender=me, to=me, message_id="<note@example.org>")
    box.put("INBOX", note)
    box.put("Sent", note)

    plain = list_threads(box.conn, ThreadCriteria(box.grant_id))
    in_python = [
        orjson.loads(orjson.dumps(thread_view(t.id, t.grant_id, t.subject, t.messages)))
        for t in plain
    ]
    rendered = [
        orjson.loads(t.json or "null")
        for t in list_threads(box.conn, ThreadCriteria(box.grant_id), as_json=True)
    ]
    with box.sessions() as db:
        found = [get_thread(db, box.grant_id, t.id) for t in plain]
        single = orjson.loads(orjson.dumps(thread_views(db, [t for t in found if t])))
    assert rendered == in_python == single

    absent = "absent"

    def dates(subject: str) -> tuple[Any, Any]:
        (view,) = [v for v in rendered if v["id"] == box.thread_of(subject)]
        received = view.get("latest_message_received_date", absent)
        return received, view.get("latest_message_sent_date", absent)

    assert dates("Plans") == (_unix(60), _unix(10))
    assert dates("Budget") == (_unix(90), absent)
    assert dates("Memo") == (absent, _unix(45))
    assert dates("Note") == (absent, _unix(30))
