"""The API's connection pool: a connection that died while idle in the pool is replaced before a
request uses it, without a ping on every checkout (``pipeline.api.app.ping_idle_connections``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from api_support import ApiServer
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from pipeline.api.app import API_PING_AFTER_IDLE_S, ping_idle_connections
from pipeline.db import normalize_url
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

EXIT_WAIT_S = 30.0  # longest wait for terminated backends to be gone (a moment when idle)


def _terminate(database_url: str, application_name: str) -> int:
    """Kill the backends of ``application_name`` in the database; how many there were."""
    admin = create_engine(normalize_url(database_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            pids = list(
                conn.execute(
                    text(
                        "WITH them AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
                        " WHERE datname = current_database() AND application_name = :name"
                        " AND pid <> pg_backend_pid())"
                        " SELECT pid FROM them WHERE pg_terminate_backend(pid)"
                    ),
                    {"name": application_name},
                ).scalars()
            )

            # they exit a moment after the signal (later on a loaded machine)
            def gone() -> bool:
                return not conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"),
                    {"pids": pids},
                ).scalar_one()

            wait_for(gone, "the terminated backends to exit", EXIT_WAIT_S, interval_s=0.05)
    finally:
        admin.dispose()
    return len(pids)


def test_a_connection_killed_while_idle_in_the_pool_costs_no_request(api: ApiServer) -> None:
    with api.http() as http:
        assert http.get("/v3/grants").status_code == 200
        assert _terminate(api.settings.require_database_url(), "imap-pipeline-api") >= 1
        time.sleep(API_PING_AFTER_IDLE_S + 0.1)  # idle long enough to be pinged
        answer = http.get("/v3/grants")
    assert answer.status_code == 200, answer.text


@pytest.fixture
def pool_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(
        normalize_url(database_url), connect_args={"application_name": "pool-test"}
    )
    yield engine
    engine.dispose()


def test_an_idle_connection_is_pinged_and_a_dead_one_replaced(
    pool_engine: Engine, database_url: str
) -> None:
    ping_idle_connections(pool_engine, idle_s=0.0)
    with pool_engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert _terminate(database_url, "pool-test") == 1
    with pool_engine.connect() as conn:
        second = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert second != first


def test_a_connection_used_a_moment_ago_is_not_pinged(
    pool_engine: Engine, database_url: str
) -> None:
    """The stated bound: no ping within ``idle_s`` of the last use, so a connection that died in
    that window fails its one statement; the failure invalidates the pool, and the next
    checkout connects afresh."""
    ping_idle_connections(pool_engine, idle_s=60.0)
    with pool_engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert _terminate(database_url, "pool-test") == 1
    with pool_engine.connect() as conn, pytest.raises(OperationalError):
        conn.execute(text("SELECT 1"))
    with pool_engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != first
