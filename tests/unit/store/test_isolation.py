"""The rolled-back store fixture isolates tests (:mod:`tests.support.rollback`).

Each of the two runs of the first test finds no trace of the other: whichever runs second
would fail if a row written (and committed by the code under test) in the first survived.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from pipeline.models import Grant
from tests.support.store import offline_grant

pytestmark = pytest.mark.services

MARKER = "isolation-guard"


def _grants(conn: Connection) -> int:
    return (
        conn.scalar(
            select(func.count()).select_from(Grant).where(Grant.email == f"{MARKER}@example.org")
        )
        or 0
    )


@pytest.mark.parametrize("run", ["first", "second"])
def test_a_committed_row_is_gone_in_the_next_test_and_never_seen_outside(
    pg_store_engine: Engine,
    pg_connection: Connection,
    pg_sessions: sessionmaker[Session],
    run: str,
) -> None:
    assert _grants(pg_connection) == 0, "a row of an earlier test survived its rollback"

    offline_grant(pg_sessions, MARKER)  # commits its own unit of work: a savepoint here

    assert _grants(pg_connection) == 1
    with pg_store_engine.connect() as outsider:  # what every other connection sees
        assert _grants(outsider) == 0, "a commit inside the code under test escaped"


def test_a_rolled_back_unit_of_work_undoes_only_itself(
    pg_connection: Connection, pg_sessions: sessionmaker[Session]
) -> None:
    offline_grant(pg_sessions, MARKER)
    with pytest.raises(RuntimeError), pg_sessions.begin() as db:
        db.add(Grant(**{**_grant_values(), "email": "undone@example.org"}))
        db.flush()
        raise RuntimeError("the unit of work fails")

    assert _grants(pg_connection) == 1  # the earlier commit stays, the failed one is gone
    assert (
        pg_connection.scalar(
            select(func.count()).select_from(Grant).where(Grant.email == "undone@example.org")
        )
        == 0
    )


def _grant_values() -> dict[str, object]:
    return {
        "provider": "generic",
        "imap_host": "127.0.0.1",
        "imap_port": 143,
        "imap_tls": "plain",
        "imap_username": "undone",
        "secrets_sealed": "x",
    }
