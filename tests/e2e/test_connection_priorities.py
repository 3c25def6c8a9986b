"""Issue 11: after an initial sync by the default 4 sync workers, the listener watches Inbox and
Sent and the API is served at once, on every test server. Before the connection manager, the
workers kept their pooled sessions and slots after the sync (renewed for 10 minutes), the
listener waited for a slot for Sent (or Inbox), and the API answered 429 "All 5 IMAP
connections … retry shortly" to attachment downloads and ``PUT starred``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import httpx
import pytest
import redis
from nylas import Client
from sqlalchemy import select

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.dev.ports import free_port
from pipeline.listener.status import read_status
from pipeline.models import Folder, Grant
from tests.support.grants import connect
from tests.support.mail import create_folder, imap_login, make_message
from tests.support.processes import RoleProcess, pipeline_env
from tests.support.services import MailUser
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

API_KEY = "connection-priorities-key-0123456789"
SYNC_TIMEOUT_S = 240.0  # 4 workers, a listener and the API on a loaded 2-core machine
START_TIMEOUT_S = 60.0
WATCHED_WITHIN_S = 5.0  # the issue: Inbox and Sent watched within 5 s of the sync's end
OTHER_FOLDERS = ("Projects", "Receipts", "Travel", "Newsletters")
PER_FOLDER = 30
ATTACHMENT = b"%PDF-1.4 quarterly figures\n" * 20


def with_attachment(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.test>"
    msg["To"] = "Bob <bob@example.test>"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="example.test")
    msg.set_content("The figures are attached.")
    msg.add_attachment(ATTACHMENT, maintype="application", subtype="pdf", filename="quarterly.pdf")
    return bytes(msg)


def fill(user: MailUser) -> None:
    """Inbox (one message with an attachment), Sent and four more folders, over one session."""
    folders = ["INBOX", user.folder("Sent"), *(user.folder(f) for f in OTHER_FOLDERS)]
    for name in folders[1:]:
        if not (user.kind == "cyrus" and name == user.folder("Sent")):  # Cyrus makes Sent
            create_folder(user.server, user.name, user.password, name)
    conn = imap_login(user.server, user.name, user.password)
    now = datetime.now(UTC)
    try:
        conn.append('"INBOX"', None, None, with_attachment("Quarterly report"))
        for name in folders:
            for i in range(PER_FOLDER):
                raw = make_message(f"{name} {i}", date=now - timedelta(minutes=i))
                typ, data = conn.append(f'"{name}"', None, None, raw)
                assert typ == "OK", data
    finally:
        conn.logout()


def grant_synced(settings: Settings, grant_id: str) -> bool:
    with session_scope(settings.require_database_url()) as db:
        return db.scalar(select(Grant.sync_state).where(Grant.id == grant_id)) == "synced"


def watched_folders(settings: Settings, grant_id: str) -> dict[str, str]:
    """role -> folder id of Inbox and Sent."""
    with session_scope(settings.require_database_url()) as db:
        rows = db.execute(
            select(Folder.role, Folder.id).where(
                Folder.grant_id == grant_id, Folder.role.in_(("inbox", "sent"))
            )
        ).all()
    return {str(role): str(folder_id) for role, folder_id in rows}


@pytest.fixture
def engine(settings: Settings, tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """The sync workers (4, as deployed), the listener and the API, as ``up`` starts them."""
    port = free_port()
    env = pipeline_env(
        settings,
        IMAP_PIPELINE_API_KEYS=API_KEY,
        IMAP_PIPELINE_API_PORT=str(port),
        IMAP_PIPELINE_MAIL_ALLOWED_NETWORKS="127.0.0.0/8",
        IMAP_PIPELINE_SYNC_BATCH_SIZE="10",  # many batches and chunk tasks, as a big mailbox
    )
    roles = [RoleProcess(role, env, tmp_path).start() for role in ("sync", "listener", "api")]
    url = f"http://127.0.0.1:{port}"
    try:
        roles[2].wait_healthy(url, START_TIMEOUT_S)
        yield env, url
    finally:
        for role in roles:
            role.stop()


def test_after_the_initial_sync_inbox_and_sent_are_watched_and_the_api_is_served_at_once(
    settings: Settings,
    server_user: MailUser,
    celery_client: None,
    engine: tuple[dict[str, str], str],
) -> None:
    from workers import enqueue

    _, url = engine
    fill(server_user)
    grant_id = connect(settings, server_user)
    enqueue.sync_grant(grant_id, "generic")
    wait_for(lambda: grant_synced(settings, grant_id), "the initial sync", timeout_s=SYNC_TIMEOUT_S)

    folders = watched_folders(settings, grant_id)
    assert set(folders) == {"inbox", "sent"}
    client = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5)

    def both_idling() -> bool:
        status = read_status(client, grant_id)
        return all(status.get(f, {}).get("state") == "idling" for f in folders.values())

    wait_for(both_idling, "Inbox and Sent to be watched", timeout_s=WATCHED_WITHIN_S)

    nylas = Client(API_KEY, api_uri=url, timeout=60)
    (report,) = nylas.messages.list(grant_id, {"subject": "Quarterly report"}).data
    assert report.attachments
    (pdf,) = [a for a in report.attachments if a.filename == "quarterly.pdf"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        started = time.monotonic()
        download = http.get(
            f"/v3/grants/{grant_id}/attachments/{pdf.id}/download",
            params={"message_id": report.id},
            timeout=60,
        )
        assert download.status_code == 200, download.text  # not 429: no retry
        assert download.content == ATTACHMENT
        starred = http.put(
            f"/v3/grants/{grant_id}/messages/{report.id}", json={"starred": True}, timeout=60
        )
        assert starred.status_code == 200, starred.text
        assert starred.json()["data"]["starred"] is True
        took = time.monotonic() - started
    assert took < 10.0, f"the two API requests took {took:.1f} s"
    assert both_idling()  # the API's connection took none of the listener's
