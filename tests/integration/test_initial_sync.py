"""The initial sync: the retention window of every folder, normalized into Postgres, from real
servers. What the sync makes of the messages it fetched (threads, identities, attachments) is
tests/unit/sync/test_what_is_stored.py; one message in two folders is
tests/unit/sync/test_moves.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.dev.mailgen import GeneratedMessage
from pipeline.dev.seed import seed_maildir
from pipeline.imap import ImapSession
from pipeline.limits import RateLimited
from pipeline.models import Folder, Grant, Message, Placement, SyncFailure, Thread
from pipeline.sync.run import sync_folder, sync_grant_inline
from tests.support.grants import connect, open_with_folders, sessions_for
from tests.support.mail import append, create_folder, flags_of, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services

NOW = datetime.now(UTC)


def subjects(settings: Settings, grant_id: str) -> list[str]:
    with session_scope(settings.require_database_url()) as db:
        return sorted(db.scalars(select(Message.subject).where(Message.grant_id == grant_id)))


def test_only_the_retention_window_is_synced(settings: Settings, server_user: MailUser) -> None:
    for days in (1, 30, 89, 91, 200):
        append(
            server_user.server,
            server_user.name,
            server_user.password,
            make_message(f"{days} days old", date=NOW - timedelta(days=days)),
            when=NOW - timedelta(days=days),
        )
    grant_id = connect(settings, server_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert subjects(settings, grant_id) == ["1 days old", "30 days old", "89 days old"]
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        assert grant.sync_state == "synced"
        assert grant.initial_sync_completed_at is not None


def test_syncing_never_marks_mail_read(settings: Settings, server_user: MailUser) -> None:
    server = server_user.server
    append(server, server_user.name, server_user.password, make_message("unread one"))
    append(server, server_user.name, server_user.password, make_message("read one"), flags="\\Seen")
    before = flags_of(server, server_user.name, server_user.password)
    grant_id = connect(settings, server_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert flags_of(server, server_user.name, server_user.password) == before
    with session_scope(settings.require_database_url()) as db:
        unread = dict(db.execute(select(Message.subject, Message.unread)).all())
    assert unread == {"unread one": True, "read one": False}


def test_running_the_sync_again_stores_nothing_twice(
    settings: Settings, server_user: MailUser
) -> None:
    for i in range(45):
        append(server_user.server, server_user.name, server_user.password, make_message(f"m{i}"))
    grant_id = connect(settings, server_user)
    sessions = sessions_for(settings)
    sync_grant_inline(sessions, settings, grant_id)

    def counts() -> tuple[int, int, int]:
        with session_scope(settings.require_database_url()) as db:
            return (
                int(db.scalar(select(func.count()).select_from(Message)) or 0),
                int(db.scalar(select(func.count()).select_from(Placement)) or 0),
                int(db.scalar(select(func.count()).select_from(Thread)) or 0),
            )

    first = counts()
    assert first == (45, 45, 45)
    sync_grant_inline(sessions, settings, grant_id)
    # force a full re-plan, as after a crash: the checkpoint skips everything already stored
    with session_scope(settings.require_database_url()) as db:
        for folder in db.scalars(select(Folder)):
            folder.state = "syncing"
    sync_grant_inline(sessions, settings, grant_id)
    assert counts() == first


def test_folders_with_non_ascii_names_and_roles(settings: Settings, server_user: MailUser) -> None:
    server, name, pw = server_user.server, server_user.name, server_user.password
    sep = server_user.separator
    # "Entwürfe" and "Reçus<sep>2026" in modified UTF-7, as a client would create them; on
    # Courier below INBOX ("INBOX.Entwürfe"), where only the name tells the role
    drafts, parent = server_user.folder("Entw&APw-rfe"), server_user.folder("Re&AOc-us")
    child = f"{parent}{sep}2026"
    for folder in (drafts, parent, child):
        create_folder(server, name, pw, folder)
    append(server, name, pw, make_message("draft"), folder=drafts)
    append(server, name, pw, make_message("kept"), folder=child)
    grant_id = connect(settings, server_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    shown = {
        n: server_user.folder(n) for n in ("Entwürfe", "Reçus", f"Reçus{sep}2026")
    }  # decoded names
    with session_scope(settings.require_database_url()) as db:
        folders = {f.name: f for f in db.scalars(select(Folder).where(Folder.grant_id == grant_id))}
        assert {"INBOX", *shown.values()} <= set(folders), sorted(folders)
        assert folders["INBOX"].role == "inbox"
        assert folders[shown["Entwürfe"]].role == "drafts"
        assert all(f.state == "synced" for f in folders.values())
        placed = dict(
            db.execute(
                select(Folder.name, Message.subject)
                .join(Placement, Placement.folder_id == Folder.id)
                .join(Message, Message.id == Placement.message_id)
            ).all()
        )
    assert placed == {shown["Entwürfe"]: "draft", shown[f"Reçus{sep}2026"]: "kept"}


def only_the_failure_of_uid_2(settings: Settings, grant_id: str) -> str:
    """Messages "before" and "after" are stored, UID 2 is the one failure, the Inbox is synced;
    returns the failure's text."""
    assert sorted(subjects(settings, grant_id)) == ["after", "before"]
    with session_scope(settings.require_database_url()) as db:
        (failure,) = db.scalars(select(SyncFailure)).all()
        assert failure.uid == 2
        inbox = db.scalars(select(Folder).where(Folder.raw_name == "INBOX")).one()
        assert inbox.state == "synced"
        return failure.error


