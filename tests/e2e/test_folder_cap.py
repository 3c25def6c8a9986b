"""A server that lists too many folders: the folders synced and the tasks queued per grant are
capped, the important folders are kept, and ``grants status`` says what was left out."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import create_grant
from pipeline.models import Folder, Grant
from tests.support.fake_imap import FakeFolder, FakeImapConfig, FakeImapServer, sample_message
from tests.support.processes import CeleryWorker, pipeline_env, run_cli, this_process_on
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

MAX_FOLDERS = 50
AT_ONCE = 5
SYNC_TIMEOUT_S = 180
QUEUE = "sync.generic"  # the Celery queue of provider "generic" (a list in Redis)


@pytest.fixture
def capped(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This process's Celery producer and task code on the test services, with the caps."""
    from workers.app import app

    env = pipeline_env(
        settings,
        IMAP_PIPELINE_MAX_FOLDERS_PER_GRANT=str(MAX_FOLDERS),
        IMAP_PIPELINE_MAX_FOLDER_TASKS_PER_GRANT=str(AT_ONCE),
    )
    with this_process_on(env, monkeypatch):
        app.conf.broker_url = settings.require_redis_url()
        yield env


def server_folders() -> list[FakeFolder]:
    """200 selectable folders (the role folders listed last), and one whose name is longer
    than any index entry may be."""
    return [
        FakeFolder(b"INBOX", [sample_message(1)]),
        *(FakeFolder(f"Folder-{i:03d}".encode(), [sample_message(i)]) for i in range(1, 197)),
        FakeFolder(b"Sent", [sample_message(900)], ("\\HasNoChildren", "\\Sent")),
        FakeFolder(b"Drafts", [], ("\\HasNoChildren", "\\Drafts")),
        FakeFolder(b"Trash", [], ("\\HasNoChildren", "\\Trash")),
        FakeFolder(b"L" * 3000),
    ]


def queued_folders(broker: redis.Redis[bytes]) -> list[str]:
    """Folder ids of the pipeline.sync.folder tasks waiting in the broker, first out first
    (kombu pushes on the left and pops on the right)."""
    ids = []
    for raw in reversed(broker.lrange(QUEUE, 0, -1)):
        message = json.loads(raw)
        if message["headers"]["task"] == "pipeline.sync.folder":
            args = json.loads(base64.b64decode(message["body"]))[0]
            ids.append(args[1])
    return ids


def test_200_folders_sync_50_with_5_tasks_queued_at_a_time(
    settings: Settings, capped: dict[str, str], tmp_path: Path
) -> None:
    from workers import folder_queue
    from workers.tasks.sync import sync_grant_task

    broker: redis.Redis[bytes] = redis.Redis.from_url(settings.require_redis_url())
    with FakeImapServer(FakeImapConfig(folders=server_folders())) as server:
        request = GrantRequest(
            email="many@fake.test",
            password="any",  # type: ignore[arg-type]
            imap_host="127.0.0.1",
            imap_port=server.port,
            imap_tls="plain",
            allow_plaintext=True,
            imap_username="many",
        )
        with session_scope(settings.require_database_url()) as db:
            grant_id = create_grant(db, settings, request).grant.id

        sync_grant_task.apply(args=[grant_id]).get(timeout=60)  # discovery, in this process

        with session_scope(settings.require_database_url()) as db:
            names = {f.id: f.name for f in db.scalars(select(Folder))}
        first = [names[f] for f in queued_folders(broker)]
        assert first == ["INBOX", "Sent", "Drafts", "Trash", "Folder-001"]
        assert folder_queue.waiting(broker, grant_id) == MAX_FOLDERS - AT_ONCE

        worker = CeleryWorker(capped, tmp_path).start()
        try:
            peak = 0

            def synced() -> bool:
                nonlocal peak
                if grant_synced(settings, grant_id):
                    return True
                peak = max(peak, len(queued_folders(broker)))
                return False

            wait_for(synced, "the initial sync", timeout_s=SYNC_TIMEOUT_S, interval_s=0.05)
        finally:
            worker.stop()

    assert peak <= AT_ONCE
    assert folder_queue.waiting(broker, grant_id) == 0
    with session_scope(settings.require_database_url()) as db:
        folders = list(db.scalars(select(Folder).where(Folder.grant_id == grant_id)))
        grant = db.get(Grant, grant_id)
        assert grant is not None and grant.folders_skipped == 201 - MAX_FOLDERS
    assert len(folders) == MAX_FOLDERS and {f.state for f in folders} == {"synced"}
    assert {"inbox", "sent", "drafts", "trash"} <= {f.role for f in folders}
    status = run_cli(settings, "grants", "status", grant_id)
    assert status.returncode == 0, status.stderr
    assert "151 more folders on the server are not synced" in " ".join(status.stdout.split())


def grant_synced(settings: Settings, grant_id: str) -> bool:
    with session_scope(settings.require_database_url()) as db:
        grant = db.get(Grant, grant_id)
        return grant is not None and grant.sync_state == "synced"
