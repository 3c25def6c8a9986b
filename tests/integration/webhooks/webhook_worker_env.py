"""A real webhook worker for the webhook integration tests: a ``celery worker -Q webhooks``
subprocess on a database of its own and the session's private Redis, and this process pointed
at the same services.

Shared by the folder's conftest (the ``celery_worker`` and ``worker`` fixtures) and by tests
that start a worker of their own; a module with a name of its own, not the conftest (pytest
imports every folder's conftest as ``conftest``: a test importing from it got whichever
folder's conftest came first when several folders ran together).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import kombu.pools
import psycopg
import pytest

from pipeline.config import reset_settings
from pipeline.crypto import generate_key
from pipeline.db import get_engine
from tests.support.waiting import wait_for
from tests.support.webhook_worker import webhook_worker_command

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PG_ADMIN_URL = os.environ.get(
    "IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
WORKER_START_TIMEOUT_S = 60
WORKER_STOP_TIMEOUT_S = 20
WORKER_CONCURRENCY = 4

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
        cmd = webhook_worker_command(
            concurrency=self.concurrency,
            name=f"wh-{uuid.uuid4().hex[:8]}@%h",
            log_level="DEBUG",
            log_file=self.log_file,
        )
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
