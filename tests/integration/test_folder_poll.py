"""Folders no listener watches are polled with STATUS and synced when they changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from beat_schedule import beat_schedule
from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.grants.service import open_grant_session
from pipeline.maintenance.sweep import poll_grant
from pipeline.models import Folder, Grant
from pipeline.sync.runner import sync_grant_inline
from tests.support.grants import connect, sessions_for
from tests.support.mail import append, create_folder, make_message
from tests.support.services import MailUser

pytestmark = pytest.mark.services


def poll(settings: Settings, grant_id: str) -> list[str]:
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        assert grant is not None
        imap = open_grant_session(db, settings, grant)
    enqueued: list[str] = []
    try:
        changed = poll_grant(
            sessions_for(settings),
            imap,
            grant_id,
            now=datetime.now(UTC),
            enqueue_sync=enqueued.append,
        )
    finally:
        imap.close()
    assert changed == enqueued
    return changed


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
    schedule = beat_schedule(sweep_s=120, poll_s=30, purge_s=900, reconcile_s=600)
    assert schedule["folder-poll"]["schedule"] == 30.0
    assert schedule["uidvalidity-sweep"]["schedule"] == 120.0
    assert Settings().poll_interval_s == 60.0  # the documented default


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
