"""End to end through a real ``celery worker -Q webhooks``, Redis, Postgres and an HTTP receiver."""

from __future__ import annotations

import base64
import functools
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session
from webhook_receiver import Receiver
from webhook_worker_env import WorkerEnv

from pipeline.config import Settings
from pipeline.crypto import SecretBox
from pipeline.db import session_scope
from pipeline.webhooks import outbox, repository
from pipeline.webhooks.models import WebhookDestination
from pipeline.webhooks.service import WebhookService
from pipeline.webhooks.signing import verify
from tests.support.waiting import wait_for
from workers import webhook_queue
from workers.tasks import webhooks as webhook_tasks

pytestmark = pytest.mark.services

Uow = functools.partial[AbstractContextManager[Session]]
GRANT = str(uuid.uuid4())
TRIGGERS = ["message.created", "message.updated", "message.deleted"]
WAIT_S = 30.0  # longest wait for what takes about a second when the machine is idle
SLOW_ANSWER_S = 4.0  # the slow destination takes this long to answer each POST


@pytest.fixture
def wuow(worker: WorkerEnv) -> Uow:
    """Unit of work on the worker's database."""
    return functools.partial(session_scope, worker.database_url)


@pytest.fixture
def wservice(worker: WorkerEnv) -> Iterator[WebhookService]:
    """The service with the worker's settings and encryption key."""
    with WebhookService(Settings.load().webhooks, SecretBox([worker.encryption_key])) as service:
        yield service


def _create(uow: Uow, service: WebhookService, url: str) -> tuple[str, str]:
    with uow() as s:
        out = service.create(s, {"webhook_url": url, "trigger_types": TRIGGERS})
    assert out.webhook_secret is not None
    return out.id, out.webhook_secret


def _emit_and_kick(uow: Uow, events: list[tuple[str, str, dict[str, Any]]]) -> None:
    with uow() as s:
        for type_, subject, obj in events:
            outbox.emit(
                s, grant_id=GRANT, type=type_, obj={"id": subject, **obj}, subject_id=subject
            )
    webhook_queue.kick()  # after the commit, as writers do


def _status(uow: Uow, dest: str) -> str:
    with uow() as s:
        return s.get_one(WebhookDestination, dest).status


def _wait_delivered(uow: Uow, dest: str, timeout_s: float = WAIT_S) -> None:
    """Wait until every delivery of ``dest`` is recorded as delivered (after the POST)."""
    states: set[str] = set()

    def delivered() -> bool:
        nonlocal states
        with uow() as s:
            states = {d.state for d in repository.deliveries_for(s, dest)}
        return states == {"delivered"}

    wait_for(delivered, lambda: f"every delivery delivered, still {states}", timeout_s, 0.05)


def _ids(receiver: Receiver, path: str = "/hook") -> set[str]:
    return {r.json()["id"] for r in receiver.accepted(path)}


def _sweep() -> None:
    webhook_queue._publish(webhook_tasks.SWEEP_TASK, [])  # what beat sends


def test_emit_commit_kick_arrives_signed_at_its_first_attempt(
    wuow: Uow, wservice: WebhookService, receiver: Receiver
) -> None:
    """The kick alone delivers it (no sweep runs here), with one POST: well under a second when
    idle, which is a benchmark's figure; here the wait is generous and the count exact."""
    dest, secret = _create(wuow, wservice, receiver.url())
    _emit_and_kick(wuow, [("message.created", "m1", {"subject": "hi"})])
    (got,) = receiver.wait_accepted("/hook", 1, timeout_s=WAIT_S)
    assert verify(secret, got.body, got.headers["x-nylas-signature"])
    assert got.json()["data"]["object"] == {"id": "m1", "subject": "hi"}
    _wait_delivered(wuow, dest)
    assert len(receiver.received()) == 1
    with wuow() as s:
        assert [d.attempts for d in repository.deliveries_for(s, dest)] == [1]


def test_receiver_down_for_a_while_then_up_every_notification_arrives(
    wuow: Uow, wservice: WebhookService, receiver: Receiver
) -> None:
    dest, _ = _create(wuow, wservice, receiver.url())
    receiver.stop()
    events = [("message.updated", f"s{i % 6}", {"step": i}) for i in range(30)]
    _emit_and_kick(wuow, events)
    wait_for(lambda: _status(wuow, dest) == "failing", "the destination to fail", timeout_s=15)
    time.sleep(2.0)  # down for a while: several retries fail
    receiver.start()
    got = receiver.wait_accepted("/hook", 30, timeout_s=60)
    assert len(_ids(receiver)) == 30
    first_seen: dict[str, int] = {}
    for r in got:
        obj = r.json()["data"]["object"]
        first_seen.setdefault(r.json()["id"], obj["step"])
    for subject in {f"s{i}" for i in range(6)}:
        steps = [
            r.json()["data"]["object"]["step"]
            for r in got
            if r.json()["data"]["object"]["id"] == subject
        ]
        assert steps == sorted(steps), f"{subject} out of order: {steps}"
    wait_for(lambda: _status(wuow, dest) == "active", "the destination active again", timeout_s=10)
    _wait_delivered(wuow, dest)
    with wuow() as s:
        assert max(d.attempts for d in repository.deliveries_for(s, dest)) > 1


