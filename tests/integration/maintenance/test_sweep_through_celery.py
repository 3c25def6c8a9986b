"""The UIDVALIDITY check through a real Celery worker: the check finds the change, enqueues the
folder's sync on the provider queue, and the sync reindexes with message ids kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kombu.pools
import pytest
from celery import Celery
from sqlalchemy import select, text

from pipeline.config import Settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.models import Message
from pipeline.sync.run import sync_grant_inline
from tests.support.grants import connect
from tests.support.mail import append, make_message
from tests.support.processes import CeleryWorker, pipeline_env, this_process_on
from tests.support.services import MailUser
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

TIMEOUT_S = 60.0
NEW_UIDVALIDITY = 5_000_000


def _drop_broker_pools(app: Celery) -> None:
    """Forget kombu's global broker pools (see test_beat_tasks)."""
    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def producer(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """This process's Celery app, sending to the test broker."""
    from workers.app import app

    with this_process_on(pipeline_env(settings), monkeypatch):
        app.conf.broker_url = settings.require_redis_url()
        _drop_broker_pools(app)
        yield app
        _drop_broker_pools(app)


def test_a_changed_uidvalidity_is_reindexed_through_the_worker(
    settings: Settings, mail_user: MailUser, producer: Celery, tmp_path: Path
) -> None:
    for i in range(5):
        append(mail_user.server, mail_user.name, mail_user.password, make_message(f"m{i}"))
    grant_id = connect(settings, mail_user)
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
    with session_scope(settings.require_database_url()) as db:
        before = {s: i for s, i in db.execute(select(Message.subject, Message.id))}

    def inbox_uidvalidity() -> int:
        with session_scope(settings.require_database_url()) as db:
            return int(db.scalar(text("SELECT uidvalidity FROM folders WHERE raw_name='INBOX'")))

    mail_user.server.doveadm(
        "mailbox", "update", "-u", mail_user.name, "--uid-validity", str(NEW_UIDVALIDITY), "INBOX"
    )
    worker = CeleryWorker(pipeline_env(settings), tmp_path, concurrency=2).start()
    try:
        producer.send_task(  # what the sweep sends: a batch of grants' checks
            "pipeline.maintenance.check_grants", args=[[grant_id]], queue="sync.generic"
        )
        wait_for(lambda: inbox_uidvalidity() == NEW_UIDVALIDITY, "the reindex", timeout_s=TIMEOUT_S)
    finally:
        worker.stop()
    log = worker.log()
    assert "pipeline.maintenance.check_grants" in log
    assert "pipeline.sync.folder" in log
    with session_scope(settings.require_database_url()) as db:
        after = {s: i for s, i in db.execute(select(Message.subject, Message.id))}
    assert after == before
