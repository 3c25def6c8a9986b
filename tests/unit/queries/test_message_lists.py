"""The message list of ``GET /messages`` (:func:`pipeline.messages.queries.list_messages`) on
the real store: what each filter selects, alone and combined, and pages that walk without loss
or repeat while mail arrives and goes.

Filters combine with AND across parameters and OR within one list parameter (``in``,
``any_email``, ``from``...), as Nylas v3 does; ``received_before``/``after`` are strict bounds.
The HTTP side (parameter parsing, folder names, 400s) is tests/integration/api.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, delete
from sqlalchemy.orm import Session, sessionmaker

from pipeline.messages.filters import MessageFilter
from pipeline.messages.queries import list_message_objects, list_messages
from pipeline.models import Message
from pipeline.pages import Cursor
from pipeline.search import criteria, store
from tests.support.stored_mail import Mailbox, T, mailbox

pytestmark = pytest.mark.services


@pytest.fixture
def mail(pg_sessions: sessionmaker[Session], pg_connection: Connection) -> Mailbox:
    """Six messages in three folders with different flags, people and attachments."""
    box = mailbox(pg_sessions, pg_connection)
    with box.batch():
        box.add(
            "INBOX",
            "Quarterly report",
            60,
            sender="Carol <carol@example.org>",
            flags=["\\Seen"],
            attachment=True,
            message_id="<q1@example.org>",
        )
        box.add(
            "INBOX",
            "Lunch?",
            120,
            sender="Dave <DAVE@Example.org>",
            cc="Erin <erin@example.org>",
            flags=["\\Flagged"],
        )
        box.add(
            "INBOX",
            "Re: Quarterly report",
            30,
            sender="Bob <bob@example.org>",
            to="Carol <carol@example.org>",
            flags=["\\Seen"],
            in_reply_to="<q1@example.org>",
        )
        box.add("INBOX", "100% off_sale", 72 * 60, sender="spam@example.org")
        box.add("Archive", "archived", 300, sender="old@example.org", bcc="Dan <dan@example.org>")
        box.add("Drafts", "draft", 10, sender="Bob <bob@example.org>", to="zed@example.org",
                flags=["\\Seen", "\\Draft"])  # fmt: skip
    box.set_metadata("Lunch?", {"key1": "team", "note": "x"})
    return box


def subjects(box: Mailbox, flt: MessageFilter, **kwargs: Any) -> set[str]:
    rows = list_messages(box.conn, box.grant_id, flt, 100, None, **kwargs)
    return {row.subject for row in rows}


INBOX_ONLY = {"Quarterly report", "Lunch?", "Re: Quarterly report", "100% off_sale"}
EVERYTHING = INBOX_ONLY | {"archived", "draft"}


def test_each_filter_selects_exactly_its_messages(mail: Mailbox) -> None:
    inbox, archive = mail.folders["INBOX"], mail.folders["Archive"]
    cases: list[tuple[MessageFilter, set[str]]] = [
        (MessageFilter(), EVERYTHING),
        (MessageFilter(unread=True), {"Lunch?", "100% off_sale", "archived"}),
        (MessageFilter(unread=False), {"Quarterly report", "Re: Quarterly report", "draft"}),
        (MessageFilter(starred=True), {"Lunch?"}),
        (MessageFilter(starred=False), EVERYTHING - {"Lunch?"}),
        (MessageFilter(has_attachment=True), {"Quarterly report"}),
        (MessageFilter(has_attachment=False), EVERYTHING - {"Quarterly report"}),
        (MessageFilter(folder_ids=[archive]), {"archived"}),
        (MessageFilter(folder_ids=[inbox, archive]), INBOX_ONLY | {"archived"}),  # OR
        (MessageFilter(not_in_role="drafts"), EVERYTHING - {"draft"}),
        (MessageFilter(subject="QUARTERLY"), {"Quarterly report", "Re: Quarterly report"}),
        (MessageFilter(subject="_"), {"100% off_sale"}),  # LIKE characters are literal
        (MessageFilter(subject="%"), {"100% off_sale"}),
        (MessageFilter(from_=["dave@example.org"]), {"Lunch?"}),  # case-insensitive
        (MessageFilter(to=["carol@example.org"]), {"Re: Quarterly report"}),
        (MessageFilter(cc=["ERIN@example.org"]), {"Lunch?"}),
        (MessageFilter(bcc=["dan@example.org"]), {"archived"}),
        (MessageFilter(from_=["erin@example.org"]), set()),  # in Cc, not From
        (
            MessageFilter(any_email=["carol@example.org"]),
            {"Quarterly report", "Re: Quarterly report"},
        ),
        (MessageFilter(any_email=["erin@example.org", "dan@example.org"]), {"Lunch?", "archived"}),
        (MessageFilter(metadata_pair=("key1", "team")), {"Lunch?"}),
        (MessageFilter(metadata_pair=("key1", "other")), set()),
        (MessageFilter(thread_id="not-a-uuid"), set()),
        (MessageFilter(thread_id="00000000-0000-4000-8000-000000000000"), set()),
    ]
    for flt, expected in cases:
        assert subjects(mail, flt) == expected, flt


def test_filters_of_different_parameters_combine_with_and(mail: Mailbox) -> None:
    inbox = mail.folders["INBOX"]
    cases: list[tuple[MessageFilter, set[str]]] = [
        (MessageFilter(folder_ids=[inbox], unread=True), {"Lunch?", "100% off_sale"}),
        (MessageFilter(folder_ids=[inbox], unread=True, starred=False), {"100% off_sale"}),
        (MessageFilter(from_=["bob@example.org"], to=["carol@example.org"]),
         {"Re: Quarterly report"}),
        (MessageFilter(from_=["carol@example.org"], to=["carol@example.org"]), set()),
        (MessageFilter(any_email=["carol@example.org"], unread=False, has_attachment=True),
         {"Quarterly report"}),
        (MessageFilter(subject="quarterly", from_=["bob@example.org"]), {"Re: Quarterly report"}),
        (MessageFilter(not_in_role="drafts", from_=["bob@example.org"]), {"Re: Quarterly report"}),
        (MessageFilter(metadata_pair=("key1", "team"), starred=True, unread=True), {"Lunch?"}),
        (MessageFilter(metadata_pair=("key1", "team"), unread=False), set()),
    ]  # fmt: skip
    for flt, expected in cases:
        assert subjects(mail, flt) == expected, flt
    thread = mail.thread_of("Quarterly report")
    assert subjects(mail, MessageFilter(thread_id=thread)) == {
        "Quarterly report",
        "Re: Quarterly report",
    }
    assert subjects(mail, MessageFilter(thread_id=thread, unread=True)) == set()


def test_received_before_and_after_are_strict_bounds_of_a_window(mail: Mailbox) -> None:
    at_quarterly = T - timedelta(minutes=60)
    assert subjects(mail, MessageFilter(received_before=at_quarterly)) == {
        "Lunch?",
        "100% off_sale",
        "archived",
    }
    assert subjects(mail, MessageFilter(received_after=at_quarterly)) == {
        "Re: Quarterly report",
        "draft",
    }
    window = MessageFilter(
        received_after=T - timedelta(hours=6), received_before=T - timedelta(minutes=30)
    )
    assert subjects(mail, window) == {"Quarterly report", "Lunch?", "archived"}
    assert subjects(mail, replace(window, unread=True)) == {"Lunch?", "archived"}
    empty = MessageFilter(received_after=T, received_before=T - timedelta(days=1))
    assert subjects(mail, empty) == set()


def test_the_objects_list_and_the_rendered_list_select_alike(mail: Mailbox) -> None:
    """Drafts read the page as ORM objects, the API as rows or JSON: one selection."""
    inbox = mail.folders["INBOX"]
    for flt in (
        MessageFilter(),
        MessageFilter(folder_ids=[inbox], unread=True),
        MessageFilter(any_email=["carol@example.org"]),
        MessageFilter(received_before=T - timedelta(minutes=45), starred=False),
    ):
        rows = list_messages(mail.conn, mail.grant_id, flt, 100, None)
        as_json = list_messages(mail.conn, mail.grant_id, flt, 100, None, as_json=True)
        with mail.sessions() as db:
            objects = list_message_objects(db, mail.grant_id, flt, 100, None)
        ids = [str(r.id) for r in rows]
        assert ids == [str(r.id) for r in as_json] == [o.id for o in objects], flt
        assert len(ids) == len(subjects(mail, flt))


def test_an_other_grants_mail_is_never_listed(
    mail: Mailbox, pg_sessions: sessionmaker[Session], pg_connection: Connection
) -> None:
    other = mailbox(pg_sessions, pg_connection, user="other")
    other.add("INBOX", "not yours", 5, sender="carol@example.org", flags=["\\Flagged"])
    for flt in (
        MessageFilter(),
        MessageFilter(starred=True),
        MessageFilter(any_email=["carol@example.org"]),
        MessageFilter(folder_ids=[other.folders["INBOX"]]),
    ):
        assert "not yours" not in subjects(mail, flt), flt
    assert subjects(other, MessageFilter()) == {"not yours"}


# --- pages ------------------------------------------------------------------------------------


def walk(
    box: Mailbox, flt: MessageFilter, limit: int, between: Any = None, **kwargs: Any
) -> list[Any]:
    """Every page from the first, ``between`` called after the first page."""
    rows: list[Any] = []
    after: Cursor | None = None
    while True:
        page = list_messages(box.conn, box.grant_id, flt, limit, after, **kwargs)
        rows.extend(page)
        if len(page) < limit:
            return rows
        after = Cursor(at=page[-1].date, id=str(page[-1].id))
        if between is not None:
            between()
            between = None


PAGINGS: dict[str, tuple[Callable[[Mailbox], MessageFilter], dict[str, Any]]] = {
    "plain": (lambda box: MessageFilter(), {}),
    "json": (lambda box: MessageFilter(), {"as_json": True}),
    "filtered": (lambda box: MessageFilter(subject="bulk"), {}),  # a statement built afresh
    "in": (lambda box: MessageFilter(folder_ids=[box.folders["INBOX"]]), {}),
    "searched": (  # joins the search rows and walks their (date, message_id)
        lambda box: MessageFilter(search=store.condition(criteria.parse("SUBJECT bulk"), None)),
        {},
    ),
}


@pytest.mark.parametrize("paging", sorted(PAGINGS))
def test_pages_walk_without_loss_or_repeat_while_mail_arrives_and_goes(
    pg_sessions: sessionmaker[Session], pg_connection: Connection, paging: str
) -> None:
    box = mailbox(pg_sessions, pg_connection)
    # 23 messages a minute apart, six of them sharing one Date across a page boundary
    box.put("INBOX", *(box.letter(f"bulk {i:02d}", 7 if 5 <= i < 11 else i) for i in range(23)))
    flt_of, kwargs = PAGINGS[paging]
    flt = flt_of(box)
    ids = box.ids()

    def meanwhile() -> None:
        box.add("INBOX", "bulk newest", -5)  # newer than the first page: never listed after it
        box.add("INBOX", "bulk oldest", 60 * 24)  # older than every page: on the last one
        box.add("INBOX", "bulk between", 15.5)  # among the pages still to come
        with box.sessions.begin() as db:  # a message not yet listed goes
            db.execute(delete(Message).where(Message.id == ids["bulk 20"]))

    rows = walk(box, flt, 4, meanwhile, **kwargs)

    listed = _subjects_of(box, rows)
    assert len(listed) == len(set(listed)), "a message was on two pages"
    expected = {f"bulk {i:02d}" for i in range(23)} - {"bulk 20"}
    expected |= {"bulk oldest", "bulk between"}
    assert set(listed) == expected
    assert listed[-1] == "bulk oldest"
    keys = [(row.date, str(row.id)) for row in rows]
    assert keys == sorted(keys, reverse=True)


def _subjects_of(box: Mailbox, rows: list[Any]) -> list[str]:
    by_id = {v: k for k, v in box.ids().items()}
    return [by_id[str(row.id)] for row in rows]
