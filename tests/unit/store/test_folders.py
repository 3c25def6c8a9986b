"""The folders repository (:mod:`pipeline.folders.repository`) on the rolled-back store: the
order the API lists folders in, finding a folder by id or name (one at a time and all at once,
alike), counts of the current UIDVALIDITY only, renaming a tree and deleting a folder."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.folders.repository import FolderRepository, resolve_folder_ids
from pipeline.models import Folder, Message
from tests.support.store import letter, write_fetched
from tests.support.stored_mail import Mailbox, T, mailbox

pytestmark = pytest.mark.services


def add_folder(
    box: Mailbox, raw_name: str, name: str | None = None, role: str | None = None
) -> str:
    with box.sessions.begin() as db:
        folder = Folder(
            grant_id=box.grant_id, raw_name=raw_name, name=name or raw_name, role=role,
            uidvalidity=1,
        )  # fmt: skip
        db.add(folder)
        db.flush()
        box.folders[folder.name] = folder.id
        return folder.id


@pytest.fixture
def box(pg_sessions: sessionmaker[Session], pg_connection: Connection) -> Mailbox:
    """INBOX, Archive and Drafts (``tests.support.stored_mail``), plus Sent, Zebra, a
    subfolder Work/Reports, a sibling Workshop and Entwürfe (modified UTF-7 on the server)."""
    box = mailbox(pg_sessions, pg_connection)
    add_folder(box, "Sent", role="sent")
    for raw in ("Zebra", "Work", "Work/Reports", "Workshop"):
        add_folder(box, raw)
    add_folder(box, "Entw&APw-rfe", "Entwürfe")
    return box


def test_folders_are_listed_inbox_first_then_system_folders_then_by_name(box: Mailbox) -> None:
    with box.sessions() as db:
        names = [f.name for f in FolderRepository(db).listed(box.grant_id)]
    assert names == [
        "INBOX",
        "Drafts",
        "Sent",
        "Archive",
        "Entwürfe",
        "Work",
        "Work/Reports",
        "Workshop",
        "Zebra",
    ]


def test_a_folder_is_found_by_id_name_or_server_name_alike_one_or_all(
    box: Mailbox, pg_sessions: sessionmaker[Session], pg_connection: Connection
) -> None:
    other = mailbox(pg_sessions, pg_connection, user="other")
    entwurfe = box.folders["Entwürfe"]
    cases = {
        box.folders["Archive"]: box.folders["Archive"],
        box.folders["Archive"].upper(): box.folders["Archive"],  # a UUID in any spelling
        "Archive": box.folders["Archive"],
        "Entwürfe": entwurfe,
        "Entw&APw-rfe": entwurfe,
        "archive": None,  # names are exact
        other.folders["INBOX"]: None,  # another grant's
        str(uuid.uuid4()): None,
        "Nope": None,
    }
    with box.sessions() as db:
        repo = FolderRepository(db)
        one_by_one = {}
        for value in cases:
            found = repo.find(box.grant_id, value)
            one_by_one[value] = None if found is None else found.id
    assert one_by_one == cases
    assert resolve_folder_ids(pg_connection, box.grant_id, list(cases)) == list(cases.values())


def test_counts_and_totals_are_of_the_current_uidvalidity(box: Mailbox) -> None:
    box.add("INBOX", "read", 10, flags=["\\Seen"])
    box.add("INBOX", "unread", 20)
    box.add("Archive", "unread", 20)  # the same message, a second copy
    stale = letter(99, "stale", T)
    write_fetched(box.sessions, box.grant_id, box.folders["INBOX"], [stale], uidvalidity=0)
    inbox, archive = box.folders["INBOX"], box.folders["Archive"]

    with box.sessions() as db:
        repo = FolderRepository(db)
        totals = repo.totals([inbox, archive, box.folders["Zebra"]])
        counts = repo.counts(box.grant_id)

    assert (totals[inbox].total, totals[inbox].unread) == (2, 1)
    assert (totals[archive].total, totals[archive].unread) == (1, 1)
    assert box.folders["Zebra"] not in totals
    assert (counts[inbox].stored, counts[archive].stored) == (2, 1)


def test_renaming_a_folder_renames_its_subfolders_and_not_its_namesakes(box: Mailbox) -> None:
    with box.sessions.begin() as db:
        renamed = FolderRepository(db).rename_tree(box.grant_id, "Work", "Büro", "/")
        assert sorted(f.raw_name for f in renamed) == ["Büro", "Büro/Reports"]
    with box.sessions() as db:
        names = sorted(db.scalars(select(Folder.raw_name).where(Folder.grant_id == box.grant_id)))
    assert "Workshop" in names and "Work" not in names and "Work/Reports" not in names


def test_deleting_a_folder_deletes_the_messages_it_alone_held(box: Mailbox) -> None:
    box.add("Archive", "only archived", 10)
    box.add("Archive", "also in inbox", 20, message_id="<both@example.org>")
    box.add("INBOX", "also in inbox", 20, message_id="<both@example.org>")
    with box.sessions.begin() as db:
        FolderRepository(db).delete(box.folders["Archive"])
    with box.sessions() as db:
        subjects = db.scalars(select(Message.subject).where(Message.grant_id == box.grant_id))
        assert list(subjects) == ["also in inbox"]
