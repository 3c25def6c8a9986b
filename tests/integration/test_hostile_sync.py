"""Sync faults a server causes, synced for real into Postgres (issue 9): 8-bit folder names,
FETCH data nobody asked for, messages above the literal bound."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant
from pipeline.models import Folder, Grant, Message, SyncFailure
from pipeline.sync.run import sync_grant_inline
from tests.support.fake_imap import (
    FakeFolder,
    FakeImapConfig,
    FakeImapServer,
    Hostility,
    sample_message,
)
from tests.support.grants import connect, sessions_for
from tests.support.mail import append, create_folder
from tests.support.services import MailUser
from tests.support.settings import section_changed

pytestmark = pytest.mark.services


def fake_grant(settings: Settings, port: int) -> str:
    request = GrantRequest(
        email=f"{uuid.uuid4().hex[:8]}@fake.test",
        password="pw",  # type: ignore[arg-type]
        imap_host="127.0.0.1",
        imap_port=port,
        imap_tls="plain",
        imap_username="user",
        allow_plaintext=True,
    )
    with session_scope(settings.require_database_url()) as db:
        return create_grant(db, settings, request).grant.id


def folders_of(settings: Settings, grant_id: str) -> dict[str, Folder]:
    with session_scope(settings.require_database_url()) as db:
        rows = db.scalars(select(Folder).where(Folder.grant_id == grant_id)).all()
        for row in rows:
            db.expunge(row)
        return {row.name: row for row in rows}


def subjects(settings: Settings, grant_id: str) -> list[str]:
    with session_scope(settings.require_database_url()) as db:
        return sorted(db.scalars(select(Message.subject).where(Message.grant_id == grant_id)))


def completed(settings: Settings, grant_id: str) -> bool:
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        return grant is not None and grant.initial_sync_completed_at is not None


def test_raw_eight_bit_folder_names_are_synced(settings: Settings) -> None:
    # Seen: a folder with a raw 8-bit name crashed SELECT (UnicodeEncodeError) and the grant's
    # first sync never completed.
    config = FakeImapConfig(
        folders=[
            FakeFolder(b"INBOX", [sample_message(1)]),
            FakeFolder(b"Caf\xe9", [sample_message(2)]),  # ISO 8859-1
            FakeFolder(b"R\xc3\xa9sum\xc3\xa9", [sample_message(3), sample_message(4)]),
        ]
    )
    with FakeImapServer(config) as server:
        grant_id = fake_grant(settings, server.port)
        sync_grant_inline(sessions_for(settings), settings, grant_id)
    folders = folders_of(settings, grant_id)
    assert set(folders) == {"INBOX", "Café", "Résumé"}
    assert {f.state for f in folders.values()} == {"synced"}
    assert folders["Café"].raw_name.encode("latin-1") == b"Caf\xe9"
    assert subjects(settings, grant_id) == [f"Fake message {i}" for i in (1, 2, 3, 4)]
    assert completed(settings, grant_id)


def test_a_non_ascii_folder_on_dovecot_is_synced_by_its_modified_utf7_name(
    settings: Settings, mail_user: MailUser
) -> None:
    # Dovecot never sends raw 8-bit names (it refuses them as "not valid mUTF-7"); what it
    # sends is modified UTF-7, kept as is and shown decoded.
    server, user, password = mail_user.server, mail_user.name, mail_user.password
    create_folder(server, user, password, "R&AOk-sum&AOk-")
    append(server, user, password, sample_message(7), folder="R&AOk-sum&AOk-")
    grant_id = connect(settings, mail_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    folders = folders_of(settings, grant_id)
    assert folders["Résumé"].raw_name == "R&AOk-sum&AOk-"
    assert folders["Résumé"].state == "synced", folders["Résumé"].state_detail
    assert subjects(settings, grant_id) == ["Fake message 7"]
    assert completed(settings, grant_id)


def test_fetch_responses_nobody_asked_for_are_not_stored(settings: Settings) -> None:
    # Seen: 1,000 FETCH responses the engine never asked for were stored.
    config = FakeImapConfig(hostile={"FETCH": Hostility("unrequested", 1000)})
    with FakeImapServer(config) as server:
        grant_id = fake_grant(settings, server.port)
        sync_grant_inline(sessions_for(settings), settings, grant_id)
    assert subjects(settings, grant_id) == [f"Fake message {i}" for i in (1, 2, 3)]
    assert completed(settings, grant_id)


def test_a_message_above_the_literal_bound_is_recorded_not_fetched(settings: Settings) -> None:
    big = sample_message(2, size=2 * 1024 * 1024)
    config = FakeImapConfig(
        folders=[FakeFolder(b"INBOX", [sample_message(1), big, sample_message(3)])]
    )
    bounded = section_changed(settings, "imap", max_literal_bytes=1024 * 1024)
    with FakeImapServer(config) as server:
        grant_id = fake_grant(bounded, server.port)
        sync_grant_inline(sessions_for(bounded), bounded, grant_id)
        fetched_bodies = [
            line for _, line in server.commands if b"FETCH 2 " in line and b"BODY.PEEK[]" in line
        ]
    assert fetched_bodies == []  # never asked for: its literal would break the bound
    assert subjects(settings, grant_id) == ["Fake message 1", "Fake message 3"]
    with session_scope(settings.require_database_url()) as db:
        (failure,) = db.scalars(select(SyncFailure)).all()
    assert failure.uid == 2
    assert "IMAP_PIPELINE_IMAP_MAX_LITERAL_BYTES" in failure.error
    assert folders_of(settings, grant_id)["INBOX"].state == "synced"
    assert datetime.now(UTC) - timedelta(minutes=5) < failure.recorded_at
