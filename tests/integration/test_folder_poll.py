"""Folders no listener watches are polled with STATUS and synced when they changed."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import select

from beat_schedule import beat_schedule
from pipeline.config import BeatSettings, Settings
from pipeline.db import session_scope
from pipeline.grants.service import open_grant_session
from pipeline.listener.status import idle_watched_folders
from pipeline.maintenance.sweep import check_grant, poll_grant
from pipeline.models import Folder, Grant, Message
from pipeline.redis import lease_key, listener_status_key
from pipeline.sync.run import sync_grant_inline
from tests.support.courier import LocalCourier
from tests.support.grants import connect, sessions_for
from tests.support.mail import (
    append,
    create_folder,
    expunge_first,
    make_message,
    store_flags,
)
from tests.support.services import MailUser

pytestmark = pytest.mark.services


def poll(
    settings: Settings,
    grant_id: str,
    *,
    now: datetime | None = None,
    commands: list[str] | None = None,
    idle_watched: frozenset[str] = frozenset(),
) -> list[str]:
    """One poll of the grant on a session of its own; ``commands`` collects what it sent."""
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        imap = open_grant_session(db, settings, grant)
    enqueued: list[str] = []
    if commands is not None:
        send = imap.raw._command

        def counted(name: str, *args: object) -> object:
            commands.append(name)
            return send(name, *args)

        imap.raw._command = counted  # type: ignore[method-assign]
    try:
        changed = poll_grant(
            sessions_for(settings),
            imap,
            grant_id,
            now=now or datetime.now(UTC),
            enqueue_sync=enqueued.append,
            flag_refresh_s=settings.beat.flag_refresh_interval_s,
            flag_refresh_per_poll=settings.beat.flag_refresh_per_poll,
            idle_watched=idle_watched,
        )
    finally:
        if commands is not None:
            imap.raw._command = send  # type: ignore[method-assign]
        imap.close()
    assert changed == enqueued
    return changed


def folder_id(settings: Settings, raw_name: str) -> str:
    with session_scope(settings.require_database_url()) as db:
        return db.scalars(select(Folder.id).where(Folder.raw_name == raw_name)).one()


def message_flags(settings: Settings) -> list[tuple[str, bool, bool, bool]]:
    """(subject, unread, starred, orphaned) of every message but the Inbox's."""
    with session_scope(settings.require_database_url()) as db:
        rows = db.execute(
            select(Message.subject, Message.unread, Message.starred, Message.orphaned_at).where(
                Message.subject != "in the inbox"
            )
        ).all()
    return sorted((s, u, st, o is not None) for s, u, st, o in rows)


