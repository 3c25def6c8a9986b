"""The live path end to end, as `up` runs it: IMAP change -> listener -> worker -> signed webhook.

Real Dovecot, Postgres, Redis, a Celery worker process, an `imap-pipeline listen` process and
a real HTTP receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from pipeline.config import Settings
from pipeline.config.webhooks import WebhookSettings
from pipeline.crypto import SecretBox
from pipeline.db import session_scope
from pipeline.listener.status import read_status
from pipeline.models import Folder
from pipeline.sync.run import sync_grant_inline
from pipeline.webhooks.service import WebhookService
from tests.integration.webhooks.webhook_receiver import Received, Receiver
from tests.support.grants import connect, sessions_for
from tests.support.mail import append, imap_login, make_message
from tests.support.processes import CeleryWorker, pipeline_env
from tests.support.services import MailUser
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

ARRIVAL_TIMEOUT_S = 60


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def start_listener(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "listen"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def of_type(items: list[Received], type_: str) -> list[dict[str, Any]]:
    return [r.json() for r in items if r.json()["type"] == type_]


def test_changes_on_the_server_arrive_as_signed_webhooks(
    settings: Settings, mail_user: MailUser, receiver: Receiver, tmp_path: Path
) -> None:
    append(mail_user.server, mail_user.name, mail_user.password, make_message("history"))
    grant_id = connect(settings, mail_user)
    sync_grant_inline(sessions_for(settings), settings, grant_id)
    hook_settings = WebhookSettings(allow_private_destinations=True)
    with (
        WebhookService(hook_settings, SecretBox(settings.encryption_key_list)) as service,
        session_scope(settings.require_database_url()) as db,
    ):
        created = service.create(
            db,
            {
                "webhook_url": receiver.url("/hook"),
                "trigger_types": ["message.created", "message.updated", "message.deleted"],
            },
        )
    secret = created.webhook_secret
    assert secret

    env = pipeline_env(
        settings,
        IMAP_PIPELINE_WEBHOOK_ALLOW_PRIVATE_DESTINATIONS="true",
        IMAP_PIPELINE_ORPHAN_GRACE_S="0",
    )
    worker = CeleryWorker(env, tmp_path).start()
    listener = start_listener(env, tmp_path / "listener.log")
    try:
        # the listener claims the grant and enters IDLE on the Inbox (a fixed 3 s was a guess)
        with session_scope(settings.require_database_url()) as db:
            inbox = db.scalars(
                select(Folder.id).where(Folder.grant_id == grant_id, Folder.role == "inbox")
            ).one()
        status = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5)

        def watched() -> bool:
            assert listener.poll() is None, "the listener exited"
            return read_status(status, grant_id).get(inbox, {}).get("state") == "idling"

        wait_for(watched, "the listener to watch the Inbox", timeout_s=ARRIVAL_TIMEOUT_S)
        status.close()
        started = time.monotonic()
        append(mail_user.server, mail_user.name, mail_user.password, make_message("live one"))
        got = receiver.wait_for(
            lambda items: bool(of_type(items, "message.created")), ARRIVAL_TIMEOUT_S
        )
        latency = time.monotonic() - started
        (post,) = [r for r in got if r.json()["type"] == "message.created"]
        expected = hmac.new(secret.encode(), post.body, hashlib.sha256).hexdigest()
        assert post.headers["x-nylas-signature"] == expected
        note = post.json()
        assert note["data"]["object"]["subject"] == "live one"
        assert note["data"]["object"]["grant_id"] == grant_id
        assert note["specversion"] == "1.0"
        message_id = note["data"]["object"]["id"]
        print(f"APPEND -> webhook in {latency:.2f}s")

        conn = imap_login(mail_user.server, mail_user.name, mail_user.password)
        conn.select("INBOX")
        typ, data = conn.search(None, "SUBJECT", '"live one"')
        assert typ == "OK"
        seq = data[0].decode()
        conn.store(seq, "+FLAGS", "(\\Seen)")
        receiver.wait_for(lambda items: bool(of_type(items, "message.updated")), ARRIVAL_TIMEOUT_S)
        updated = of_type(receiver.received(), "message.updated")
        assert updated[0]["data"]["object"]["id"] == message_id
        assert updated[0]["data"]["object"]["unread"] is False

        conn.store(seq, "+FLAGS", "(\\Deleted)")
        conn.expunge()
        conn.logout()
        receiver.wait_for(lambda items: bool(of_type(items, "message.deleted")), ARRIVAL_TIMEOUT_S)
        deleted = of_type(receiver.received(), "message.deleted")
        assert deleted[0]["data"]["object"]["id"] == message_id
        # nothing about the historical message
        subjects = [r.json()["data"]["object"].get("subject") for r in receiver.received()]
        assert "history" not in subjects
    finally:
        os.killpg(listener.pid, signal.SIGTERM)
        listener.wait(timeout=30)
        worker.stop()
