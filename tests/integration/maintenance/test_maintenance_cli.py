"""``imap-pipeline reindex``, ``maintenance purge`` and ``limits`` against the test services."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import kombu.pools
import pytest
import redis
from celery import Celery
from sqlalchemy import text

from pipeline.cli import main
from pipeline.config import Settings
from pipeline.db import session_scope, sessionmaker_for
from pipeline.sync.run import sync_grant_inline
from tests.support.grants import connect
from tests.support.mail import append, create_folder, make_message
from tests.support.processes import pipeline_env, this_process_on
from tests.support.services import MailUser

pytestmark = pytest.mark.services


def _drop_broker_pools(app: Celery) -> None:
    """Forget every broker connection and producer pool of this process (kombu keeps them in
    global registries keyed by URL): a later test that closes "its" pool must not leave a
    producer pool behind that still points at the closed one."""
    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's environment and this process's Celery producer point at the test services."""
    from workers.app import app

    with this_process_on(pipeline_env(settings), monkeypatch):
        app.conf.broker_url = settings.require_redis_url()
        _drop_broker_pools(app)
        yield
        _drop_broker_pools(app)


def queued_tasks(redis_url: str, queue: str) -> list[tuple[str, list[object]]]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    out = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        out.append((message["headers"]["task"], json.loads(base64.b64decode(message["body"]))[0]))
    return out


@pytest.mark.usefixtures("cli_env")
def test_reindex_one_folder_lifts_a_stop_and_enqueues_its_sync(
    settings: Settings, mail_user: MailUser
) -> None:
    create_folder(mail_user.server, mail_user.name, mail_user.password, "Work")
    append(mail_user.server, mail_user.name, mail_user.password, make_message("w"), folder="Work")
    grant_id = connect(settings, mail_user)
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
    with session_scope(settings.require_database_url()) as db:
        db.execute(
            text(
                "UPDATE folders SET state = 'stopped', uidvalidity_changes = 5, "
                "retry_at = now() + interval '6 hours' WHERE raw_name = 'Work'"
            )
        )
        db.execute(text("UPDATE grants SET sync_state = 'stopped'"))
        work = str(db.scalars(text("SELECT id FROM folders WHERE raw_name = 'Work'")).one())

    assert main(["reindex", mail_user.email, "--folder", "Work"]) == 0
    with session_scope(settings.require_database_url()) as db:
        row = db.execute(
            text(
                "SELECT state, synced_uid, uidvalidity_changes, retry_at FROM folders WHERE id = :f"
            ),
            {"f": work},
        ).one()
        assert tuple(row) == ("syncing", 0, 0, None)
        assert db.scalar(text("SELECT sync_state FROM grants")) == "synced"
        inbox_state = db.scalar(text("SELECT state FROM folders WHERE raw_name = 'INBOX'"))
        assert inbox_state == "synced"  # only the folder asked for
    assert queued_tasks(settings.require_redis_url(), "sync.generic") == [
        ("pipeline.sync.folder", [grant_id, work])
    ]
    assert main(["reindex", grant_id, "--folder", "Nope"]) == 1


@pytest.mark.usefixtures("cli_env")
def test_purge_now_and_dry_run(
    settings: Settings, mail_user: MailUser, capsys: pytest.CaptureFixture[str]
) -> None:
    grant_id = connect(settings, mail_user)
    old = datetime.now(UTC) - timedelta(days=80)
    append(mail_user.server, mail_user.name, mail_user.password, make_message("x"), when=old)
    sync_grant_inline(sessionmaker_for(settings.require_database_url()), settings, grant_id)
    with session_scope(settings.require_database_url()) as db:
        db.execute(text("UPDATE messages SET received_at = now() - interval '100 days'"))
    assert main(["maintenance", "purge", "--dry-run"]) == 0
    assert "1 message(s)" in capsys.readouterr().out
    assert main(["maintenance", "purge"]) == 0
    assert "purged 1 message(s)" in capsys.readouterr().out
    with session_scope(settings.require_database_url()) as db:
        assert db.scalar(text("SELECT count(*) FROM messages")) == 0


@pytest.mark.usefixtures("cli_env")
def test_limits_set_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["limits", "set", "yahoo", "provider_logins_per_min=30"]) == 0
    capsys.readouterr()
    assert main(["limits", "show", "yahoo", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["provider_logins_per_min"] == 30.0
    assert main(["limits", "set", "yahoo", "speed=3"]) == 1
