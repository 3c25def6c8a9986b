"""A ``search_query_native`` the server answers becomes a list filter through the store
(:mod:`pipeline.search.server`, on the rolled-back store): the folders searched are those named
or every synced folder of the grant, and the UIDs found map to stored messages only under the
UIDVALIDITY the server answered with, each message once."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, update
from sqlalchemy.orm import Session, sessionmaker

from pipeline.messages.filters import MessageFilter
from pipeline.messages.queries import list_messages
from pipeline.models import Folder
from pipeline.search import server, store
from tests.support.stored_mail import Mailbox, mailbox

pytestmark = pytest.mark.services


@pytest.fixture
def box(pg_sessions: sessionmaker[Session], pg_connection: Connection) -> Mailbox:
    """INBOX UIDs 2 ("one"), 3 ("both"); Archive UIDs 4 ("both"), 5 ("archived"); Drafts never
    synced (no UIDVALIDITY)."""
    box = mailbox(pg_sessions, pg_connection)
    with box.batch():
        box.add("INBOX", "one", 10)
        box.add("INBOX", "both", 20, message_id="<both@x>")
        box.add("Archive", "both", 20, message_id="<both@x>")
        box.add("Archive", "archived", 30)
    with pg_sessions.begin() as db:
        db.execute(
            update(Folder).where(Folder.id == box.folders["Drafts"]).values(uidvalidity=None)
        )
    return box


def test_the_folders_searched_are_those_named_or_every_synced_one(
    box: Mailbox, pg_sessions: sessionmaker[Session], pg_connection: Connection
) -> None:
    other = mailbox(pg_sessions, pg_connection, user="other")
    inbox, archive = box.folders["INBOX"], box.folders["Archive"]
    with pg_sessions() as db:
        every = server.folders_to_search(db, box.grant_id, None)
        named = server.folders_to_search(db, box.grant_id, [archive, other.folders["INBOX"]])
    assert [(f.id, f.raw_name) for f in every] == [(archive, "Archive"), (inbox, "INBOX")]
    assert [f.id for f in named] == [archive]  # never another grant's


def test_uids_found_map_to_messages_under_the_uidvalidity_answered(box: Mailbox) -> None:
    inbox, archive = box.folders["INBOX"], box.folders["Archive"]
    ids = box.ids()
    with box.sessions() as db:
        found = server.message_ids(db, {inbox: (1, [2, 3, 99]), archive: (1, [4])})
        renumbered = server.message_ids(db, {inbox: (7, [2, 3])})  # the server's new numbering
    assert found == sorted([ids["one"], ids["both"]])  # "both" once, UID 99 nothing
    assert renumbered == []

    flt = MessageFilter(search=store.in_ids(found), unread=True)
    rows = list_messages(box.conn, box.grant_id, flt, 50, None)
    assert sorted(row.subject for row in rows) == ["both", "one"]
    nothing = MessageFilter(search=store.in_ids([]))
    assert list_messages(box.conn, box.grant_id, nothing, 50, None) == []
