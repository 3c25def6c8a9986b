"""A folder whose UIDVALIDITY changes is reindexed consistently: ids kept, old view until done."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.grants.service import open_grant_session
from pipeline.maintenance.sweep import (
    IDLE_SAFETY_NET_S,
    UIDVALIDITY_STOP_AFTER,
    check_grant,
    poll_grant,
)
from pipeline.models import Folder, Grant, Message, Placement
from pipeline.sync.run import sync_folder, sync_grant_inline
from tests.support.courier import LocalCourier
from tests.support.grants import connect, sessions_for
from tests.support.mail import append, create_folder, imap_login, make_message, recreate_folder
from tests.support.services import MailUser

pytestmark = pytest.mark.services


def seed_and_sync(settings: Settings, user: MailUser, count: int) -> tuple[str, dict[str, str]]:
    for i in range(count):
        append(user.server, user.name, user.password, make_message(f"m{i}"))
    grant_id = connect(settings, user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    return grant_id, ids_by_subject(settings)


def ids_by_subject(settings: Settings) -> dict[str, str]:
    with session_scope(settings.require_database_url()) as db:
        return dict(db.execute(select(Message.subject, Message.id)).all())


def inbox(settings: Settings) -> Folder:
    with session_scope(settings.require_database_url()) as db:
        return db.scalars(select(Folder).where(Folder.role == "inbox")).one()


def test_new_uidvalidity_same_messages_keeps_every_id(
    settings: Settings, mail_user: MailUser
) -> None:
    grant_id, before = seed_and_sync(settings, mail_user, 12)
    old_validity = inbox(settings).uidvalidity
    mail_user.server.doveadm(
        "mailbox", "update", "-u", mail_user.name, "--uid-validity", "2000000", "INBOX"
    )
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    folder = inbox(settings)
    assert old_validity != 2000000
    assert folder.uidvalidity == 2000000
    assert folder.reindex_uidvalidity is None
    assert folder.state == "synced"
    assert ids_by_subject(settings) == before
    with session_scope(settings.require_database_url()) as db:
        validities = set(db.scalars(select(Placement.uidvalidity)))
    assert validities == {2000000}


def test_fresh_uids_after_the_index_is_lost(settings: Settings, mail_user: MailUser) -> None:
    grant_id, before = seed_and_sync(settings, mail_user, 8)
    old_validity = inbox(settings).uidvalidity
    maildir = mail_user.server.maildir(mail_user.name)
    for path in maildir.iterdir():
        if path.name == "dovecot-uidlist" or path.name.startswith("dovecot.index"):
            path.unlink()
    # a message removed meanwhile is really gone; the rest keep their ids
    conn = imap_login(mail_user.server, mail_user.name, mail_user.password)
    conn.select("INBOX")
    typ, data = conn.search(None, "SUBJECT", '"m3"')
    assert typ == "OK" and data[0]
    conn.store(data[0].decode(), "+FLAGS", "(\\Deleted)")
    conn.expunge()
    conn.logout()
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert inbox(settings).uidvalidity != old_validity
    after = ids_by_subject(settings)
    expected = {k: v for k, v in before.items() if k != "m3"}
    assert after == expected


def test_readers_keep_the_old_view_until_the_reindex_completes(
    settings: Settings, mail_user: MailUser
) -> None:
    grant_id, before = seed_and_sync(settings, mail_user, 30)
    old_validity = inbox(settings).uidvalidity
    mail_user.server.doveadm(
        "mailbox", "update", "-u", mail_user.name, "--uid-validity", "3000000", "INBOX"
    )
    sessions = sessions_for(settings)
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        imap = open_grant_session(db, settings, grant)
    folder_id = inbox(settings).id
    try:
        # one batch, then the budget is spent: the reindex is half done
        partial = sync_folder(sessions, settings, imap, grant_id, folder_id, budget_s=0)
        assert partial.more
        mid = inbox(settings)
        assert (mid.state, mid.uidvalidity, mid.reindex_uidvalidity) == (
            "reindexing",
            old_validity,
            3000000,
        )
        with session_scope(settings.require_database_url()) as db:
            current = db.scalars(
                select(Placement.uid).where(
                    Placement.folder_id == folder_id, Placement.uidvalidity == old_validity
                )
            ).all()
        assert len(current) == 30  # the old view is whole
        done = sync_folder(sessions, settings, imap, grant_id, folder_id)
        while done.more:
            done = sync_folder(sessions, settings, imap, grant_id, folder_id)
    finally:
        imap.close()
    assert done.reindexed and done.deleted_message_ids == []
    assert inbox(settings).uidvalidity == 3000000
    assert ids_by_subject(settings) == before


def test_a_folder_made_again_with_the_same_mail_keeps_every_id(
    settings: Settings, server_user: MailUser
) -> None:
    server, name, pw = server_user.server, server_user.name, server_user.password
    projects = server_user.folder("Projects")
    create_folder(server, name, pw, projects)
    for i in range(5):
        append(server, name, pw, make_message(f"p{i}"), folder=projects)
    grant_id = connect(settings, server_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    before = ids_by_subject(settings)
    assert sorted(before) == [f"p{i}" for i in range(5)]

    new_validity = recreate_folder(server, name, pw, projects)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    with session_scope(settings.require_database_url()) as db:
        folder = db.scalars(select(Folder).where(Folder.raw_name == projects)).one()
        validities = set(
            db.scalars(select(Placement.uidvalidity).where(Placement.folder_id == folder.id))
        )
    assert (folder.uidvalidity, folder.reindex_uidvalidity, folder.state) == (
        new_validity,
        None,
        "synced",
    )
    assert validities == {new_validity}
    assert ids_by_subject(settings) == before


def test_courier_losing_its_uid_db_keeps_every_id(
    settings: Settings, courier: LocalCourier
) -> None:
    user = MailUser(courier, f"u{uuid.uuid4().hex[:10]}", uuid.uuid4().hex)
    courier.add_user(user.name, user.password)
    grant_id, before = seed_and_sync(settings, user, 6)
    old_validity = inbox(settings).uidvalidity
    courier.lose_uid_db(user.name)  # as a restore from a backup without courierimapuiddb does
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    folder = inbox(settings)
    assert folder.uidvalidity != old_validity
    assert (folder.reindex_uidvalidity, folder.state) == (None, "synced")
    assert ids_by_subject(settings) == before


def test_courier_empty_folder_new_uidvalidity_every_session_costs_nothing(
    settings: Settings, courier: LocalCourier
) -> None:
    """Courier keeps no uid db for an empty folder: every session numbers an empty INBOX
    afresh. With nothing cached and nothing there, a new UIDVALIDITY has nothing to drop or
    reindex: it is recorded, not counted by the stop rule, and no folder.updated is sent
    (before, the grant was stopped after UIDVALIDITY_STOP_AFTER sessions)."""
    user = MailUser(courier, f"u{uuid.uuid4().hex[:10]}", uuid.uuid4().hex)
    courier.add_user(user.name, user.password)
    grant_id = connect(settings, user)
    sessions = sessions_for(settings)
    sync_grant_inline(sessions, settings, grant_id)
    folder_id = inbox(settings).id
    seen = {inbox(settings).uidvalidity}
    enqueued: list[str] = []
    # a sync, a sweep, a poll (Inbox looked at as when the listener is away), in turn, each on
    # a new session: every look counts for the stop rule, but not these
    for look in range(2 * UIDVALIDITY_STOP_AFTER):
        time.sleep(1.1)  # without a uid db, Courier's UIDVALIDITY is the session's second
        with session_scope(settings.require_database_url()) as db:
            grant = db.get(Grant, grant_id)
            assert grant is not None
            imap = open_grant_session(db, settings, grant)
        now = datetime.now(UTC) + timedelta(seconds=IDLE_SAFETY_NET_S)
        try:
            if look % 3 == 0:
                sync_folder(sessions, settings, imap, grant_id, folder_id)
            elif look % 3 == 1:
                check_grant(sessions, imap, grant_id, now=now, enqueue_sync=enqueued.append)
            else:
                poll_grant(sessions, imap, grant_id, now=now, enqueue_sync=enqueued.append)
        finally:
            imap.close()
        seen.add(inbox(settings).uidvalidity)
    assert enqueued == []  # nothing to sync either
    assert len(seen) > 2, "Courier kept the empty INBOX's UIDVALIDITY: the test proves nothing"
    folder = inbox(settings)
    assert (folder.state, folder.reindex_uidvalidity) == ("synced", None)
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None and grant.sync_state == "synced"
        changes, updated = db.execute(
            text(
                "SELECT uidvalidity_changes, (SELECT count(*) FROM webhook_outbox "
                "WHERE type = 'folder.updated') FROM folders WHERE id = :f"
            ),
            {"f": folder_id},
        ).one()
    assert (changes, updated) == (0, 0)