def test_a_message_the_database_refuses_costs_only_that_message(
    settings: Settings, mail_user: MailUser
) -> None:
    # Whatever Postgres may refuse one day (here: a constraint the operator added), the batch
    # is stored message by message and the refused one is recorded, never retried forever.
    with session_scope(settings.require_database_url()) as db:
        db.execute(text("ALTER TABLE messages ADD CONSTRAINT t_refuse CHECK (subject <> 'bad')"))
    server, user, password = mail_user.server, mail_user.name, mail_user.password
    for subject in ("before", "bad", "after"):
        append(server, user, password, make_message(subject))
    grant_id = connect(settings, mail_user)

    sync_grant_inline(sessions_for(settings), settings, grant_id)

    error = only_the_failure_of_uid_2(settings, grant_id)
    assert error.startswith("The message could not be stored:") and "t_refuse" in error
    # the next run neither tries it again nor stores anything twice
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    with session_scope(settings.require_database_url()) as db:
        assert db.scalar(select(func.count()).select_from(SyncFailure)) == 1
        assert db.scalar(select(func.count()).select_from(Message)) == 2


def three_messages_the_second_unreadable(mail_user: MailUser) -> None:
    """Mail "before", "unreadable", "after" in the Inbox; Dovecot cannot read the second's file
    (and answers its FETCH with "* BYE Internal error")."""
    server, user, password = mail_user.server, mail_user.name, mail_user.password
    for subject in ("before", "unreadable", "after"):
        append(server, user, password, make_message(subject))
    (victim,) = [
        f
        for f in server.maildir(user).rglob("*")
        if f.is_file() and b"Subject: unreadable" in f.read_bytes()
    ]
    victim.chmod(0)


def test_a_message_the_server_cannot_read_costs_only_that_message(
    settings: Settings, mail_user: MailUser
) -> None:
    # Dovecot answers a FETCH of a message file it cannot read with "* BYE Internal error":
    # the batch is fetched again one by one on new sessions and the unreadable one recorded.
    three_messages_the_second_unreadable(mail_user)
    grant_id = connect(settings, mail_user)

    sync_grant_inline(sessions_for(settings), settings, grant_id)

    error = only_the_failure_of_uid_2(settings, grant_id)
    assert error.startswith("The server could not return the message:")
    with session_scope(settings.require_database_url()) as db:  # fetched again with MODSEQ
        assert [p.modseq is not None for p in db.scalars(select(Placement))] == [True, True]


def test_a_throttled_reopen_leaves_the_folder_state_alone(
    settings: Settings, mail_user: MailUser
) -> None:
    # The server breaks off a batch; the fresh session the refetch needs must wait for the login
    # budget (RateLimited): the task is rescheduled, which is no failure of the folder.
    three_messages_the_second_unreadable(mail_user)
    grant_id = connect(settings, mail_user)
    imap, inbox = open_with_folders(settings, grant_id)

    def throttled() -> ImapSession:
        raise RateLimited("login budget of the account", retry_after_s=7.0)

    with pytest.raises(RateLimited):
        sync_folder(sessions_for(settings), settings, imap, grant_id, inbox, reopen=throttled)
    imap.close()
    with session_scope(settings.require_database_url()) as db:
        folder = db.get(Folder, inbox)
        assert folder is not None
        assert folder.state != "failed", folder.state_detail


def test_a_large_folder_split_into_uid_ranges_is_synced_by_its_range_runs(
    settings: Settings, mail_user: MailUser
) -> None:
    # What the Celery tasks do with a big folder: a planning run returns UID ranges, each range
    # runs on its own (any order, any worker, twice is harmless), and the one that stores the
    # last planned message marks the folder synced.
    now = datetime.now(UTC).replace(microsecond=0)
    seed_maildir(
        mail_user.server.maildir(mail_user.name),
        (
            GeneratedMessage("INBOX", now - timedelta(minutes=i), (), make_message(f"r{i}"))
            for i in range(60)
        ),
        owner=mail_user.server.mail_user,
    )
    grant_id = connect(settings, mail_user)
    sessions = sessions_for(settings)
    imap, inbox = open_with_folders(settings, grant_id)
    try:
        plan = sync_folder(sessions, settings, imap, grant_id, inbox, range_messages=10)
        assert plan.stored == 0 and len(plan.ranges) == 6
        assert sorted(lo for lo, _ in plan.ranges)[0] == 1
        states = []
        for lo, hi in reversed(plan.ranges):  # order does not matter
            run = sync_folder(sessions, settings, imap, grant_id, inbox, uid_range=(lo, hi))
            assert run.stored == hi - lo + 1
            states.append(run.state)
        assert states[:-1] == ["syncing"] * 5 and states[-1] == "synced"
        again = sync_folder(sessions, settings, imap, grant_id, inbox, uid_range=plan.ranges[0])
        assert again.stored == 0
    finally:
        imap.close()
    assert sorted(subjects(settings, grant_id)) == sorted(f"r{i}" for i in range(60))
    with session_scope(settings.require_database_url()) as db:
        folder = db.get(Folder, inbox)
        assert folder is not None and folder.state == "synced"