def synced_projects(settings: Settings, user: MailUser, *subjects: str) -> tuple[str, str]:
    """A grant whose polled folder "Projects" holds ``subjects``, synced; (grant, raw name)."""
    server, name, pw = user.server, user.name, user.password
    projects = user.folder("Projects")
    create_folder(server, name, pw, projects)
    for subject in subjects:
        append(server, name, pw, make_message(subject), folder=projects)
    # Courier keeps no uid db for an empty folder: each session would see a new UIDVALIDITY
    append(server, name, pw, make_message("in the inbox"), flags="\\Seen")
    grant_id = connect(settings, user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert poll(settings, grant_id) == []
    return grant_id, projects


def test_an_expunge_in_a_polled_folder_is_seen_by_the_next_poll(
    settings: Settings, server_user: MailUser
) -> None:
    # Courier has no CONDSTORE: STATUS gives no HIGHESTMODSEQ, but its MESSAGES drops
    grant_id, projects = synced_projects(settings, server_user, "first", "second")
    expunge_first(server_user.server, server_user.name, server_user.password, projects)
    assert poll(settings, grant_id) == [folder_id(settings, projects)]
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert [(s, o) for s, _u, _st, o in message_flags(settings)] == [
        ("first", True),  # orphaned: message.deleted after the grace
        ("second", False),
    ]
    assert poll(settings, grant_id) == []  # the sync stored what STATUS says now


def test_a_seen_change_in_a_polled_folder_is_seen_by_the_next_poll(
    settings: Settings, server_user: MailUser
) -> None:
    grant_id, projects = synced_projects(settings, server_user, "first")
    server, name, pw = server_user.server, server_user.name, server_user.password
    store_flags(server, name, pw, projects, "\\Seen")  # STATUS UNSEEN drops
    assert poll(settings, grant_id) == [folder_id(settings, projects)]
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert message_flags(settings) == [("first", False, False, False)]
    assert poll(settings, grant_id) == []
    store_flags(server, name, pw, projects, "\\Seen", add=False)
    assert poll(settings, grant_id) == [folder_id(settings, projects)]


def test_a_flagged_change_is_seen_within_the_refresh_interval(
    settings: Settings, server_user: MailUser
) -> None:
    grant_id, projects = synced_projects(settings, server_user, "first")
    server, name, pw = server_user.server, server_user.name, server_user.password
    store_flags(server, name, pw, projects, "\\Flagged")  # no STATUS item moves without CONDSTORE
    later = datetime.now(UTC) + timedelta(seconds=settings.beat.flag_refresh_interval_s + 1)
    assert poll(settings, grant_id, now=later) == [folder_id(settings, projects)]
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert message_flags(settings) == [("first", True, True, False)]


def test_the_flag_refresh_is_capped_per_poll(settings: Settings, server_user: MailUser) -> None:
    server, name, pw = server_user.server, server_user.name, server_user.password
    names = [server_user.folder(f"Box{i}") for i in range(3)]
    for raw_name in names:
        create_folder(server, name, pw, raw_name)
    append(server, name, pw, make_message("in the inbox"))  # see synced_projects
    grant_id = connect(settings, server_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    later = datetime.now(UTC) + timedelta(seconds=settings.beat.flag_refresh_interval_s + 1)
    refreshed = poll(settings, grant_id, now=later)
    if not isinstance(server, LocalCourier):  # HIGHESTMODSEQ tells every flag change
        assert refreshed == []
    else:
        assert len(refreshed) == settings.beat.flag_refresh_per_poll


def test_a_quiet_folder_costs_one_status_per_poll(
    settings: Settings, server_user: MailUser
) -> None:
    """One STATUS per polled folder, or one LIST-STATUS (RFC 5819) for all of them where the
    server has it (Dovecot, Cyrus); the same answers either way."""
    server, name, pw = server_user.server, server_user.name, server_user.password
    old_mail = server_user.folder("Old Mail")  # a name that needs quoting
    create_folder(server, name, pw, old_mail)
    append(server, name, pw, make_message("old"), folder=old_mail)
    grant_id, projects = synced_projects(settings, server_user, "first")
    with session_scope(settings.require_database_url()) as db:
        polled = db.scalars(
            select(Folder.raw_name)
            .where(Folder.role.is_distinct_from("inbox"))
            .where(Folder.role.is_distinct_from("sent"))
        ).all()
        grant = db.get(Grant, grant_id)
        assert grant is not None
        imap = open_grant_session(db, settings, grant)
    try:
        one_by_one = {raw: imap.status(raw) for raw in polled}
        assert imap.statuses(polled) == one_by_one
        list_status = imap.has("LIST-STATUS")
    finally:
        imap.close()
    assert {projects, old_mail} <= set(polled)
    assert list_status == (not isinstance(server, LocalCourier))
    for _ in range(3):
        commands: list[str] = []
        assert poll(settings, grant_id, commands=commands) == []
        assert commands == (["LIST"] if list_status else ["STATUS"] * len(polled)), commands


def test_new_mail_in_an_unwatched_folder_is_found(
    settings: Settings, server_user: MailUser
) -> None:
    server, name, pw = server_user.server, server_user.name, server_user.password
    projects_name = server_user.folder("Projects")
    create_folder(server, name, pw, projects_name)
    append(server, name, pw, make_message("first"), folder=projects_name)
    grant_id = connect(settings, server_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    with session_scope(settings.require_database_url()) as db:
        marks = dict(db.execute(select(Folder.raw_name, Folder.uidnext)).all())
    # Courier's SELECT carries no [UIDNEXT]: it is taken from STATUS, or every poll would
    # find every folder "changed" and sync it again
    assert None not in marks.values(), marks
    assert poll(settings, grant_id) == []  # nothing changed since the sync: STATUS only

    append(server, name, pw, make_message("second"), folder=projects_name)
    append(server, name, pw, make_message("inbox mail"))  # the listener's business, not the poll's
    with session_scope(settings.require_database_url()) as db:
        projects = db.scalars(select(Folder.id).where(Folder.raw_name == projects_name)).one()
    assert poll(settings, grant_id) == [projects]
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert poll(settings, grant_id) == []  # the incremental sync stored the new UIDNEXT too


def test_intervals_come_from_settings() -> None:
    schedule = beat_schedule(
        BeatSettings(
            uidvalidity_sweep_interval_s=120,
            poll_interval_s=30,
            purge_interval_s=900,
            reconcile_interval_s=600,
        )
    )
    assert schedule["folder-poll"]["schedule"] == 30.0
    assert schedule["uidvalidity-sweep"]["schedule"] == 120.0
    assert Settings().beat.poll_interval_s == 60.0  # the documented default


def test_a_lost_listener_event_is_repaired_by_the_poll(
    settings: Settings, mail_user: MailUser
) -> None:
    server, name, pw = mail_user.server, mail_user.name, mail_user.password
    grant_id = connect(settings, mail_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    append(server, name, pw, make_message("arrived while Redis was flushed"))
    assert poll(settings, grant_id) == []  # fresh: the listener's event is expected
    with session_scope(settings.require_database_url()) as db:
        inbox = db.scalars(select(Folder).where(Folder.role == "inbox")).one()
        inbox.last_synced_at = datetime.now(UTC) - timedelta(minutes=5)
        inbox_id = inbox.id
    assert poll(settings, grant_id) == [inbox_id]


def test_folders_the_listener_reports_in_idle_cost_no_status(
    settings: Settings, mail_user: MailUser
) -> None:
    server, name, pw = mail_user.server, mail_user.name, mail_user.password
    grant_id = connect(settings, mail_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    with session_scope(settings.require_database_url()) as db:
        inbox = db.scalars(select(Folder).where(Folder.role == "inbox")).one()
        inbox.last_synced_at = datetime.now(UTC) - timedelta(minutes=5)
        inbox_id = inbox.id
    append(server, name, pw, make_message("the listener's event was lost"))
    client = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5)
    # as a live listener writes them: its lease on the grant, the Inbox's status in IDLE
    client.set(lease_key(grant_id), "listener-a", ex=60)
    entry = {"state": "idling", "listener": "listener-a", "at": time.time()}
    client.hset(listener_status_key(grant_id), inbox_id, json.dumps(entry))
    watched = idle_watched_folders(client, grant_id)
    assert watched == {inbox_id}
    commands: list[str] = []
    assert poll(settings, grant_id, commands=commands, idle_watched=watched) == []
    assert commands == []  # no STATUS for a folder in IDLE: its changes are the listener's

    # a check that asks about the folder (the sweep's, when nobody saw the Inbox lately: see
    # due_for_check) syncs what changed
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        imap = open_grant_session(db, settings, grant)
    try:
        report = check_grant(
            sessions_for(settings), imap, grant_id, now=datetime.now(UTC), enqueue_sync=[].append
        )
    finally:
        imap.close()
    assert report.polled == [inbox_id]

    # a status left by a listener that no longer holds the lease (crashed, replaced) is not
    # trusted, nor one of a grant without a lease: the poll looks
    client.set(lease_key(grant_id), "listener-b", ex=60)
    assert idle_watched_folders(client, grant_id) == frozenset()
    client.delete(lease_key(grant_id))
    assert idle_watched_folders(client, grant_id) == frozenset()
    assert poll(settings, grant_id) == [inbox_id]
