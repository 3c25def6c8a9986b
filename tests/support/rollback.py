"""Fast store tests: one migrated database per test session, one rolled-back transaction per test.

The store, the API's queries and the sync state machine are tested on the real Postgres, not
on an in-memory stand-in: Postgres runs on every machine that runs the suite, and a fake store
would be a second implementation of our SQL (its filters, keyset pages, JSON rendering,
triggers and ``ON CONFLICT`` paths), a mock of Postgres that could pass where Postgres fails.
What made such tests slow was a database per test (``database_url`` in tests/conftest.py:
``CREATE DATABASE ... TEMPLATE`` and ``DROP``, about 0.3 s each). Here a test costs
milliseconds:

- ``pg_store_url`` and ``pg_store_engine`` (session): one database copied once from the
  session's migrated template and dropped at the end, and one engine for it;
- ``pg_connection`` (test): one connection to it, inside an outer transaction that is rolled
  back when the test ends, so nothing a test writes reaches the next one;
- ``pg_sessions`` (test): a ``sessionmaker`` bound to that connection with SQLAlchemy 2's
  ``join_transaction_mode="create_savepoint"``: code under test that commits (``with
  sessions.begin()``, ``session.commit()``) releases a savepoint, and its rollbacks roll back
  only that savepoint, so the code runs its own units of work as in production and the outer
  transaction still takes everything away.

Code under test gets these injected (a ``sessionmaker`` or a ``Connection`` argument), never a
URL: anything that opens its own engine would write outside the transaction. The settings
handed to such code (:func:`offline_settings`) have no database or Redis URL, so a path that
reaches for either fails loudly instead of escaping the rollback. Redis logic uses fakeredis
(with Lua) in unit tests, as tests/unit/test_coalesce.py does.

What one transaction cannot show stays in tests/integration on a database of its own: two
connections racing (locks, ``SKIP LOCKED``), anything that must see another transaction's
commit, and Postgres' ``now()``, which is the outer transaction's start for the whole test
(pass ``now=`` explicitly instead).

The guard is tests/unit/store/test_isolation.py.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from pipeline.config import Settings
from pipeline.crypto import generate_key
from pipeline.db import get_engine
from tests.conftest import _admin, _pg_url


def copy_of_template(template: str, name: str) -> None:
    """``CREATE DATABASE name TEMPLATE template``, retried while another copy is being made
    (Postgres refuses a template that has a connection, and copying is one)."""
    for attempt in range(10):
        try:
            _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            return
        except psycopg.errors.ObjectInUse:
            time.sleep(0.2 * (attempt + 1))
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


@pytest.fixture(scope="session")
def pg_store_url(pg_template: str) -> Iterator[str]:
    """The one migrated database of this test session that rolled-back tests share."""
    name = f"ipt_store_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    copy_of_template(pg_template, name)
    yield _pg_url(name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_store_engine(pg_store_url: str) -> Iterator[Engine]:
    """The session's engine for :func:`pg_store_url`, with the production engine's options
    (driver, timeouts): held here, since other fixtures clear ``get_engine``'s cache."""
    engine = get_engine(pg_store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_connection(pg_store_engine: Engine) -> Iterator[Connection]:
    """A connection to the session's database inside a transaction rolled back after the test."""
    with pg_store_engine.connect() as conn:
        outer = conn.begin()
        try:
            yield conn
        finally:
            outer.rollback()


@pytest.fixture
def pg_sessions(pg_connection: Connection) -> sessionmaker[Session]:
    """Sessions on :func:`pg_connection` whose commits are savepoint releases (see the module
    docstring); ``expire_on_commit=False`` as :func:`pipeline.db.sessionmaker_for` makes them."""
    return sessionmaker(
        bind=pg_connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )


def offline_settings(**overrides: Any) -> Settings:
    """Settings for code under test on the rolled-back store: no database URL and no Redis URL
    (what needs either is handed the fixture's sessions or a fakeredis instead)."""
    values: dict[str, Any] = {
        "database_url": None,
        "redis_url": None,
        "encryption_keys": generate_key(),
    }
    values.update(overrides)
    return Settings(**values)
