"""Shared fixtures: real Postgres, Redis and Dovecot, isolated per test.

- Postgres: the server on 127.0.0.1:5432 (or IMAP_PIPELINE_TEST_PG); one template database is
  migrated per session, and every test gets its own copy of it.
- Redis: a private ``redis-server`` per session on a free port, flushed before each test.
- Dovecot: a private server per session (plain + STARTTLS port and an implicit-TLS port, with a
  throwaway CA from ``trustme``); every test gets its own mail user.
- Cyrus IMAP and Courier-IMAP: a private server each per session, started only when a test asks
  for ``server_user``, which runs the test once per server (ids ``dovecot``, ``cyrus``,
  ``courier``) with its own user there. They run from Debian's packages unpacked (not
  installed: they conflict with Dovecot's) by ``scripts/test``; see tests/support/unpacked.py.

A missing service fails the run in CI (``CI=true``); locally it skips only when
``IMAP_PIPELINE_SKIP_SERVICES=1``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from pipeline.config import ImapSettings, Settings, SyncSettings
from pipeline.crypto import generate_key
from pipeline.db import get_engine, migrate
from pipeline.dev.dovecot import LocalDovecot
from pipeline.dev.ports import free_port, free_ports
from pipeline.dev.redis import EmbeddedRedis
from pipeline.errors import ServiceError
from tests.support.courier import LocalCourier
from tests.support.cyrus import LocalCyrus
from tests.support.services import SERVER_KINDS, MailUser, TlsFiles

PG_ADMIN_URL = os.environ.get(
    "IMAP_PIPELINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_ONLY_VARIABLES = ("IMAP_PIPELINE_TEST_PG", "IMAP_PIPELINE_SKIP_SERVICES")


def _isolate_from_the_user() -> Path:
    """Keep the suite away from the running user's configuration and data.

    A developer who ran ``scripts/up`` has ``~/.imap-pipeline`` (keys, runtime.env) and may have
    ``IMAP_PIPELINE_*`` variables set; no test may read either. Every such variable is dropped
    and the data folder points at an empty one of the suite's own, for this process and every
    process a test starts.
    """
    for name in [n for n in os.environ if n.startswith("IMAP_PIPELINE_")]:
        if name not in TEST_ONLY_VARIABLES:
            del os.environ[name]
    data_dir = Path(tempfile.mkdtemp(prefix="imap-pipeline-tests-"))
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    os.environ["IMAP_PIPELINE_DATA_DIR"] = str(data_dir)
    return data_dir


SUITE_DATA_DIR = _isolate_from_the_user()


def service_unavailable(what: str) -> None:
    """Fail in CI; skip locally only when asked to."""
    if os.environ.get("IMAP_PIPELINE_SKIP_SERVICES") == "1" and os.environ.get("CI") != "true":
        pytest.skip(f"{what} unavailable (IMAP_PIPELINE_SKIP_SERVICES=1)")
    pytest.fail(f"{what} is required for this test and is not available", pytrace=False)


def _pg_url(dbname: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{dbname}"


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database for this test session."""
    name = f"ipt_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        service_unavailable("Postgres")
    url = _pg_url(name)
    migrate(url)
    get_engine.cache_clear()
    # Nobody may stay connected to a template.
    _admin(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
        "AND pid <> pg_backend_pid()"
    )
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"ipt_{uuid.uuid4().hex[:12]}"
    for attempt in range(5):
        try:
            _admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
            break
        except psycopg.errors.ObjectInUse:  # template briefly busy: retry
            time.sleep(0.2 * (attempt + 1))
    url = _pg_url(name)
    yield url
    get_engine(url).dispose()
    get_engine.cache_clear()
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for this session."""
    try:
        server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), free_port())
        server.start()
    except ServiceError:
        service_unavailable("Redis (redis-server)")
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The private Redis, emptied for this test."""
    redis.Redis.from_url(redis_server, socket_timeout=5).flushall()
    return redis_server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Certificates for the test Dovecot."""
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def dovecot(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[LocalDovecot]:
    """A private Dovecot: plain/STARTTLS on ``.port``, implicit TLS on ``.imaps_port``."""
    if not Path("/usr/sbin/dovecot").exists():
        service_unavailable("Dovecot (apt-get install -y dovecot-imapd)")
    port, imaps_port = free_ports(2)
    server = LocalDovecot(
        tmp_path_factory.mktemp("dovecot"),
        port,
        imaps_port=imaps_port,
        tls_cert=tls_files.cert_file,
        tls_key=tls_files.key_file,
    )
    server.start()
    yield server
    server.stop()


MAIL_USER_POOL = 400  # users made up front: Dovecot re-reads its passwd-file at most once a second


@pytest.fixture(scope="session")
def _mail_user_pool(dovecot: LocalDovecot) -> Iterator[MailUser]:
    users = [
        MailUser(dovecot, f"u{uuid.uuid4().hex[:10]}", uuid.uuid4().hex)
        for _ in range(MAIL_USER_POOL)
    ]
    for user in users:
        dovecot.add_user(user.name, user.password)
    time.sleep(1.1)  # Dovecot re-reads its passwd-file by mtime, in whole seconds
    return iter(users)


@pytest.fixture
def mail_user(_mail_user_pool: Iterator[MailUser]) -> MailUser:
    """A fresh, empty mailbox on the test Dovecot."""
    return next(_mail_user_pool)


@pytest.fixture(scope="session")
def cyrus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCyrus]:
    """A private Cyrus IMAP (plain IMAP on ``.port``), from the unpacked Debian packages."""
    server = LocalCyrus(tmp_path_factory.mktemp("cyrus"), free_port())
    try:
        server.start()
    except ServiceError as exc:
        service_unavailable(f"Cyrus IMAP ({exc})")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def courier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCourier]:
    """A private Courier-IMAP (plain IMAP on ``.port``), from the unpacked Debian packages."""
    server = LocalCourier(tmp_path_factory.mktemp("courier"), free_port())
    try:
        server.start()
    except ServiceError as exc:
        service_unavailable(f"Courier-IMAP ({exc})")
    yield server
    server.stop()


@pytest.fixture(params=SERVER_KINDS)
def server_user(request: pytest.FixtureRequest) -> MailUser:
    """A fresh, empty mailbox on each test server in turn: Dovecot, Cyrus, Courier."""
    if request.param == "dovecot":
        user: MailUser = request.getfixturevalue("mail_user")
        return user
    server: LocalCyrus | LocalCourier = request.getfixturevalue(request.param)
    user = MailUser(server, f"u{uuid.uuid4().hex[:10]}", uuid.uuid4().hex)
    server.add_user(user.name, user.password)
    return user


@pytest.fixture
def settings(database_url: str, redis_url: str, tls_files: TlsFiles, tmp_path: Path) -> Settings:
    """Settings pointing at this test's services."""
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        encryption_keys=generate_key(),  # type: ignore[arg-type]
        imap=ImapSettings(ca_file=tls_files.ca_file),
        data_dir=tmp_path / "data",
        sync=SyncSettings(batch_size=20),
    )
