"""The sync through real Celery workers, as `up` runs it: enqueue, crash, resume."""

from __future__ import annotations

import ast
import json
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.local.mailgen import GeneratedMessage, seed_maildir
from pipeline.models import Grant, Message, Placement, SyncFailure
from pipeline.webhooks.models import OutboxEvent
from tests.support.grants import connect, grant_request
from tests.support.mail import make_message
from tests.support.processes import CeleryWorker, pipeline_env, run_cli
from tests.support.services import MailUser

pytestmark = pytest.mark.services

SYNC_TIMEOUT_S = 120


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = SYNC_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def placed(settings: Settings) -> int:
    with session_scope(settings.require_database_url()) as db:
        return int(db.scalar(select(func.count()).select_from(Placement)) or 0)


def grant_synced(settings: Settings) -> bool:
    with session_scope(settings.require_database_url()) as db:
        return bool(db.scalar(select(func.count()).where(Grant.sync_state == "synced")))


def seed(user: MailUser, count: int) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    seed_maildir(
        user.server.maildir(user.name),
        (
            GeneratedMessage("INBOX", now - timedelta(minutes=i), (), make_message(f"m{i}"))
            for i in range(count)
        ),
        owner=user.server.mail_user,
    )


def test_grant_creation_task_never_carries_the_password(
    settings: Settings, mail_user: MailUser, celery_client: None, tmp_path: Path
) -> None:
    from workers import enqueue

    seed(mail_user, 30)
    enqueue.create_grant(grant_request(mail_user), settings)
    # What sits in the broker (and what Flower shows as arguments) has no plaintext password.
    broker = redis.Redis.from_url(settings.require_redis_url())
    queued = broker.lrange("sync.generic", 0, -1)
    assert len(queued) == 1
    assert mail_user.password.encode() not in queued[0]
    assert b"password_sealed" in queued[0]
    assert b"pipeline.grants.create" in queued[0]

    worker = CeleryWorker(pipeline_env(settings), tmp_path).start()
    try:
        wait_for(lambda: grant_synced(settings), "the initial sync")
    finally:
        worker.stop()
    assert placed(settings) == 30
    log = worker.log()
    assert "pipeline.sync.folder" in log  # readable task names, as Flower shows them
    assert mail_user.password not in log


def test_a_worker_killed_mid_folder_loses_nothing_and_resumes(
    settings: Settings, mail_user: MailUser, celery_client: None, tmp_path: Path
) -> None:
    from workers import enqueue

    total = 400
    seed(mail_user, total)
    grant_id = connect(settings, mail_user)
    env = pipeline_env(
        settings, IMAP_PIPELINE_SYNC_BATCH_SIZE="5", IMAP_PIPELINE_SYNC_LOCK_TTL_S="5"
    )
    first = CeleryWorker(env, tmp_path, concurrency=1).start()
    enqueue.sync_grant(grant_id, "generic")
    wait_for(lambda: placed(settings) >= 40, "the sync to get going")
    first.kill()
    at_kill = placed(settings)
    assert 0 < at_kill < total, "the worker must die mid-folder for this test to mean anything"

    second = CeleryWorker(env, tmp_path, concurrency=1).start()
    try:
        enqueue.sync_grant(grant_id, "generic")  # what `grants sync` or reconciliation does
        wait_for(lambda: grant_synced(settings), "the resumed sync")
    finally:
        second.stop()
    with session_scope(settings.require_database_url()) as db:
        messages = int(db.scalar(select(func.count()).select_from(Message)) or 0)
    assert messages == placed(settings) == total
    # the second worker fetched only what the first had not committed
    stored_after = sum(
        ast.literal_eval(m)["stored"]
        for m in re.findall(
            r"pipeline\.sync\.folder\[[^\]]+\] succeeded in [\d.]+s: (\{.*\})", second.log()
        )
        if "stored" in m
    )
    assert stored_after <= total - at_kill
    assert os.environ.get("IMAP_PIPELINE_DATABASE_URL") == settings.database_url


def test_a_worker_skips_a_message_the_server_cannot_read_and_fetches_it_on_retry(
    settings: Settings, mail_user: MailUser, celery_client: None, tmp_path: Path
) -> None:
    from workers import enqueue

    seed(mail_user, 12)
    (victim,) = [
        f
        for f in mail_user.server.maildir(mail_user.name).rglob("*")
        if f.is_file() and b"Subject: m5\n" in f.read_bytes().replace(b"\r\n", b"\n")
    ]
    victim.chmod(0)  # Dovecot: "* BYE Internal error" on FETCH
    grant_id = connect(settings, mail_user)
    worker = CeleryWorker(pipeline_env(settings), tmp_path, concurrency=1).start()
    try:
        enqueue.sync_grant(grant_id, "generic")
        wait_for(lambda: grant_synced(settings), "the initial sync")
        assert placed(settings) == 11
        listed = run_cli(settings, "grants", "failures", grant_id, "--json")
        assert listed.returncode == 0, listed.stderr
        (failure,) = json.loads(listed.stdout)
        assert failure["folder"] == "INBOX"
        assert failure["error"].startswith("The server could not return the message:")

        victim.chmod(0o600)  # the server is fixed; the operator retries
        retried = run_cli(settings, "grants", "failures", grant_id, "--retry")
        assert retried.returncode == 0, retried.stderr
        assert "queued" in retried.stdout
        wait_for(lambda: placed(settings) == 12, "the retried message")
    finally:
        worker.stop()
    with session_scope(settings.require_database_url()) as db:
        assert db.scalars(select(SyncFailure)).all() == []
        created = db.scalars(
            select(OutboxEvent.object).where(OutboxEvent.type == "message.created")
        ).all()
    assert [o["subject"] for o in created] == ["m5"]  # the grant is live: subscribers hear of it
    assert "Traceback" not in worker.log()
