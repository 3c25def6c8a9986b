"""Fixtures of the webhook integration tests: real Postgres, Redis, HTTP receiver, Celery worker.

Builds on the shared fixtures of ``tests/conftest.py`` (``pg_template``, ``database_url``,
``redis_server``). The Celery worker is a real ``celery worker -Q webhooks`` subprocess, one per
test module, on a module database of its own and the session's private Redis
(``webhook_worker_env``: tests that start one of their own import it from there).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager

import psycopg
import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from webhook_receiver import Receiver
from webhook_worker_env import WorkerEnv, worker_env

from pipeline.config.webhooks import WebhookSettings
from pipeline.crypto import SecretBox, generate_key
from pipeline.db import session_scope
from pipeline.webhooks.delivery import Drainer
from pipeline.webhooks.sender import Sender
from pipeline.webhooks.service import WebhookService

# Emptying the tables while the worker still drains the last test's deliveries can deadlock
# with it; the cleanup retries until this deadline (the worker's work ends well within it).
CLEANUP_DEADLINE_S = 60.0


@pytest.fixture
def wh_settings() -> WebhookSettings:
    """In-process delivery settings: loopback allowed, quick retries and timeouts."""
    return WebhookSettings(
        allowed_networks=["127.0.0.0/8"],  # type: ignore[list-item]
        backoff_base_s=0.2,
        backoff_max_s=1.0,
        backoff_jitter=0.0,
        request_timeout_s=2.0,
        challenge_timeout_s=2.0,
        max_attempts=6,
    )


@pytest.fixture
def box() -> SecretBox:
    """A secret box with a fresh key."""
    return SecretBox([generate_key()])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running HTTP receiver on a free loopback port."""
    with Receiver() as r:
        yield r


@pytest.fixture
def uow(database_url: str) -> functools.partial[AbstractContextManager[Session]]:
    """Unit of work on this test's database (commits on success)."""
    return functools.partial(session_scope, database_url)


@pytest.fixture
def sender(wh_settings: WebhookSettings) -> Iterator[Sender]:
    """The HTTP sender, closed after the test."""
    with Sender(wh_settings) as s:
        yield s


@pytest.fixture
def service(wh_settings: WebhookSettings, box: SecretBox, sender: Sender) -> WebhookService:
    """The destination service on the test settings."""
    return WebhookService(wh_settings, box, sender=sender)


@pytest.fixture
def drainer(
    uow: functools.partial[AbstractContextManager[Session]],
    wh_settings: WebhookSettings,
    box: SecretBox,
    sender: Sender,
) -> Drainer:
    """A drainer on this test's database."""
    return Drainer(uow, settings=wh_settings, box=box, sender=sender)


@pytest.fixture(scope="module")
def celery_worker(
    pg_template: str, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerEnv]:
    """A real webhook worker on a module database and the session's private Redis."""
    with worker_env(pg_template, redis_server, tmp_path_factory) as worker:
        yield worker


@pytest.fixture
def worker(celery_worker: WorkerEnv) -> Iterator[WorkerEnv]:
    """The module's worker (running), with the webhook tables emptied for this test."""
    # DELETE, not TRUNCATE: the worker may still be finishing the last test's work, and row
    # locks wait where TRUNCATE's table lock would deadlock with it. The cascade can still
    # meet a drain's batch update in the other order; this side looks for the deadlock first
    # (a short deadlock_timeout), so Postgres cancels the cleanup, never the worker's work,
    # and the cleanup tries again once that work has committed.
    deadline = time.monotonic() + CLEANUP_DEADLINE_S
    pause = 0.1
    while True:
        try:
            with session_scope(celery_worker.database_url) as session:
                conn = session.connection()
                conn.exec_driver_sql("SET LOCAL deadlock_timeout = '50ms'")
                conn.exec_driver_sql("DELETE FROM webhook_destinations")
                conn.exec_driver_sql("DELETE FROM webhook_outbox")
            break
        except OperationalError as exc:
            if not isinstance(exc.orig, psycopg.errors.DeadlockDetected):
                raise
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
    if not celery_worker.running:
        celery_worker.start()
    yield celery_worker
