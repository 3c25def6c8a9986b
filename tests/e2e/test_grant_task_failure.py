"""A failed ``pipeline.grants.create`` is a failed task with a readable reason and no secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from pipeline.config import Settings
from pipeline.errors import ImapAuthError
from tests.support.grants import grant_request
from tests.support.processes import CeleryWorker, pipeline_env
from tests.support.services import MailUser
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

RESULT_TIMEOUT_S = 120


def test_a_refused_login_fails_the_task_and_the_caller_reads_why(
    settings: Settings, mail_user: MailUser, celery_client: None, tmp_path: Path
) -> None:
    from workers import enqueue
    from workers.app import app

    wrong = "not-the-password-0123456789"
    request = grant_request(mail_user).model_copy(update={"password": SecretStr(wrong)})
    worker = CeleryWorker(pipeline_env(settings), tmp_path).start()
    try:
        task_id = enqueue.create_grant(request, settings)
        result = app.AsyncResult(task_id)
        with pytest.raises(ImapAuthError) as failure:
            result.get(timeout=RESULT_TIMEOUT_S)
        assert result.state == "FAILURE"  # what Flower shows, from the same task events
        reason = str(failure.value)
        assert "refused the login" in reason, reason
        assert wrong not in reason and wrong not in str(result.traceback or "")
        expected = f"Task pipeline.grants.create[{task_id}] raised expected: ImapAuthError"
        wait_for(  # logged just after the result is stored
            lambda: expected in worker.log(),
            lambda: f"{expected!r} in the worker's log:\n{worker.log()[-3000:]}",
            timeout_s=RESULT_TIMEOUT_S,
        )
        log = worker.log()  # before the stop: a SIGTERM to the pool may log its own trace
    finally:
        worker.stop()
    assert wrong not in log
    assert "Traceback" not in log, log  # an expected failure, not a crash


def test_a_malformed_request_fails_with_the_field_not_its_value(
    settings: Settings, mail_user: MailUser, celery_client: None, tmp_path: Path
) -> None:
    from pipeline.crypto import SecretBox
    from workers.app import app

    password = "the-real-password-987654321"
    box = SecretBox(settings.encryption_key_list)
    payload = {"email": "not an address", "password_sealed": box.seal(password)}
    worker = CeleryWorker(pipeline_env(settings), tmp_path).start()
    try:
        result = app.send_task("pipeline.grants.create", args=[payload], queue="sync.generic")
        with pytest.raises(Exception) as failure:
            result.get(timeout=RESULT_TIMEOUT_S)
    finally:
        worker.stop()
    assert type(failure.value).__name__ == "GrantRequestInvalid"
    assert "email" in str(failure.value)
    assert password not in str(failure.value)
    assert password not in worker.log()


def test_only_grant_creation_waits_for_a_result(settings: Settings, celery_client: None) -> None:
    """Other sends do not subscribe the sender to a result channel that never gets a result."""
    import redis

    from workers import enqueue
    from workers.app import app

    enqueue.sync_grant("00000000-0000-4000-8000-000000000001", "generic")
    enqueue.sync_folder(
        "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002", "generic"
    )
    client = redis.Redis.from_url(settings.require_redis_url())
    try:
        assert client.pubsub_channels("celery-task-meta-*") == []
    finally:
        client.close()
    assert app.send_task("pipeline.grants.create", args=[{}], queue="nowhere").ignored is False
