"""Fixtures of the webhook integration tests: real Postgres, Redis, HTTP receiver, Celery worker.

Builds on the shared fixtures of ``tests/conftest.py`` (``pg_template``, ``database_url``,
``redis_server``). The Celery worker is a real ``celery worker -Q webhooks`` subprocess, one per
test module, on a module database of its own and the session's private Redis.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import kombu.pools
import psycopg
import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from webhook_receiver import Receiver

from pipeline.config import reset_settings
from pipeline.config.webhooks import WebhookSettings
from pipeline.crypto import SecretBox, generate_key
from pipeline.db import get_engine, session_scope
from pipeline.webhooks.delivery import Drainer
from pipeline.webhooks.sender import Sender
from pipeline.webhooks.service import WebhookService
from tests.support.waiting import wait_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PG_ADMIN_URL = os.environ.get(
    "IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
WORKER_START_TIMEOUT_S = 60
WORKER_STOP_TIMEOUT_S = 20
WORKER_CONCURRENCY = 4
# Emptying the tables while the worker still drains the last test's deliveries can deadlock
# with it; the cleanup retries until this deadline (the worker's work ends well within it).
CLEANUP_DEADLINE_S = 60.0

# Fast retries so a test sees several attempts in seconds.
TEST_WEBHOOK_ENV = {
    "IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "IMAP_PIPELINE_WEBHOOK_BACKOFF_BASE_S": "0.3",
    "IMAP_PIPELINE_WEBHOOK_BACKOFF_MAX_S": "2",
    "IMAP_PIPELINE_WEBHOOK_BACKOFF_JITTER": "0.1",
    "IMAP_PIPELINE_WEBHOOK_MAX_ATTEMPTS": "30",
    "IMAP_PIPELINE_WEBHOOK_REQUEST_TIMEOUT_S": "5",
    "IMAP_PIPELINE_WEBHOOK_CHALLENGE_TIMEOUT_S": "5",
}


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _pg_url(name: str) -> str:
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


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


# --- a real Celery worker ----------------------------------------------------------------------


class WorkerEnv:
    """A ``celery worker -Q webhooks`` subprocess and what it is pointed at; can stop and start."""

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        encryption_key: str,
        folder: Path,
        env: dict[str, str],
        concurrency: int = WORKER_CONCURRENCY,
    ) -> None:
        self.concurrency = concurrency
        self.database_url = database_url
        self.redis_url = redis_url
        self.encryption_key = encryption_key
        self.folder = folder
        self.env = env
        self.log_file = folder / "worker.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the worker and wait until it consumes."""
        assert self._proc is None, "already running"
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "webhook_worker_app",
            "worker",
            "-Q",
            "webhooks",
            "-c",
            str(self.concurrency),
            "-P",
            "prefork",
            "-n",
            f"wh-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "DEBUG",
            f"--logfile={self.log_file}",
        ]
        self._proc = subprocess.Popen(
            cmd, env=self.env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                self._proc = None
                pytest.fail(
                    f"celery worker exited with {proc.returncode}:\n{self.log_text()[-3000:]}",
                    pytrace=False,
                )
            return " ready." in self.log_text()[offset:]

        try:
            wait_for(ready, "the celery worker to be ready", WORKER_START_TIMEOUT_S)
        except AssertionError:
            self.stop()
            pytest.fail("celery worker did not become ready in time", pytrace=False)

    def stop(self) -> None:
        """Warm shutdown (unacknowledged tasks go back to Redis), then a kill if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WORKER_STOP_TIMEOUT_S)

    @property
    def pid(self) -> int:
        """The worker's main process id."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the worker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything the worker logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _point_test_process_at(env: dict[str, str]) -> None:
    """Make this process's Celery app, settings and webhook runtime use ``env``'s services."""
    import workers.tasks.webhooks
    from workers.app import app

    reset_settings()
    workers.tasks.webhooks.reset_runtime()
    app.conf.broker_url = env["IMAP_PIPELINE_REDIS_URL"]
    # Drop a broker pool made for another Redis earlier in this session (what Celery does
    # after a fork), and kombu's registry of producer pools, which would otherwise hand the
    # next module the pool closed here.
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    kombu.pools.reset()


@pytest.fixture(scope="module")
def celery_worker(
    pg_template: str, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerEnv]:
    """A real webhook worker on a module database and the session's private Redis."""
    with worker_env(pg_template, redis_server, tmp_path_factory) as worker:
        yield worker


@contextlib.contextmanager
def worker_env(
    pg_template: str,
    redis_server: str,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    concurrency: int = WORKER_CONCURRENCY,
    extra_env: dict[str, str] | None = None,
) -> Iterator[WorkerEnv]:
    """A running webhook worker on a database of its own; this process pointed at it too."""
    name = f"ipt_wh_{uuid.uuid4().hex[:12]}"
    for attempt in range(5):
        try:
            _admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
            break
        except psycopg.errors.ObjectInUse:
            time.sleep(0.2 * (attempt + 1))
    database_url = _pg_url(name)
    redis_url = redis_server.rsplit("/", 1)[0] + "/0"
    key = generate_key()
    folder = tmp_path_factory.mktemp("webhook-worker")
    service_env = {
        "IMAP_PIPELINE_DATABASE_URL": database_url,
        "IMAP_PIPELINE_REDIS_URL": redis_url,
        "IMAP_PIPELINE_ENCRYPTION_KEYS": key,
        "IMAP_PIPELINE_DATA_DIR": str(folder / "data"),
        **TEST_WEBHOOK_ENV,
        **(extra_env or {}),
    }
    env = {
        **os.environ,
        **service_env,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
    }
    worker = WorkerEnv(database_url, redis_url, key, folder, env, concurrency)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in service_env.items():
            mp.setenv(k, v)
        _point_test_process_at(service_env)
        try:
            worker.start()
            yield worker
        finally:
            worker.stop()
            import workers.tasks.webhooks

            workers.tasks.webhooks.reset_runtime()
            reset_settings()
            get_engine(database_url).dispose()
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