def test_a_slow_destination_does_not_delay_a_fast_one(
    wuow: Uow, wservice: WebhookService, receiver: Receiver
) -> None:
    receiver.route("/slow", delay_s=SLOW_ANSWER_S)
    _create(wuow, wservice, receiver.url("/slow"))
    _create(wuow, wservice, receiver.url("/fast"))
    _emit_and_kick(wuow, [("message.created", f"m{i}", {}) for i in range(10)])
    fast = receiver.wait_accepted("/fast", 10, timeout_s=15)
    slow = receiver.wait_accepted("/slow", 10, timeout_s=60)
    # Every fast delivery was in before the slow destination had answered even once.
    assert max(r.at for r in fast) < min(r.at for r in slow)


def test_redis_flushed_nothing_is_lost_once_the_sweep_runs(
    worker: WorkerEnv, wuow: Uow, wservice: WebhookService, receiver: Receiver
) -> None:
    r = redis.Redis.from_url(worker.redis_url, socket_timeout=5)
    dest, _ = _create(wuow, wservice, receiver.url())

    # 1. A kick sitting in Redis is flushed away: the outbox row stays undispatched.
    worker.stop()
    _emit_and_kick(wuow, [("message.created", f"a{i}", {}) for i in range(5)])
    assert r.llen("webhooks") >= 1
    r.flushall()
    worker.start()
    time.sleep(1.5)  # time for a delivery, which must not come: the kick is gone
    assert receiver.received() == []
    _sweep()
    receiver.wait_accepted("/hook", 5, timeout_s=30)

    # 2. Deliveries waiting for a retry lose their scheduled tasks and flags to a flush.
    receiver.stop()
    _emit_and_kick(wuow, [("message.created", f"b{i}", {}) for i in range(5)])
    wait_for(lambda: _status(wuow, dest) == "failing", "the destination to fail", timeout_s=15)
    worker.stop()
    r.flushall()
    receiver.start()
    worker.start()
    _sweep()
    receiver.wait_accepted("/hook", 10, timeout_s=30)
    _wait_delivered(wuow, dest)
    r.close()


def _queued_messages(r: redis.Redis[bytes]) -> list[tuple[str, list[Any], bytes]]:
    """(task name, args, raw message) of every message waiting in Redis lists."""
    out = []
    for key in r.scan_iter():
        if r.type(key) != b"list":
            continue
        for raw in r.lrange(key, 0, -1):
            message = json.loads(raw)
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args, _kwargs, _embed = json.loads(body)
            out.append((message["headers"]["task"], args, raw))
    return out


def test_secret_is_never_in_task_messages_or_logs(
    worker: WorkerEnv,
    wuow: Uow,
    wservice: WebhookService,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    r = redis.Redis.from_url(worker.redis_url, socket_timeout=5)
    dest, secret = _create(wuow, wservice, receiver.url())
    with wuow() as s:
        sealed = s.scalars(select(WebhookDestination.secret_sealed)).one()
    worker.stop()
    r.flushall()
    _emit_and_kick(wuow, [("message.created", "m1", {})])
    webhook_tasks.dispatch()  # run here, so the deliver messages it sends stay in Redis
    messages = _queued_messages(r)
    assert sorted((name, args) for name, args, _ in messages) == [
        ("pipeline.webhooks.deliver", [dest]),
        ("pipeline.webhooks.dispatch", []),
    ]
    for _, _, raw in messages:
        assert secret.encode() not in raw and sealed.encode() not in raw
        assert receiver.url().encode() not in raw
    worker.start()
    receiver.wait_accepted("/hook", 1, timeout_s=WAIT_S)
    # the worker writes its log a moment later
    wait_for(
        lambda: "pipeline.webhooks.deliver" in worker.log_text(),
        "the worker to log its deliver task",
        timeout_s=WAIT_S,
    )
    log = worker.log_text()
    # the worker logs its tasks at DEBUG ...
    assert secret not in log and sealed not in log  # ... never the secret
    assert secret not in caplog.text and sealed not in caplog.text
    r.close()
