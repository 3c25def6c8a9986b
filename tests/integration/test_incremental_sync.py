"""After the initial sync: new mail, flag changes, expunges and moves, with their notifications."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from pipeline.config import Settings
from pipeline.crypto import SecretBox
from pipeline.db import session_scope
from pipeline.errors import ImapAuthError, ImapError
from pipeline.grants.service import expire_grant, open_grant_session
from pipeline.models import Folder, Grant, Message
from pipeline.sync.run import sync_folder, sync_grant_inline
from pipeline.webhooks.models import OutboxEvent
from tests.support.grants import connect, open_with_folders, sessions_for
from tests.support.mail import append, create_folder, imap_login, make_message, move
from tests.support.services import MailUser
from tests.support.settings import section_changed

pytestmark = pytest.mark.services


def events(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    with session_scope(settings.require_database_url()) as db:
        rows = db.execute(select(OutboxEvent.type, OutboxEvent.object).order_by(OutboxEvent.seq))
        return [(t, dict(o)) for t, o in rows]


def types(settings: Settings) -> list[str]:
    return [t for t, _ in events(settings)]


def synced_grant(settings: Settings, user: MailUser, subjects: list[str]) -> str:
    for subject in subjects:
        append(user.server, user.name, user.password, make_message(subject))
    create_folder(user.server, user.name, user.password, user.folder("Projects"))
    grant_id = connect(settings, user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    return grant_id


def server_command(user: MailUser, *commands: tuple[str, ...]) -> None:
    conn = imap_login(user.server, user.name, user.password)
    try:
        conn.select("INBOX")
        for command in commands:
            typ, data = conn.uid(*command)
            assert typ == "OK", data
    finally:
        conn.logout()


def test_the_historical_sync_notifies_nothing_but_the_grant(
    settings: Settings, server_user: MailUser
) -> None:
    synced_grant(settings, server_user, ["old 1", "old 2"])
    assert types(settings) == ["grant.created", "grant.imap_sync_completed"]


def test_new_mail_is_message_created(settings: Settings, server_user: MailUser) -> None:
    grant_id = synced_grant(settings, server_user, ["old"])
    append(server_user.server, server_user.name, server_user.password, make_message("brand new"))
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    created = [o for t, o in events(settings) if t == "message.created"]
    assert [o["subject"] for o in created] == ["brand new"]
    assert created[0]["grant_id"] == grant_id
    assert created[0]["unread"] is True
    assert len(created[0]["folders"]) == 1


def test_flag_change_is_message_updated(settings: Settings, server_user: MailUser) -> None:
    grant_id = synced_grant(settings, server_user, ["to read", "untouched"])
    server_command(server_user, ("STORE", "1", "+FLAGS", "(\\Seen \\Flagged)"))
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    updated = [o for t, o in events(settings) if t == "message.updated"]
    assert [(o["subject"], o["unread"], o["starred"]) for o in updated] == [
        ("to read", False, True)
    ]
    with session_scope(settings.require_database_url()) as db:
        flags = dict(db.execute(select(Message.subject, Message.unread)).all())
    assert flags == {"to read": False, "untouched": True}


def test_expunge_is_message_deleted_after_the_grace_period(
    settings: Settings, server_user: MailUser
) -> None:
    grant_id = synced_grant(settings, server_user, ["doomed", "kept"])
    with session_scope(settings.require_database_url()) as db:
        doomed_id = db.scalars(select(Message.id).where(Message.subject == "doomed")).one()
    server_command(server_user, ("STORE", "1", "+FLAGS", "(\\Deleted)"), ("EXPUNGE", "1"))
    sessions = sessions_for(settings)
    sync_grant_inline(sessions, settings, grant_id)
    # within the grace period it is only orphaned: a move could still re-place it
    assert "message.deleted" not in types(settings)
    sync_grant_inline(
        sessions,
        section_changed(settings, "sync", orphan_grace_s=0),
        grant_id,
    )
    deleted = [o for t, o in events(settings) if t == "message.deleted"]
    assert [o["id"] for o in deleted] == [doomed_id]
    with session_scope(settings.require_database_url()) as db:
        assert db.scalars(select(Message.subject)).all() == ["kept"]


def test_a_move_keeps_the_id_and_is_message_updated(
    settings: Settings, server_user: MailUser
) -> None:
    grant_id = synced_grant(settings, server_user, ["mover"])
    with session_scope(settings.require_database_url()) as db:
        (message_id,) = db.scalars(select(Message.id)).all()
        projects = server_user.folder("Projects")
        archive_id = db.scalars(select(Folder.id).where(Folder.raw_name == projects)).one()
    # MOVE where the server has it; COPY + EXPUNGE on Courier, as a client does there
    move(server_user.server, server_user.name, server_user.password, 1, projects)
    sync_grant_inline(
        sessions_for(settings),
        section_changed(settings, "sync", orphan_grace_s=0),
        grant_id,
    )
    assert "message.deleted" not in types(settings)
    assert "message.created" not in types(settings)
    updated = [o for t, o in events(settings) if t == "message.updated"]
    assert updated and all(o["id"] == message_id for o in updated)
    assert updated[-1]["folders"] == [archive_id]
    with session_scope(settings.require_database_url()) as db:
        assert db.scalars(select(Message.id)).all() == [message_id]


def test_mail_after_a_long_outage_is_synced_silently(
    settings: Settings, mail_user: MailUser
) -> None:
    grant_id = synced_grant(settings, mail_user, ["before"])
    with session_scope(settings.require_database_url()) as db:
        db.execute(update(Folder).values(last_synced_at=datetime.now(UTC) - timedelta(days=4)))
    append(mail_user.server, mail_user.name, mail_user.password, make_message("during outage"))
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert "message.created" not in types(settings)
    with session_scope(settings.require_database_url()) as db:
        assert sorted(db.scalars(select(Message.subject))) == ["before", "during outage"]


def test_a_password_changed_on_the_server_expires_the_grant_once(
    settings: Settings, mail_user: MailUser
) -> None:
    grant_id = synced_grant(settings, mail_user, ["before"])
    # Dovecot notices a changed passwd-file by its mtime, in whole seconds: change it in a later
    # second than its last read (the sync's login just now).
    time.sleep(1.1)
    mail_user.server.add_user(mail_user.name, "changed-elsewhere")
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        with pytest.raises(ImapAuthError):
            open_grant_session(db, settings, grant)
    with session_scope(settings.require_database_url()) as db:
        # what the listener does when its login is refused: no second notification
        assert expire_grant(db, grant_id, "refused again") is False
        grant = db.get(Grant, grant_id)
        assert grant is not None
        assert grant.grant_status == "invalid"
        assert "refused the login" in (grant.status_detail or "")
    expired = [o for t, o in events(settings) if t == "grant.expired"]
    assert [o["grant_id"] for o in expired] == [grant_id]
    assert expired[0]["code"] == 25009  # Nylas' grant.expired object
    assert expired[0]["provider"] == "imap"
    assert "changed-elsewhere" not in str(expired)


def test_a_login_refused_after_its_grant_got_new_credentials_leaves_the_grant_valid(
    settings: Settings, mail_user: MailUser
) -> None:
    """A poll batch reads its grants when it starts; a password changed (PATCH) while the
    batch runs makes a later poll log in with the old one. That refusal says nothing of the
    new password: the grant stays valid and no grant.expired goes out."""
    grant_id = synced_grant(settings, mail_user, ["before"])
    time.sleep(1.1)  # Dovecot re-reads its passwd-file by mtime, in whole seconds
    mail_user.server.add_user(mail_user.name, "new-password")
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)  # what the batch read: the old password
        assert grant is not None
        with session_scope(settings.require_database_url()) as patch:
            sealed = SecretBox(settings.encryption_key_list).seal_json(
                {"imap_password": "new-password"}
            )
            patch.execute(update(Grant).where(Grant.id == grant_id).values(secrets_sealed=sealed))
        with pytest.raises(ImapError) as raised:
            open_grant_session(db, settings, grant)
        assert not isinstance(raised.value, ImapAuthError)
        assert "changed" in str(raised.value)
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        assert grant.grant_status == "valid"
        open_grant_session(db, settings, grant).close()  # the new password works
    assert "grant.expired" not in types(settings)


def _state(settings: Settings) -> dict[str, tuple[bool, bool]]:
    """subject -> (starred, orphaned)"""
    with session_scope(settings.require_database_url()) as db:
        rows = db.execute(select(Message.subject, Message.starred, Message.orphaned_at))
        return {s: (starred, orphaned is not None) for s, starred, orphaned in rows}


@pytest.mark.parametrize("qresync", [True, False], ids=["qresync", "uid-diff"])
def test_changes_made_while_the_initial_sync_ran_reach_the_first_incremental_run(
    settings: Settings, mail_user: MailUser, qresync: bool
) -> None:
    # Mail already stored by an unfinished initial sync is flagged and expunged on the server;
    # once the initial sync is done, the next run must see both: with QRESYNC from the plan's
    # HIGHESTMODSEQ (CHANGEDSINCE ... VANISHED), without it by diffing UIDs.
    server, name, pw = mail_user.server, mail_user.name, mail_user.password
    for i in range(30):
        append(server, name, pw, make_message(f"m{i:02}"))
    grant_id = connect(settings, mail_user)
    sessions = sessions_for(settings)
    imap, inbox = open_with_folders(settings, grant_id)
    if not qresync:  # a server that does not offer it
        imap.capabilities = imap.capabilities - {"QRESYNC"}
    small = section_changed(settings, "sync", batch_size=10)
    try:
        first = sync_folder(sessions, small, imap, grant_id, inbox, budget_s=0)
        assert first.more and first.stored == 10  # m00..m09 stored, the rest not yet
        assert imap.qresync_enabled is qresync
        server_command(
            mail_user,
            ("STORE", "1", "+FLAGS", "(\\Flagged)"),  # m00
            ("STORE", "2", "+FLAGS", "(\\Deleted)"),  # m01
            ("EXPUNGE", "2"),
        )
        outcome = sync_folder(sessions, small, imap, grant_id, inbox)
        while outcome.more:
            outcome = sync_folder(sessions, small, imap, grant_id, inbox)
        assert outcome.state == "synced"
        assert _state(settings)["m00"] == (False, False)  # not seen yet
        sync_folder(sessions, small, imap, grant_id, inbox)  # the first incremental run
    finally:
        imap.close()
    state = _state(settings)
    assert state["m00"] == (True, False)
    assert state["m01"] == (False, True)
    assert len(state) == 30 and sum(orphaned for _, orphaned in state.values()) == 1


def test_a_vanished_list_too_long_to_trust_falls_back_to_the_uid_diff(
    settings: Settings, mail_user: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server may answer VANISHED with a superset (every UID it no longer has); past the
    # limit the sync diffs UIDs instead of expanding it.
    import pipeline.imap.client as client

    grant_id = synced_grant(settings, mail_user, ["doomed", "kept"])
    server_command(mail_user, ("STORE", "1", "+FLAGS", "(\\Deleted)"), ("EXPUNGE", "1"))
    monkeypatch.setattr(client, "VANISHED_LIMIT", 0)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert _state(settings) == {"doomed": (False, True), "kept": (False, False)}
