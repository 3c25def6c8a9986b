"""``search_query_native`` answered from the store (:func:`pipeline.search.store.condition`):
each IMAP SEARCH key the store answers selects exactly the messages a server's ``UID SEARCH`` of
each folder would find, alone and combined, on both ways a page applies it (the whole condition
on the message, or the search row joined and walked by date).

A message matches when one of its copies does (flags and UIDs are per copy; a copy of an older
UIDVALIDITY, kept while a folder is reindexed, is not current and never matches); ``BEFORE``/
``ON``/``SINCE`` compare the INTERNALDATE's UTC day, ``SENT*`` the Date header's day. That the
store's answers equal Dovecot's is tests/integration/api/test_api_search.py.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.messages.filters import MessageFilter
from pipeline.messages.queries import list_messages
from pipeline.models import Message
from pipeline.search import criteria, store
from tests.support.store import write_fetched
from tests.support.stored_mail import Mailbox, mailbox

pytestmark = pytest.mark.services

DAY = 24 * 60  # minutes
CAROL = "Carol <carol@example.org>"


@pytest.fixture
def mail(pg_sessions: sessionmaker[Session], pg_connection: Connection) -> Mailbox:
    """Six messages over three folders; "Both" has a seen copy in INBOX and an unseen one in the
    Archive; "Stale" only a copy of the Archive's previous UIDVALIDITY. :data:`T` is
    2 Nov 2026, 12:00 UTC."""
    box = mailbox(pg_sessions, pg_connection)
    with box.batch():
        box.add("INBOX", "Invoice March", 120, sender=CAROL, flags=["\\Seen"])  # UID 2
        box.add("INBOX", "Lunch", 2 * DAY, sender="Dave <dave@example.org>",
                cc="Erin <erin@example.org>", flags=["\\Flagged"])  # fmt: skip
        box.add("INBOX", "invoice april", 10 * DAY, sender=CAROL,
                flags=["\\Seen", "\\Answered", "$Work"], attachment=True)  # fmt: skip
        box.add("INBOX", "Café crème", 180, sender="Zoë <zoe@example.org>")
        box.add("INBOX", "Both", 300, flags=["\\Seen"], message_id="<both@example.org>")
        box.add("Archive", "Both", 300, message_id="<both@example.org>")  # the same message
        box.add("Archive", "Archived invoice", 40 * DAY, sender="old@example.org", flags=["\\Seen"])
    stale = box.letter("Stale invoice", 60, flags=[])
    write_fetched(box.sessions, box.grant_id, box.folders["Archive"], [stale], uidvalidity=0)
    return box


EVERYTHING = {"Invoice March", "Lunch", "invoice april", "Café crème", "Both", "Archived invoice"}


def found(box: Mailbox, query: str, folders: list[str] | None = None) -> set[str]:
    """The subjects ``query`` selects, the same on both ways a page applies it."""
    node = criteria.parse(query)
    assert store.answerable(node), query
    folder_ids = None if folders is None else [box.folders[f] for f in folders]
    cond = store.condition(node, folder_ids, grant_id=box.grant_id)
    whole = box.conn.scalars(
        select(Message.subject).where(Message.grant_id == box.grant_id, cond(Message))
    )
    paged = list_messages(box.conn, box.grant_id, MessageFilter(search=cond), 100, None)
    subjects = set(whole)
    assert sorted(row.subject for row in paged) == sorted(subjects), query  # each once
    return subjects


def test_text_keys_match_substrings_of_their_field_folded(mail: Mailbox) -> None:
    assert found(mail, "SUBJECT invoice") == {"Invoice March", "invoice april", "Archived invoice"}
    assert found(mail, "SUBJECT CAFE") == {"Café crème"}  # Dovecot's folding
    assert found(mail, "FROM carol") == {"Invoice March", "invoice april"}
    assert found(mail, "FROM zoe") == {"Café crème"}
    assert found(mail, "FROM Erin") == set()  # Cc, not From
    assert found(mail, "CC erin@example") == {"Lunch"}
    assert found(mail, 'TO "bob@example.org"') == EVERYTHING
    assert found(mail, "SUBJECT stale") == set()  # no current copy


def test_keys_combine_with_and_or_and_not(mail: Mailbox) -> None:
    assert found(mail, "FROM carol SUBJECT april") == {"invoice april"}
    assert found(mail, "OR FROM dave FROM zoe") == {"Lunch", "Café crème"}
    assert found(mail, "NOT FROM carol") == EVERYTHING - {"Invoice March", "invoice april"}
    assert found(mail, "SUBJECT invoice NOT SEEN") == set()
    assert found(mail, "OR SUBJECT lunch (FROM carol ANSWERED)") == {"Lunch", "invoice april"}
    assert found(mail, "ALL") == EVERYTHING
    assert found(mail, "NOT ALL") == set()


def test_flags_match_when_one_copy_has_them(mail: Mailbox) -> None:
    assert found(mail, "UNSEEN") == {"Lunch", "Café crème", "Both"}  # Both: its Archive copy
    assert found(mail, "UNSEEN", ["INBOX"]) == {"Lunch", "Café crème"}
    assert found(mail, "SEEN") == {"Invoice March", "invoice april", "Both", "Archived invoice"}
    assert found(mail, "NOT SEEN") == found(mail, "UNSEEN")
    assert found(mail, "FLAGGED") == {"Lunch"}
    assert found(mail, "UNFLAGGED", ["Archive"]) == {"Both", "Archived invoice"}
    assert found(mail, "ANSWERED") == {"invoice april"}
    assert found(mail, "KEYWORD $work") == {"invoice april"}  # keywords ignore case
    assert found(mail, "UNKEYWORD $Work", ["INBOX"]) == EVERYTHING - {
        "invoice april",
        "Archived invoice",
    }


def test_dates_compare_whole_utc_days(mail: Mailbox) -> None:
    # T is 2 Nov 2026 12:00 UTC: Lunch 31 Oct, invoice april 23 Oct, Archived invoice 23 Sep
    today = {"Invoice March", "Café crème", "Both"}
    assert found(mail, "SINCE 2-Nov-2026") == today
    assert found(mail, "ON 2-Nov-2026") == today
    assert found(mail, "BEFORE 2-Nov-2026") == {"Lunch", "invoice april", "Archived invoice"}
    assert found(mail, "ON 31-Oct-2026") == {"Lunch"}
    assert found(mail, "SINCE 23-Oct-2026 BEFORE 1-Nov-2026") == {"Lunch", "invoice april"}
    assert found(mail, "SENTON 31-Oct-2026") == {"Lunch"}
    assert found(mail, "SENTBEFORE 24-Oct-2026") == {"invoice april", "Archived invoice"}
    assert found(mail, "SENTSINCE 3-Nov-2026") == set()


def test_sizes_are_strict_and_uids_are_each_folders(mail: Mailbox) -> None:
    sizes = dict(
        mail.conn.execute(
            select(Message.subject, Message.size).where(Message.grant_id == mail.grant_id)
        ).all()
    )
    largest = max(sizes, key=lambda s: sizes[s])
    assert largest == "invoice april"  # the one with an attachment
    assert found(mail, f"LARGER {sizes[largest] - 1}") == {largest}
    assert found(mail, f"LARGER {sizes[largest]}") == set()
    smallest = min(sizes.values())
    assert found(mail, f"SMALLER {smallest + 1}") == {s for s, n in sizes.items() if n == smallest}
    # UIDs: INBOX holds 2..6, the Archive 7 and 8 (and the stale copy at 9)
    assert found(mail, "UID 2:3", ["INBOX"]) == {"Invoice March", "Lunch"}
    assert found(mail, "UID 7", ["Archive"]) == {"Both"}
    assert found(mail, "UID 9", ["Archive"]) == set()  # only the stale copy has it
    assert found(mail, "UID 7:8") == {"Both", "Archived invoice"}


def test_keys_the_store_cannot_answer_go_to_the_server(mail: Mailbox) -> None:
    for query in ("BODY invoice", "TEXT lunch", "invoice", 'HEADER X-Mailer "x"', "UID 1:*"):
        assert not store.answerable(criteria.parse(query)), query
