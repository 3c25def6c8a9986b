"""The listener logs in within the shared login budget and back-off of pipeline.limits.

Real Dovecot, Redis and Postgres; the listener runs in-process on its own thread. Dovecot ends
sessions with ``doveadm kick``, and answers ``NO [UNAVAILABLE] Temporary authentication
failure`` while its passdb cannot be read (here: the user's passwd-file is a symlink loop).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator

import pytest
import redis

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.imap.aio import ImapConnection
from pipeline.imap.responses import Snapshot
from pipeline.limits import RateLimiter, capacity
from pipeline.listener.idle import FolderWatcher, WatchState
from pipeline.models import Grant
from tests.integration.listener.listener_harness import (
    FAST,
    WAIT_S,
    RunningListener,
    connect_grant,
)
from tests.support.services import MailUser
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

LOGINS_PER_MIN = 60.0  # the account's budget in these tests: one a second...
MAX_CONNECTIONS = 3  # Inbox and Sent each get an IDLE slot (a cap of 2 watches Inbox only);
# the account bucket's burst is 3: a bucket's least, not below the account's connections
BURST = max(capacity(LOGINS_PER_MIN / 60), min(MAX_CONNECTIONS, LOGINS_PER_MIN))
KICKS = 3


@pytest.fixture
def limiter(redis_url: str) -> Iterator[RateLimiter]:
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        yield RateLimiter(client)


@pytest.fixture
def login_starts(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each watcher set-up (connect, log in, open the folder) began: the moment its login
    turn was used. A completion, as a sampled login count shows it, comes a set-up's duration
    later, and on a loaded machine that duration varies enough to squeeze paced logins together
    (4 logins seen within 0.85 s against a budget of 3 + 1/s; the first set-ups were slow)."""
    starts: list[float] = []
    original = FolderWatcher._open_and_examine

    async def stamped(self: FolderWatcher) -> tuple[ImapConnection, Snapshot]:
        starts.append(time.monotonic())
        return await original(self)

    monkeypatch.setattr(FolderWatcher, "_open_and_examine", stamped)
    return starts


def test_reconnects_after_kicks_stay_within_the_account_login_budget(
    settings: Settings,
    mail_user: MailUser,
    redis_url: str,
    limiter: RateLimiter,
    login_starts: list[float],
) -> None:
    limiter.set_limits(
        "generic",
        {"account_logins_per_min": LOGINS_PER_MIN, "max_connections": MAX_CONNECTIONS},
    )
    connect_grant(settings, mail_user)
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), "both folders idling", timeout_s=WAIT_S)
        for kick in range(1, KICKS + 1):
            mail_user.server.doveadm("kick", mail_user.name)
            wait_for(
                lambda n=kick: running.connects() >= 2 + 2 * n and running.idling(2),
                f"both folders back after kick {kick}",
                timeout_s=WAIT_S,
            )
        assert running.connects() == 2 + 2 * KICKS
    logins = list(login_starts)
    assert len(logins) == 2 + 2 * KICKS  # every set-up logged in: none failed and retried
    # Unpaced, FAST's 0.2 s reconnect delay would log in 8 times within about 1.5 s. Paced,
    # every window holds at most the burst plus the rate times its length (the 0.1 s covers
    # the event loop's delay between a turn's time and the set-up's start).
    rate = LOGINS_PER_MIN / 60
    for first, last in itertools.combinations(range(len(logins)), 2):
        window = logins[last] - logins[first]
        assert last - first + 1 <= BURST + rate * (window + 0.1), [
            round(t - logins[0], 2) for t in logins
        ]


def test_a_throttle_answer_backs_the_account_off_for_workers_too(
    settings: Settings, mail_user: MailUser, redis_url: str, limiter: RateLimiter
) -> None:
    grant_id, _, _ = connect_grant(settings, mail_user)
    server = mail_user.server
    passwd = server.users_path / mail_user.name
    saved = passwd.read_bytes()
    with RunningListener(settings, FAST, redis_url, "L1") as running:
        wait_for(lambda: running.idling(2), "both folders idling", timeout_s=WAIT_S)
        log_start = server.log_path.stat().st_size
        refused = f"stat({passwd}) failed"

        def tempfails() -> int:  # logins Dovecot answered with NO [UNAVAILABLE]
            with server.log_path.open("rb") as log:
                log.seek(log_start)
                return log.read().decode(errors="replace").count(refused)

        passwd.unlink()
        os.symlink(passwd, passwd)  # passdb lookups fail: "Temporary authentication failure"
        try:
            time.sleep(1.1)  # Dovecot looks at a passwd-file again after a second
            server.doveadm("kick", mail_user.name)

            def status() -> dict[str, object]:
                return limiter.status("generic", "127.0.0.1", grant_id)

            wait_for(
                lambda: float(status()["account_backoff_s"]) > 0,
                "account back-off",
                timeout_s=WAIT_S,
            )
            wait_for(
                lambda: running.states().get(WatchState.BACKOFF, 0) == 2,
                "backing off",
                timeout_s=WAIT_S,
            )
            assert running.listener is not None
            assert any("UNAVAILABLE" in (w.last_error or "") for w in running.listener.watchers())
            attempts = tempfails()
            assert 1 <= attempts <= 2  # at most one per folder before the back-off was recorded
            time.sleep(3.0)  # unpaced, FAST's reconnect delay (0.2 s, 0.4 s, ...) retries ~5 times
            assert tempfails() == attempts
            assert float(status()["account_backoff_s"]) > 0
            with session_scope(settings.require_database_url()) as db:
                grant = db.get(Grant, grant_id)
                assert grant is not None and grant.grant_status == "valid"  # not an auth failure
        finally:
            passwd.unlink()
            passwd.write_bytes(saved)
        time.sleep(1.1)  # Dovecot re-reads its passwd-file by mtime, in whole seconds
        limiter._redis.delete(f"imap-pipeline:backoff:a:{grant_id}")  # as if it had elapsed
        wait_for(
            lambda: running.idling(2), "both folders back after the back-off", timeout_s=WAIT_S
        )
